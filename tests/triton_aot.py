"""Compile every Triton kernel launch the ops make, for real GPU targets, on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1) runs the kernels in NumPy and accepts code that the Triton
compiler rejects, so this records the launches of each op (kernel, argument types, constexprs) with
wrap_triton swapped for a recorder, and compiles each distinct one with triton.compile for sm_80 and
sm_90 (PTX, through ptxas). Run without TRITON_INTERPRET; exit status 1 if any launch fails.
"""
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vae_fast._ops import philox_state  # noqa: E402
from vae_fast._schemas import NONE, ROWS, SUM  # noqa: E402
from vae_fast.triton import ops  # noqa: E402

TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
         torch.int64: "*i64"}
launches = {}


class Recorder:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def record(*args, num_warps=4, **constexprs):
            names = self.kernel.arg_names
            sig, consts = {}, dict(constexprs)
            for name, value in zip(names, args):
                if isinstance(value, torch.Tensor):
                    sig[name] = TYPES[value.dtype]
                elif isinstance(value, int) and value == 1:  # Triton specialises ints equal to 1
                    sig[name], consts[name] = "constexpr", 1
                elif isinstance(value, int):
                    sig[name] = "i32" if abs(value) < 2 ** 31 else "i64"
                else:
                    sig[name] = "fp32"
            for name in constexprs:
                sig[name] = "constexpr"
            key = (self.kernel.fn.__name__, tuple(sig.items()), tuple(sorted(consts.items())), num_warps)
            launches[key] = (self.kernel, sig, consts, num_warps)
        return record


def exercise():
    """Call every op (forward and backward) over dtypes, reductions and tile shapes."""
    t = torch.ops.vae_fast_triton
    # fp16 takes bf16's code path; the shapes give 2-D tiles with per-element eps (128x20), 4-aligned
    # 1-D tiles (8x65536), and the ints equal to 1 that Triton specialises ((1,))
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for shape in ((128, 20), (8, 65536), (1,)):
            a, b, c = (torch.rand(shape, dtype=dtype) for _ in range(3))
            p = philox_state(torch.device("cpu"))
            for S in (1, 3):
                t.reparameterize(a, b, p, S)
                t.reparameterize_backward(torch.rand((S, *shape), dtype=dtype), b, p, S)
                t.sample_and_kl(a, b, p, S)
                t.sample_and_kl_backward(torch.rand((S, *shape), dtype=dtype), torch.rand(shape[0], dtype=dtype),
                                         a, b, p, S)
            for red, grad in ((NONE, a), (SUM, torch.tensor(1.0, dtype=dtype)), (ROWS, a.reshape(-1)[:shape[0]])):
                t.bernoulli_nll(a, b, red, 0.5)
                t.bernoulli_nll_backward(grad, a, b, red, 0.5, True)
                t.bernoulli_nll_backward(grad, a, b, red, 0.5, False)
                t.gaussian_kl(a, b, None, None, red, 1.0)
                t.gaussian_kl(a, b, c, c, red, 1.0)
                t.gaussian_kl_backward(grad, a, b, None, None, red, 1.0)
                t.gaussian_kl_backward(grad, a, b, c, None, red, 1.0)
                t.gaussian_kl_backward(grad, a, b, c, c, red, 1.0)
                t.gaussian_nll(a, b, c, red, 0.25)
                t.gaussian_nll_backward(grad, a, b, c, red, 0.25)


def main() -> int:
    ops.wrap_triton = Recorder
    exercise()
    failures = 0
    for arch in (80, 90):
        for (name, *_), (kernel, sig, consts, num_warps) in launches.items():
            try:
                triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                               target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
            except Exception as exc:  # report all, then fail
                failures += 1
                print(f"FAIL sm_{arch} {name} {consts}: {str(exc)[-800:]}", file=sys.stderr)
    print(f"compiled {len(launches)} distinct launches for sm_80 and sm_90: {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
