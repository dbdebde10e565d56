"""Build script. Metadata lives in pyproject.toml; this file decides about the extension and the
run-time dependencies (pyproject's [tool.vae_fast] dependencies, the torch range pinned when _C is built).

`vae_fast._C` (C++ CPU kernels, plus CUDA kernels when nvcc and a CUDA build of torch are found)
is compiled against the torch importable at build time, i.e. with `pip install --no-build-isolation`
after installing torch. A _C works with exactly that torch release, so a wheel holding it requires
`torch==<that release>` (the release vae_fast._native checks before loading _C). When _C cannot be
built (torch not importable, as in pip's default isolated build, or no C++ compiler) the build
stops with an error saying why: it never quietly produces a package without _C. An sdist needs
neither torch nor a compiler.

Environment:
  VAE_FAST_BUILD_EXT=0     build the pure-Python package on purpose (reference and Triton backends;
                           dependencies keep the torch range)
  VAE_FAST_BUILD_CUDA=0    build the CPU kernels only, even with nvcc and a CUDA torch
  TORCH_CUDA_ARCH_LIST     CUDA archs, e.g. "8.0;9.0" (default "8.0;8.6;8.9;9.0+PTX")
  CUDA_HOME                the CUDA toolkit (default: found from nvcc, even through a wrapper script)
  MAX_JOBS                 parallel compile jobs (ninja), also nvcc --threads
"""
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;8.9;9.0+PTX"
BUILD_INFO = "_build_info.py"  # written next to _C*.so; vae_fast/_native.py reads it before import


