"""The Triton ops register on every torch of the supported range (pyproject.toml; .ci/run also runs
this file on the floor version) as triton_ops with the schemas of vae_fast/_schemas.py.

Checked in a subprocess without TRITON_INTERPRET, i.e. the way a GPU machine registers them (compiled
kernels, visible to torch.compile); registration itself needs no GPU. torch before 2.14 ignores
triton_op's schema= and infers one from annotations, so this is where that path is exercised."""
import json
import os
import subprocess
import sys

import pytest
import torch

from vae_fast._schemas import SCHEMAS

SCRIPT = r"""
import json, torch, vae_fast
from torch._dynamo.backends.common import aot_autograd
from vae_fast._schemas import SCHEMAS, SUM

status = vae_fast.available_backends()["triton"]  # the first use: loads the backend
schemas = {name: str(getattr(torch.ops.vae_fast_triton, name).default._schema) for name in SCHEMAS}

# torch.compile must see the kernels: the traced forward graph holds Triton kernel calls, not the op.
# Tracing uses fake tensors, so CPU tensors do; the graph is never run (no GPU needed).
graphs = []
class Traced(Exception):
    pass
def keep(gm, example_inputs):
    graphs.append(gm.code)
    raise Traced
def loss(x, t):
    return torch.ops.vae_fast_triton.bernoulli_nll(x, t, SUM, 1.0)
try:
    compiled = torch.compile(loss, fullgraph=True, backend=aot_autograd(fw_compiler=keep))
    compiled(torch.randn(4, 6), torch.rand(4, 6))
except Exception:
    pass
print(json.dumps({"available": status.available, "detail": status.detail, "schemas": schemas,
                  "graph": graphs[0] if graphs else None, "torch": torch.__version__}))
"""


@pytest.fixture(scope="module")
def compiled_registration():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_triton_ops_register_with_the_schemas(compiled_registration):
    reg = compiled_registration
    assert reg["schemas"] == {name: f"vae_fast_triton::{name}{schema}" for name, schema in SCHEMAS.items()}
    if torch.cuda.is_available():
        assert reg["available"], reg["detail"]
    else:  # loaded fine; it only lacks a device to run on
        assert not reg["available"]
        assert "no CUDA device" in reg["detail"] and "could not be loaded" not in reg["detail"], reg["detail"]


def test_torch_compile_sees_the_triton_kernels(compiled_registration):
    graph = compiled_registration["graph"]
    assert graph is not None, "torch.compile did not reach the AOT forward graph"
    assert "triton_kernel_wrapper_functional" in graph, graph
    assert "vae_fast_triton" not in graph, graph  # an opaque op would stay as one call


def test_an_op_whose_signature_differs_from_its_schema_is_refused():
    pytest.importorskip("triton")
    from vae_fast import _triton_loader

    if _triton_loader.load() is not None:
        pytest.skip(f"the Triton backend does not load here: {_triton_loader.error}")
    from vae_fast.triton.ops import op

    def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, reduction: int, scale: float) -> torch.Tensor:
        return mu

    with pytest.raises(TypeError, match=r"vae_fast_triton::gaussian_kl: the signature of gaussian_kl gives "
                                        r"the schema \(Tensor mu, Tensor logvar, int reduction"):
        op("gaussian_kl")(gaussian_kl)
