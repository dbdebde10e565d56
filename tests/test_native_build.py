"""How vae_fast._C is built and loaded: the schemas of csrc/ops.cpp, torch-free kernels/ headers,
the recorded build info, the CUDA archs inside the .so, and the loader's refusals (a _C built for
another torch, a broken or missing _C) with a clear message instead of a crash."""
import glob
import importlib.machinery
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch

import vae_fast
from vae_fast import _native
from vae_fast._schemas import SCHEMAS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "vae_fast")
needs_C = pytest.mark.skipif(not _native.available(), reason=f"vae_fast._C unavailable: {_native.why_not()}")


def cpp_schemas():
    """name -> schema of every m.def in TORCH_LIBRARY(vae_fast, m) of csrc/ops.cpp"""
    src = open(os.path.join(ROOT, "csrc", "ops.cpp")).read()
    body = src[src.index("TORCH_LIBRARY(vae_fast, m)"):]
    body = body[: body.index("\n}")]
    out = {}
    for call in re.findall(r"m\.def\(((?:\s*\"[^\"]*\")+)\s*\);", body):
        text = "".join(re.findall(r"\"([^\"]*)\"", call))
        name, schema = text.split("(", 1)
        out[name] = "(" + schema
    return out


def test_csrc_schemas_equal_python_schemas():
    assert cpp_schemas() == SCHEMAS


@needs_C
def test_registered_schemas_equal_python_schemas():
    for name, schema in SCHEMAS.items():
        registered = str(getattr(torch.ops.vae_fast, name).default._schema)
        assert registered == f"vae_fast::{name}{schema}"
        for key in ("CPU",) + (("CUDA",) if _native.has_cuda() else ()):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vae_fast::{name}", key), (name, key)


def test_kernel_headers_are_torch_free_plain_cpp():
    headers = sorted(glob.glob(os.path.join(ROOT, "kernels", "*.h")))
    for h in headers + glob.glob(os.path.join(ROOT, "kernels", "*.cuh")):
        includes = re.findall(r"#include\s*[<\"]([^>\"]+)", open(h).read())
        assert not [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10")], (h, includes)
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = "".join(f'#include "{os.path.relpath(h, ROOT)}"\n' for h in headers)
    src += "int main() { float e[4]; vae::randn4(1, 2, 3, e); return vae::bce(e[0], 0.5f) < 0; }\n"
    r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-I", ROOT, "-x", "c++", "-"],
                       input=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_C
def test_build_info_records_this_torch():
    info = _native.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["with_cuda"] == _native.has_cuda()
    assert set(info) >= {"torch_version", "cuda_version", "cuda_archs", "with_cuda"}
    from vae_fast import _C
    assert _C.build_info()["torch_version"] == torch.__version__


def arch_names(flags):
    """['-gencode=arch=compute_90a,code=sm_90a', ...] -> {'sm_90a', ...}: the names setup.py records"""
    return {m.group(1) for f in flags for m in [re.search(r",code=([a-z_0-9]+)", f)] if m}


def expected_arch_names(arch_list: str):
    """The arch names a build with TORCH_CUDA_ARCH_LIST=arch_list records, from torch's own
    cpp_extension._get_cuda_arch_flags (what setup.py calls): '8.0;9.0+PTX' -> {'sm_80', 'sm_90',
    'compute_90'}; the 'a' suffix only where the list asks for it ('9.0a' -> {'sm_90a'})."""
    from torch.utils import cpp_extension

    with mock.patch.dict(os.environ, {"TORCH_CUDA_ARCH_LIST": arch_list}):
        return arch_names(cpp_extension._get_cuda_arch_flags())


def test_expected_arch_names_follow_torch():
    assert expected_arch_names("8.0;9.0+PTX") == {"sm_80", "sm_90", "compute_90"}
    assert expected_arch_names("9.0") == {"sm_90"}
    assert expected_arch_names("9.0a") == {"sm_90a"}
    assert expected_arch_names("Hopper") == {"sm_90", "compute_90"}


# flag bits of a fat-binary entry (u64 at byte 40 of its header), read from nvcc 13.0 objects:
# set for arch-specific code (sm_90a, compute_90a) and family-specific code (sm_100f)
ARCH_SPECIFIC, FAMILY_SPECIFIC = 0x100000, 0x200000


def fatbin_archs(path):
    """{'sm_XX[a|f]' for each cubin, 'compute_XX[a|f]' for each PTX} in the CUDA fat binaries of an ELF file"""
    data = open(path, "rb").read()
    magic = struct.pack("<I", 0xBA55ED50)
    found, pos = set(), data.find(magic)
    while pos != -1:
        _, _, header, size = struct.unpack_from("<IHHQ", data, pos)
        entry, end = pos + header, pos + header + size
        while entry + 48 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            (arch,) = struct.unpack_from("<I", data, entry + 28)
            (flags,) = struct.unpack_from("<Q", data, entry + 40)
            if entry_header == 0:
                break
            suffix = "a" if flags & ARCH_SPECIFIC else "f" if flags & FAMILY_SPECIFIC else ""
            found.add(("compute_" if kind == 1 else "sm_") + str(arch) + suffix)
            entry += entry_header + payload
        pos = data.find(magic, max(end, pos + 4))
    return found


@needs_C
def test_cuda_build_embeds_exactly_the_requested_archs():
    if not _native.has_cuda():
        pytest.skip("vae_fast._C was built without CUDA kernels")
    archs = set(_native.compiled_archs())
    so = glob.glob(os.path.join(PKG, "_C.*"))[0]
    assert fatbin_archs(so) == archs, "device code in the .so differs from the recorded arch list"
    requested = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if requested:  # CI builds and tests with the same TORCH_CUDA_ARCH_LIST
        assert archs == expected_arch_names(requested), (
            f"_C embeds {sorted(archs)}, but TORCH_CUDA_ARCH_LIST={requested!r} here asks torch for "
            f"{sorted(expected_arch_names(requested))}: build and test with the same TORCH_CUDA_ARCH_LIST")


def copy_package(tmp_path, *, so: str | None, build_info: dict | None):
    """A copy of the vae_fast package in tmp_path with a chosen _C (a symlink to the built one,
    a broken file, or none) and _build_info.py."""
    dst = tmp_path / "vae_fast"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("_C.*", "_build_info.py", "__pycache__"))
    if so == "built":
        real = glob.glob(os.path.join(PKG, "_C.*"))[0]
        os.symlink(real, dst / os.path.basename(real))
    elif so == "broken":  # named with this interpreter's suffix, so that the import finds it
        (dst / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"not an ELF file")
    if build_info is not None:
        (dst / "_build_info.py").write_text(f"INFO = {build_info!r}\n")
    return tmp_path


