"""The public API: errors name the argument (the same from every backend), backend selection,
use_backend, available_backends."""
import pytest
import torch

import vae_fast
from helpers import FUSED, device_of, need


def backend_devices():
    """(backend, device) for every backend that runs here, on the device it takes: the native ones
    on theirs, Triton on CUDA when there is a GPU (else interpreted on the CPU), the reference and
    "auto" on the CPU and, when there is one, on CUDA."""
    status = vae_fast.available_backends()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return ([(b, d) for b in ("reference", "auto") for d in devices]
            + [(b, device_of(b).type) for b in FUSED if status[b].available])


@pytest.mark.parametrize("call,error,words", [
    (lambda b, d: vae_fast.bernoulli_nll(torch.zeros(2, 3, device=d), torch.zeros(2, 4, device=d), backend=b),
     ValueError, ["target", "(2, 3)", "(2, 4)"]),
    (lambda b, d: vae_fast.bernoulli_nll(torch.zeros(2, dtype=torch.long, device=d), torch.zeros(2, device=d),
                                         backend=b), TypeError, ["logits", "torch.int64"]),
    (lambda b, d: vae_fast.bernoulli_nll([1.0], torch.zeros(1, device=d), backend=b), TypeError,
     ["logits", "list"]),
    (lambda b, d: vae_fast.bernoulli_nll(torch.zeros(2, device=d), torch.zeros(2, device=d), reduction="avg",
                                         backend=b), ValueError, ["reduction", "'avg'", "'batchmean'"]),
    (lambda b, d: vae_fast.gaussian_kl(torch.zeros(2, 3, device=d), torch.zeros(3, device=d), backend=b),
     ValueError, ["logvar"]),
    (lambda b, d: vae_fast.gaussian_kl(torch.zeros(2, 3, device=d), torch.zeros(2, 3, device=d),
                                       torch.zeros(4, device=d), backend=b),
     ValueError, ["prior_mu", "broadcastable", "(4,)"]),
    (lambda b, d: vae_fast.reparameterize(torch.zeros(3, device=d), torch.zeros(3, device=d), num_samples=0,
                                          backend=b), ValueError, ["num_samples", "positive", "0"]),
    (lambda b, d: vae_fast.reparameterize(torch.zeros(3, device=d), torch.zeros(3, device=d), generator=3,
                                          backend=b), TypeError, ["generator"]),
    (lambda b, d: vae_fast.sample_and_kl(torch.tensor(1.0, device=d), torch.tensor(1.0, device=d), backend=b),
     ValueError, ["mu", "dimension"]),
    (lambda b, d: vae_fast.negative_elbo(torch.zeros(2, 3, device=d), torch.zeros(2, 3, device=d),
                                         torch.zeros(3, 2, device=d), torch.zeros(3, 2, device=d), backend=b),
     ValueError, ["mu", "batch size"]),
    (lambda b, d: vae_fast.gaussian_nll(torch.zeros(2, 3, device=d), torch.zeros(2, 3, device=d),
                                        torch.zeros(2, 3, device=d).half(), backend=b), None, []),
])
def test_bad_input_gives_the_same_clear_error_on_every_backend(call, error, words):
    for backend, device in backend_devices():
        if error is None:
            call(backend, device)  # mixed float dtypes are accepted (cast to the first input's dtype)
            continue
        with pytest.raises(error) as info:
            call(backend, device)
        for word in words:
            assert word in str(info.value), (backend, device, str(info.value))


def test_unknown_backend_and_wrong_device():
    with pytest.raises(ValueError, match="backend: expected one of .*'triton'.*got 'tpu'"):
        vae_fast.bernoulli_nll(torch.zeros(2), torch.zeros(2), backend="tpu")
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        vae_fast.bernoulli_nll(torch.zeros(2), torch.zeros(2), backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        with vae_fast.use_backend("nope"):
            pass


def test_generator_on_the_wrong_device():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (a CUDA generator with CPU tensors and vice versa)")
    with pytest.raises(RuntimeError, match="generator"):
        vae_fast.reparameterize(torch.zeros(3), torch.zeros(3), generator=torch.Generator("cuda"))


def test_available_backends_says_why():
    status = vae_fast.available_backends()
    assert set(status) == {"triton", "cuda", "cpu", "reference"}
    assert status["reference"].available
    for s in status.values():
        assert isinstance(s.detail, str) and s.detail


def test_use_backend_sets_the_default(monkeypatch):
    need("triton")
    calls = []
    monkeypatch.setattr(vae_fast._backends, "_resolved", {})
    with vae_fast.use_backend("triton"):
        ns = vae_fast._backends.resolve(None, device_of("triton"))
        calls.append(ns)
    assert calls[0] is torch.ops.vae_fast_triton
    assert vae_fast._backends.current() == "auto"


def test_auto_picks_a_backend_that_runs_here():
    choice = vae_fast._backends.auto_choice(torch.device("cpu"))
    assert choice in ("cpu", "reference")
    assert choice == "reference" or vae_fast.available_backends()[choice].available
    x, t = torch.randn(3, 4), torch.rand(3, 4)
    torch.testing.assert_close(vae_fast.bernoulli_nll(x, t), torch.nn.functional.binary_cross_entropy_with_logits(x, t))


def test_info_lists_version_backends_and_archs():
    import subprocess
    import sys

    from vae_fast import _native

    out = subprocess.run([sys.executable, "-m", "vae_fast", "info"], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert f"vae_fast {vae_fast.__version__}" in out and torch.__version__ in out
    for name in ("triton", "cuda", "cpu", "reference"):
        assert f"  {name}" in out
    archs = _native.compiled_archs()
    assert ("CUDA archs: " + (" ".join(archs) if archs else "none")) in out
