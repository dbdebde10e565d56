"""Installs never silently degrade: a build without torch stops with a message instead of making a
package without vae_fast._C; the sdist holds the extension's sources and a wheel built from it holds
_C, pins the torch release _C was built for and repairs to a manylinux wheel; the pure-Python wheel
keeps the torch range; "auto" warns when it falls back to the reference; $VAE_FAST_BACKEND sets the
default backend; the library imports and runs without the CLI's packages (the `cli` extra)."""
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from email.parser import Parser

import pytest
import torch

import vae_fast
from vae_fast import _backends, _native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "vae_fast")
CLI_MODULES = ("numpy", "tqdm", "matplotlib", "mlxtend", "sklearn", "pandas", "scipy")


def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def torch_range():
    (dep,) = [d for d in pyproject()["tool"]["vae_fast"]["dependencies"] if re.match(r"torch\W", d)]
    return dep


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 600), **kw)


def pip_wheel(src, out, env):
    """`pip wheel --no-build-isolation --no-deps` of src into out; returns the CompletedProcess."""
    return run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                "--no-cache-dir", "-w", str(out), str(src)], env=env)


def wheel_metadata(path):
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode()), z.namelist()


def hide_torch(tmp_path):
    """An environment in which `import torch` fails, as in pip's isolated build environment."""
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    return {**os.environ, "PYTHONPATH": str(fake.parent)}


SOURCES = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "csrc", "kernels", "vae_fast",
           "tools", "docs")


def copy_tree(tmp_path):
    """The sources of a build in tmp_path/src, without build outputs: builds there leave the
    checkout untouched."""
    dst = tmp_path / "src"
    for name in SOURCES:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns(
                "__pycache__", "_C.*", "_build_info.py", "*.egg-info"))
        else:
            os.makedirs(dst, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


# ------------------------------------------------------------------- builds without _C
def test_build_without_torch_fails_loudly(tmp_path):
    """pip's default isolated build has no torch: it must stop and say so, not install a package
    without _C (as it did)."""
    r = pip_wheel(copy_tree(tmp_path), tmp_path / "wheels", hide_torch(tmp_path))
    assert r.returncode != 0, "a wheel without _C was built without a word"
    out = r.stdout + r.stderr
    assert "cannot build the native extension vae_fast._C: torch is not importable" in out, out[-3000:]
    assert "--no-build-isolation" in out and "VAE_FAST_BUILD_EXT=0" in out
    assert not glob.glob(str(tmp_path / "wheels" / "*.whl"))


def test_build_without_compiler_fails_loudly(tmp_path):
    r = pip_wheel(copy_tree(tmp_path), tmp_path / "wheels",
                  {**os.environ, "CXX": "no-such-c++-compiler"})
    assert r.returncode != 0
    assert "no C++ compiler ('no-such-c++-compiler'" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]


