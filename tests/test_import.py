"""`import vae_fast` stays cheap: the Triton backend (triton, torch._dynamo and torch._inductor, seconds
to import) loads on its first use, not at import, and not for "auto" on CPU tensors."""
import importlib.util
import json
import subprocess
import sys

HEAVY = ("triton", "torch._dynamo", "torch._inductor")

SCRIPT = r"""
import json, sys, torch
heavy = %r
before = {m for m in heavy if m in sys.modules}
import vae_fast
x = torch.randn(3, 4)
vae_fast.bernoulli_nll(x, torch.rand(3, 4))  # "auto" on CPU tensors: the native cpu or reference backend
after_import = sorted(m for m in heavy if m in sys.modules and m not in before)
ops_at_import = hasattr(torch.ops.vae_fast_triton, "gaussian_kl")
status = vae_fast.available_backends()["triton"]  # the first use of the Triton backend
print(json.dumps({"after_import": after_import, "ops_at_import": ops_at_import,
                  "ops_after_use": hasattr(torch.ops.vae_fast_triton, "gaussian_kl"),
                  "triton_loaded": "triton" in sys.modules, "detail": status.detail}))
""" % (HEAVY,)


def test_triton_backend_loads_on_first_use_not_at_import():
    # the environment as the tests have it (TRITON_INTERPRET=1 on a machine without a GPU)
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["after_import"] == [], f"import vae_fast, an auto op on CPU tensors: {out['after_import']}"
    assert not out["ops_at_import"]
    if importlib.util.find_spec("triton") is None:
        assert "could not be loaded" in out["detail"], out["detail"]
    else:
        assert out["triton_loaded"] and out["ops_after_use"], out
