"""Run the Triton kernels in the interpreter when there is no GPU (TRITON_INTERPRET must be set
before triton compiles any @jit function, i.e. before vae_fast is imported). With a GPU it stays
unset: the Triton backend then runs compiled, on CUDA tensors (helpers.device_of("triton"))."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one inductor compile process per xdist worker, not a pool of one per core in every worker
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
