"""`vae-fast train --compile MODE`: the training step under torch.compile gives the eager run's
trajectory (same seed, same eps), on the CPU here and on a GPU (reduce-overhead: CUDA graphs)."""
import pytest
import torch

from helpers import need
from vae_fast.train import ConfigError, TrainConfig, train


def run(tmp_path, name, **kw):
    cfg = TrainConfig(epochs=1, iw_samples=2, quiet=True, out=str(tmp_path / name), threads=1, **kw)
    return train(cfg)


def test_bad_compile_mode_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match="--compile: expected one of off, default, reduce-overhead, got 'fast'"):
        run(tmp_path, "bad", device="cpu", compile="fast")


@pytest.mark.slow
@pytest.mark.parametrize("backend,mode", [("cpu", "default"), ("cuda", "default"), ("cuda", "reduce-overhead")])
def test_compiled_step_follows_the_eager_trajectory(tmp_path, backend, mode):
    """With a fused backend the compiled step draws the same eps as eager (the Philox state comes
    from torch.randint, which inductor leaves to torch's generator: seen on the CPU), so the trajectory is the eager
    one up to the fusion's rounding. (The reference backend's torch.randn is lowered to inductor's
    own RNG: another eps stream, so it is not compared here.)"""
    device = need(backend).type
    torch._dynamo.reset()
    eager = run(tmp_path, "eager", device=device, backend=backend)
    compiled = run(tmp_path, "compiled", device=device, backend=backend, compile=mode)
    assert compiled["config"]["compile"] == mode
    a, b = eager["epochs"][0], compiled["epochs"][0]
    assert b["train_neg_elbo"] == pytest.approx(a["train_neg_elbo"], rel=1e-4)
    assert b["test_neg_elbo"] == pytest.approx(a["test_neg_elbo"], rel=1e-4)


@pytest.mark.slow
def test_compiled_reference_step_trains(tmp_path):
    torch._dynamo.reset()
    m = run(tmp_path, "ref", device="cpu", compile="default")
    assert m["epochs"][0]["test_neg_elbo"] < 240  # eager gives about 219 after one epoch