def test_pure_python_wheel_on_request_keeps_the_torch_range(tmp_path):
    src = copy_tree(tmp_path)
    (src / "vae_fast" / "_build_info.py").write_text("INFO = {'torch_version': 'stale'}\n")
    r = pip_wheel(src, tmp_path / "wheels", {**hide_torch(tmp_path), "VAE_FAST_BUILD_EXT": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = glob.glob(str(tmp_path / "wheels" / "*.whl"))
    assert whl.endswith("-py3-none-any.whl")
    meta, names = wheel_metadata(whl)
    assert torch_range() in meta.get_all("Requires-Dist")
    assert "vae_fast/py.typed" in names
    assert not [n for n in names if re.search(r"/_C\.|/_build_info\.py$", n)], names


# ------------------------------------------------------------------------ metadata
def test_readme_install_commands():
    """CI runs the README's test command verbatim; the CLI quick start installs the cli extra."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv && ")]
    assert len(commands) == 2 and "-e '.[cli]' && .venv/bin/vae-fast train" in commands[0]
    ci = open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
    assert commands[1] in ci and "-e '.[dev]'" in commands[1]


def test_cli_packages_are_an_extra_not_library_dependencies():
    meta = pyproject()
    assert meta["project"]["dynamic"] == ["dependencies"]
    library = meta["tool"]["vae_fast"]["dependencies"]
    assert [d for d in library if not re.match(r"torch\W", d)] == []  # torch is all the library needs
    extras = meta["project"]["optional-dependencies"]
    assert set(extras["cli"]) >= {"numpy", "tqdm", "matplotlib", "mlxtend"}
    assert "vae_fast[cli]" in extras["dev"]


def test_setup_pins_the_release_that_native_checks(monkeypatch):
    """The pin a wheel with _C gets is exactly what vae_fast._native accepts at load time."""
    import runpy

    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)  # setup.py for its functions only
    monkeypatch.setattr(sys, "argv", ["setup.py", "sdist"])
    pin_torch = runpy.run_path(os.path.join(ROOT, "setup.py"))["pin_torch"]
    pinned = pin_torch([torch_range(), "other"], torch.__version__)
    assert pinned == [f"torch=={_native._release(torch.__version__)}", "other"]
    with pytest.raises(RuntimeError, match="expected one torch requirement"):
        pin_torch(["torchvision"], torch.__version__)
    release = pinned[0].removeprefix("torch==")
    for local in ("", "+cpu", "+cu130"):  # any build of that release passes the load-time check
        assert _native._mismatch({"torch_version": release + local, "with_cuda": False}) is None
    bumped = re.sub(r"\d+$", lambda m: str(int(m.group()) + 1), release)
    assert _native._mismatch({"torch_version": bumped, "with_cuda": False}) is not None


# ------------------------------------------------------------- sdist -> wheel with _C
@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdist")
    src = copy_tree(out)
    r = run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
             "print(b.build_sdist(sys.argv[1]))", str(out)], cwd=src, env=hide_torch(out))
    assert r.returncode == 0, r.stderr[-3000:]  # no torch needed for an sdist
    (path,) = glob.glob(str(out / "vae_fast-*.tar.gz"))
    return path


def test_sdist_has_what_the_extension_build_needs(sdist):
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    needed = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "tools/build_wheel.sh",
              "vae_fast/py.typed"}
    for d in ("csrc", "kernels"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            needed |= {os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files
                       if f.endswith((".h", ".cuh", ".cpp", ".cu"))}
    assert needed - names == set()
    assert not [n for n in names if n.endswith((".so", ".o")) or n.endswith("_build_info.py")]


@pytest.mark.slow
def test_wheel_from_sdist_has_C_pins_torch_and_repairs_to_manylinux(sdist, tmp_path):
    """tools/build_wheel.sh in the unpacked sdist (CPU kernels only, to keep it short): the wheel
    holds _C and its build info, requires torch==<this release>, and auditwheel makes it manylinux
    without grafting torch's libraries; installed, its _C loads."""
    pytest.importorskip("auditwheel", reason="auditwheel (the dev extra) builds the manylinux wheel")
    with tarfile.open(sdist) as t:
        t.extractall(tmp_path, filter="data")
    (src,) = glob.glob(str(tmp_path / "vae_fast-*"))
    env = {**os.environ, "VAE_FAST_BUILD_CUDA": "0", "PYTHON": sys.executable,
           "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    r = run(["bash", os.path.join(src, "tools", "build_wheel.sh"), str(tmp_path / "dist")], env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    (raw,) = glob.glob(str(tmp_path / "dist" / "raw" / "*.whl"))
    (repaired,) = glob.glob(str(tmp_path / "dist" / "*.whl"))
    assert re.search(r"-cp3\d+-cp3\d+-linux_\w+\.whl$", raw), raw
    assert re.search(r"-cp3\d+-cp3\d+-manylinux_\d+_\d+_\w+\.whl$", repaired), repaired
    for whl in (raw, repaired):
        meta, names = wheel_metadata(whl)
        assert f"torch=={_native._release(torch.__version__)}" in meta.get_all("Requires-Dist")
        assert torch_range() not in meta.get_all("Requires-Dist")
        assert [n for n in names if re.fullmatch(r"vae_fast/_C\.[^/]+\.so", n)], names
        assert {"vae_fast/_build_info.py", "vae_fast/py.typed"} <= set(names)
        grafted = [n for n in names if ".libs/" in n]
        assert not [n for n in grafted if re.search(r"/(libtorch|libc10|libcudart|libgomp)", n)], grafted
    target = tmp_path / "site"
    r = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
             repaired])
    assert r.returncode == 0, r.stderr[-3000:]
    code = ("import vae_fast, torch; from vae_fast import _native; assert vae_fast.__file__.startswith(%r); "
            "assert _native.available(), _native.why_not(); "
            "print(vae_fast.bernoulli_nll(torch.zeros(3), torch.ones(3), backend='cpu').item())"
            % str(target))
    r = run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert abs(float(r.stdout.split()[-1]) - 0.6931471805599453) < 1e-6


# ---------------------------------------------------------------- backends at run time
def package_without_C(tmp_path):
    """A copy of the vae_fast package with no _C (as a pure-Python install has)."""
    shutil.copytree(PKG, tmp_path / "vae_fast",
                    ignore=shutil.ignore_patterns("_C.*", "_build_info.py", "__pycache__"))
    return tmp_path


def run_python(code, root, **env):
    r = run([sys.executable, "-W", "always", "-c", textwrap.dedent(code)], cwd=root,
            env={**os.environ, "PYTHONPATH": str(root), **env}, timeout=300)
    return r


FALLBACK_SCRIPT = """
    import warnings, torch, vae_fast
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for backend in (None, "auto", "reference", None):
            vae_fast.bernoulli_nll(torch.zeros(3), torch.ones(3), backend=backend)
        vae_fast.sample_and_kl(torch.zeros(2, 3), torch.zeros(2, 3))
    for w in caught:
        print("WARNING", w.category.__name__, w.filename, w.message)
"""


def test_auto_warns_once_when_it_falls_back_to_reference(tmp_path):
    root = package_without_C(tmp_path)
    r = run_python(FALLBACK_SCRIPT, root)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1, r.stdout
    assert "'auto' falls back to 'reference'" in lines[0] and "vae_fast._C was not built" in lines[0]
    assert "VAE_FAST_BACKEND=reference" in lines[0]
    assert "<string>" in lines[0]  # attributed to the caller, not to vae_fast's own code


def test_no_warning_when_reference_is_chosen(tmp_path):
    root = package_without_C(tmp_path)
    r = run_python(FALLBACK_SCRIPT.replace('(None, "auto", "reference", None)', '("reference",)')
                   .replace("vae_fast.sample_and_kl(torch.zeros(2, 3), torch.zeros(2, 3))", ""), root)
    assert r.returncode == 0 and "WARNING" not in r.stdout, r.stdout + r.stderr
    # the default set by the environment, read in a fresh process
    r = run_python(FALLBACK_SCRIPT.replace('"auto", ', ''), root, VAE_FAST_BACKEND="reference")
    assert r.returncode == 0 and "WARNING" not in r.stdout, r.stdout + r.stderr


def test_auto_fallback_under_torch_compile(tmp_path):
    """The first "auto" resolution may happen inside a fullgraph trace, where the warning (which
    dynamo cannot trace) is left out rather than breaking the graph."""
    r = run_python("""
        import torch, vae_fast
        f = torch.compile(lambda m, lv: vae_fast.sample_and_kl(m, lv)[1].sum(), fullgraph=True,
                          backend="eager")
        print(f(torch.zeros(2, 3), torch.zeros(2, 3)).item())
    """, package_without_C(tmp_path))
    assert r.returncode == 0 and r.stdout.split()[-1] == "0.0", r.stderr[-3000:]


@pytest.mark.skipif(not _native.available(), reason=f"vae_fast._C unavailable: {_native.why_not()}")
def test_auto_warns_when_C_is_mismatched(tmp_path):
    root = package_without_C(tmp_path)
    real = glob.glob(os.path.join(PKG, "_C.*"))[0]
    os.symlink(real, root / "vae_fast" / os.path.basename(real))
    info = {**_native.build_info(), "torch_version": "2.0.1"}
    (root / "vae_fast" / "_build_info.py").write_text(f"INFO = {info!r}\n")
    r = run_python(FALLBACK_SCRIPT, root)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("WARNING")]
    assert len(lines) == 1 and "built against torch 2.0.1" in lines[0], r.stdout