def find_cuda_home():
    """CUDA_HOME / CUDA_PATH if set, else the toolkit of the nvcc on PATH. When that nvcc is a
    wrapper script (its parent has no include/cuda_runtime.h), ask nvcc itself (`-dryrun` prints
    TOP=<toolkit>), then try /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:
            out = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-E", os.devnull],
                                 capture_output=True, text=True, timeout=60)
            m = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.M)
            if m:
                candidates.append(os.path.normpath(m.group(1).strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")) and \
                os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def arch_names(flags):
    """['-gencode=arch=compute_80,code=sm_80', ...] -> ['sm_80', 'compute_90', ...] (sorted)"""
    names = {m.group(1) for f in flags for m in [re.search(r",code=([a-z_0-9]+)", f)] if m}
    return sorted(names, key=lambda s: (int(re.sub(r"\D", "", s)), s.startswith("compute")))


def pyproject_dependencies():
    """[tool.vae_fast] dependencies of pyproject.toml, the one place the version ranges are written."""
    path = os.path.join(ROOT, "pyproject.toml")
    try:
        import tomllib
    except ImportError:  # Python 3.10: setuptools' own TOML reader
        from setuptools.config.pyprojecttoml import load_file
        data = load_file(path)
    else:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    return list(data["tool"]["vae_fast"]["dependencies"])


def torch_release(version):
    """'2.14.1+cu130' -> '2.14.1': what vae_fast._native._release compares before loading _C (the
    C++ ABI of torch is only the same within one release; the local part names the build variant)."""
    return version.split("+")[0]


def pin_torch(dependencies, version):
    """The dependencies with the torch range replaced by `torch==<release of version>`."""
    is_torch = [bool(re.match(r"torch\s*(?:[<>=!~;\[]|$)", d)) for d in dependencies]
    if sum(is_torch) != 1:
        raise RuntimeError(f"pyproject.toml [tool.vae_fast] dependencies: expected one torch "
                           f"requirement, got {dependencies}")
    return [f"torch=={torch_release(version)}" if t else d for d, t in zip(dependencies, is_torch)]


def cannot_build(reason):
    """An extension whose build stops with `reason` (pip prints it): a build never quietly
    produces a package without _C; VAE_FAST_BUILD_EXT=0 asks for one."""

    class NoExtension(build_ext):
        def run(self):
            raise SystemExit(
                f"error: vae_fast: cannot build the native extension vae_fast._C: {reason}.\n"
                "Install torch first, then build against it: pip install --no-build-isolation . "
                "(_C works only with the torch it is compiled against), or set VAE_FAST_BUILD_EXT=0 "
                "for the pure-Python package (reference and Triton backends only).")

    return [Extension("vae_fast._C", [])], {"build_ext": NoExtension}, None


def extension_modules():
    """Returns (ext_modules, cmdclass, torch version _C is built against or None)."""
    building = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"}
    sdist_only = "sdist" in sys.argv[1:] and not building.intersection(sys.argv[1:])
    if os.environ.get("VAE_FAST_BUILD_EXT", "1") == "0" or sdist_only:
        return [], {}, None  # an sdist ships the sources (MANIFEST.in) and needs no torch
    if not os.path.isdir(os.path.join(ROOT, "csrc")):
        return cannot_build(f"the sources csrc/ are missing from {ROOT}")
    try:
        import torch
    except ImportError as e:
        return cannot_build(f"torch is not importable here ({e}); pip builds in an isolated "
                            "environment without torch unless given --no-build-isolation")
    compiler = os.environ.get("CXX", "c++").split()[0]
    if shutil.which(compiler) is None:
        return cannot_build(f"no C++ compiler ({compiler!r} is not on PATH; CXX names another)")

    cuda_home = None
    if torch.version.cuda and os.environ.get("VAE_FAST_BUILD_CUDA", "1") != "0":
        cuda_home = find_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME when imported: set it first
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    # torch looks for `ninja` on PATH; pip may not put the venv's bin there
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    from torch.utils import cpp_extension

    root = os.path.dirname(os.path.abspath(__file__))
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp"] + sorted(
        os.path.join("csrc/cpu", f) for f in os.listdir("csrc/cpu") if f.endswith(".cpp"))
    # -fno-math-errno / -fno-trapping-math let GCC vectorise sqrt and the selects of kernels/
    # (values are unchanged: no flag here relaxes IEEE rounding); -fopenmp makes at::parallel_for
    # (OpenMP, in torch's headers) run in parallel and enables `omp simd`
    cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    info = {"torch_version": torch.__version__, "cuda_version": "", "cuda_archs": [],
            "with_cuda": False}
    if cuda_home:
        sources += sorted(os.path.join("csrc/cuda", f) for f in os.listdir("csrc/cuda")
                          if f.endswith(".cu"))
        arch_flags = cpp_extension._get_cuda_arch_flags()
        jobs = os.environ.get("MAX_JOBS") or str(min(len(arch_flags), os.cpu_count() or 1))
        nvcc = ["-O3", "-lineinfo", f"--threads={jobs}"]
        info.update(cuda_version=torch.version.cuda, cuda_archs=arch_names(arch_flags),
                    with_cuda=True)
        ext = cpp_extension.CUDAExtension(
            "vae_fast._C", sources, include_dirs=[root],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"],
            define_macros=[("VAE_FAST_WITH_CUDA", "1")])
    else:
        ext = cpp_extension.CppExtension(
            "vae_fast._C", sources, include_dirs=[root],
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])

    class BuildExt(cpp_extension.BuildExtension):
        """torch's BuildExtension (ninja, MAX_JOBS) that also records how _C was built: a header
        compiled into _C, and _build_info.py next to the .so that vae_fast._native reads before import."""

        def build_extensions(self):
            gen = os.path.join(os.path.abspath(self.build_temp), "vae_fast_gen")
            os.makedirs(gen, exist_ok=True)
            header = "\n".join([
                "#pragma once",
                f"#define VAE_FAST_TORCH_VERSION {json.dumps(info['torch_version'])}",
                f"#define VAE_FAST_CUDA_VERSION {json.dumps(info['cuda_version'])}",
                f"#define VAE_FAST_CUDA_ARCHS {json.dumps(';'.join(info['cuda_archs']))}", ""])
            path = os.path.join(gen, "vae_fast_build_info.h")
            if not os.path.exists(path) or open(path).read() != header:
                with open(path, "w") as f:
                    f.write(header)
            for e in self.extensions:
                e.include_dirs.append(gen)
            super().build_extensions()

        def run(self):
            super().run()
            # next to the .so in build_lib (wheels) and, for in-place/editable builds, in the source
            inplace, dirs = self.inplace, set()
            for self.inplace in {False, bool(inplace)}:
                dirs.update(os.path.dirname(self.get_ext_fullpath(e.name)) for e in self.extensions)
            self.inplace = inplace
            for d in dirs:
                if os.path.isdir(d):
                    with open(os.path.join(d, BUILD_INFO), "w") as f:
                        f.write(f"# generated by setup.py: how vae_fast._C was built\nINFO = {info!r}\n")

    return [ext], {"build_ext": BuildExt}, torch.__version__


class BuildPy(build_py):
    """Leaves out a vae_fast/_build_info.py left by an in-place build: it describes that _C, not the
    one being built (BuildExt writes the wheel's own next to its _C)."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if m[:2] != ("vae_fast", BUILD_INFO[:-3])]


ext_modules, cmdclass, built_against = extension_modules()
dependencies = pyproject_dependencies()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPy, **cmdclass},
      install_requires=pin_torch(dependencies, built_against) if built_against else dependencies)