def native_status(pkg_root):
    # the _C (if any) must be the copy's: an editable install's import hook could find the repo's
    code = textwrap.dedent("""
        import sys
        import vae_fast
        from vae_fast import _native
        assert vae_fast.__file__.startswith(%r), vae_fast.__file__
        print(_native.available())
        print(_native.why_not())
        print(vae_fast.available_backends()["cpu"].detail)
        c = sys.modules.get("vae_fast._C")
        assert c is None or c.__file__.startswith(%r), c.__file__
    """ % (str(pkg_root), str(pkg_root)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=pkg_root,
                       env={**os.environ, "PYTHONPATH": str(pkg_root)})
    assert r.returncode == 0, r.stderr  # never a crash
    return r.stdout.splitlines()


@needs_C
def test_a_C_built_against_another_torch_is_refused_before_loading(tmp_path):
    info = {**_native.build_info(), "torch_version": "2.0.1+cu118"}
    available, why, detail = native_status(copy_package(tmp_path, so="built", build_info=info))
    assert available == "False"
    assert "built against torch 2.0.1+cu118" in why and torch.__version__ in why and "rebuild" in why
    assert "built against torch 2.0.1+cu118" in detail


def test_a_broken_C_is_reported(tmp_path):
    info = {"torch_version": torch.__version__, "cuda_version": "", "cuda_archs": [], "with_cuda": False}
    available, why, _ = native_status(copy_package(tmp_path, so="broken", build_info=info))
    assert available == "False" and why.startswith("importing vae_fast._C failed")


def test_the_package_imports_without_C(tmp_path):
    available, why, detail = native_status(copy_package(tmp_path, so=None, build_info=None))
    assert available == "False" and "was not built" in why and "was not built" in detail


def test_cuda_build_needs_a_cuda_torch():
    info = {"torch_version": torch.__version__, "cuda_version": "13.0", "with_cuda": True}
    msg = _native._mismatch(info)
    if torch.version.cuda is None:
        assert "CPU-only build" in msg
    elif torch.version.cuda.split(".")[0] == "13":
        assert msg is None
    else:
        assert "built for CUDA 13.0" in msg
    assert vae_fast  # the package itself imported here either way