@pytest.fixture
def env_backend(monkeypatch):
    """Sets $VAE_FAST_BACKEND as if before the first use of vae_fast."""
    def set_(value):
        monkeypatch.setenv("VAE_FAST_BACKEND", value)
        monkeypatch.setattr(_backends, "_env_default", None)
        monkeypatch.setattr(_backends, "_resolved", {})
    monkeypatch.setattr(_backends, "_resolved", {})
    return set_


def test_env_var_sets_the_default_backend(env_backend):
    cpu = torch.device("cpu")
    env_backend("reference")
    assert _backends.current() == "reference" and _backends.resolve(None, cpu) is None
    with vae_fast.use_backend("auto"):  # use_backend still overrides it
        assert _backends.current() == "auto"
    assert _backends.current() == "reference"
    assert _backends.resolve("auto", cpu) is (torch.ops.vae_fast if _native.available() else None)
    if _native.available():
        env_backend("cpu")
        assert _backends.resolve(None, cpu) is torch.ops.vae_fast
    env_backend("")  # empty: unset
    assert _backends.current() == "auto"


def test_env_var_invalid_value_is_a_clear_error(env_backend):
    env_backend("fastest")
    expected = r"variable VAE_FAST_BACKEND: expected one of 'auto', .*'reference', got 'fastest'"
    with pytest.raises(ValueError, match=expected):
        vae_fast.bernoulli_nll(torch.zeros(2), torch.zeros(2))


# ------------------------------------------------------------------ without the cli extra
BLOCK = """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):  # as if these were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in %r:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
""" % (CLI_MODULES,)


def test_library_works_without_the_cli_extra(tmp_path):
    r = run_python(BLOCK + """
    import torch, vae_fast, vae_fast.models
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    z, kl = vae_fast.sample_and_kl(mu, logvar)
    model = vae_fast.models.VAE(in_dim=6, hidden=5, latent=3)
    loss, _, _ = model(torch.rand(4, 6))
    loss.mean().backward()
    from vae_fast.cli import main
    assert main(["info"]) == 0
    """, ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "backends:" in r.stdout


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["bench", "--quick"]])
def test_cli_without_its_extra_says_what_to_install(command, tmp_path):
    r = run_python(BLOCK + f"""
    from vae_fast.cli import main
    sys.exit(main({command + ["--out", str(tmp_path / "out")]!r}))
    """, ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()  # (torch may warn first that numpy is missing)
    line = lines[-1]
    assert [x for x in lines if "vae-fast" in x] == [line]
    assert line.startswith("vae-fast: No module named") and "pip install 'vae_fast[cli]'" in line
    assert not (tmp_path / "out").exists()  # stopped before any work
