#!/usr/bin/env bash
# The GPU work this project still owes, packed into few long calls of the device tool (10 minutes a
# call; a machine left idle comes back bare, so every call builds first). From the repo root there:
#
#   bash benchmarks/gpu_session.sh build test            # pytest on CUDA tensors, Triton compiled
#   bash benchmarks/gpu_session.sh build sanitize        # compute-sanitizer memcheck + racecheck
#   bash benchmarks/gpu_session.sh build bench [OPS...]  # vae-fast bench (full), report + plot
#   bash benchmarks/gpu_session.sh build diag train      # toolchain + crash probe; train epoch times
#
# The GPU image has torch, triton, pytest, hypothesis and matplotlib but no mlxtend or expecttest:
# carry them as wheels (carry=[".whl"]), fetched on the CPU machine with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl mlxtend expecttest
# (add diffusers huggingface_hub safetensors to that list for tests/test_diffusers.py and the bench's
# diffusers_posterior row against diffusers' own class; without them those skip / use a copy of it)
# Logs and reports land in $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-/tmp/vae_fast_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=python3
status=0

deps() {
  if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
}

build() {  # sm_90 only: this machine's chip (the CPU CI covers sm_80 compilation)
  TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 $PY -m pip install -q --no-build-isolation --no-deps -e . \
    2>&1 | tee "$OUT/build.log" || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  $PY -m vae_fast info | tee "$OUT/info.txt"
}

run_tests() {
  $PY -m pytest -q -p no:logging -rs tests 2>&1 | tee "$OUT/pytest.log"
  status=$((status | ${PIPESTATUS[0]}))
}

sanitize() {
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 7 --target-processes all \
      $PY -m pytest -q -p no:logging tests/test_native_cuda.py 2>&1 | tee "$OUT/sanitizer-$tool.log"
    status=$((status | ${PIPESTATUS[0]}))
  done
}

bench() {  # remaining arguments: ops to run (default: all)
  local ops=()
  [ $# -gt 0 ] && ops=(--ops "$@")
  $PY -m vae_fast bench "${ops[@]}" 2>&1 | tee "$OUT/bench.txt"
  status=$((status | ${PIPESTATUS[0]}))
  cp -r benchmarks/results "$OUT/" 2>/dev/null || true
}

diag() {  # what the 2026-11-27 run could not explain: _C segfaulted formatting integer errors
  { g++ --version | head -1; ldd vae_fast/_C*.so | grep -E 'stdc\+\+|gomp|torch_cpu'; } 2>&1 | tee "$OUT/toolchain.txt"
  $PY -c 'import torch, vae_fast
for bad in (torch.tensor([1.0, 2.0]), ):
    try:
        torch.ops.vae_fast.reparameterize(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), bad, 1)
    except RuntimeError as e:
        print("ok:", str(e).splitlines()[0])' 2>&1 | tee "$OUT/diag.txt"
  if [ "${PIPESTATUS[0]}" -ne 0 ] && command -v gdb > /dev/null; then
    gdb -batch -ex run -ex bt --args $PY -c 'import torch, vae_fast; torch.ops.vae_fast.reparameterize(torch.zeros(3,dtype=torch.float64), torch.zeros(3,dtype=torch.float64), torch.tensor([1.0,2.0]), 1)' \
      2>&1 | tail -40 | tee -a "$OUT/diag.txt"
  fi
}

train() {  # epoch time of the MNIST VAE: eager vs torch.compile reduce-overhead (CUDA graphs), cuda backend
  for mode in off reduce-overhead; do
    $PY -m vae_fast train --device cuda --backend cuda --epochs 5 --iw-samples 20 --quiet \
      --compile "$mode" --out "$OUT/train-$mode" 2>&1 | tail -3 | tee "$OUT/train-$mode.txt"
    $PY -c "import json,sys; m=json.load(open('$OUT/train-$mode/metrics.json')); print('$mode', [round(e['seconds'],3) for e in m['epochs']], m['final'])" \
      | tee -a "$OUT/train-times.txt"
  done
}

deps
while [ $# -gt 0 ]; do
  stage=$1; shift
  case "$stage" in
    build) build ;;
    test) run_tests ;;
    sanitize) sanitize ;;
    diag) diag ;;
    train) train ;;
    bench) bench "$@"; break ;;
    *) echo "unknown stage: $stage (build, test, sanitize, diag, train, bench)" >&2; exit 2 ;;
  esac
done
exit $status
