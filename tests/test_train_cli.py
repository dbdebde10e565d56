"""`vae-fast train`: outputs, metrics.json schema, reproducibility, CLI errors, --data-dir, and a
2-process DDP run under torchrun (gloo on the CPU; NCCL on two GPUs where there are two). Tiny
models and 1-2 epochs keep it fast. Every run names its --device: "auto" picks CUDA on a GPU machine."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_fast import cli, data
from vae_fast import train as train_mod
from helpers import device_of

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--epochs", "2", "--hidden", "16", "--latent", "4", "--iw-samples", "5", "--quiet"]
TINY = [*TINY_MODEL, "--device", "cpu"]
OUTPUTS = ("metrics.json", "checkpoint.pt", "samples.png", "reconstructions.png")
TIMING_KEYS = {"seconds", "train_time_s", "iw_time_s", "wall_time_s"}


def env_with_repo():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def run_cli(args, out):
    assert cli.main(["train", *args, "--out", str(out)]) == 0
    with open(out / "metrics.json") as f:
        return json.load(f)


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS and k != "out"}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run_cli([*TINY, "--seed", "3"], out)


def test_outputs_written(tiny_run):
    out, _ = tiny_run
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    for png in ("samples.png", "reconstructions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_schema(tiny_run):
    _, m = tiny_run
    assert set(m) >= {"config", "data", "epochs", "final", "world_size", "device", "threads",
                      "train_time_s", "iw_time_s", "wall_time_s", "torch_version"}
    cfg = m["config"]
    assert cfg["epochs"] == 2 and cfg["hidden"] == 16 and cfg["latent"] == 4 and cfg["seed"] == 3
    assert cfg["batch_size"] == 128 and cfg["lr"] == 1e-3 and cfg["backend"] == "reference"
    assert cfg["decoder"] == "bernoulli" and cfg["iw_samples"] == 5 and cfg["data_dir"] is None
    assert m["data"]["n_train"] == 4000 and m["data"]["n_test"] == 1000
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    for e in m["epochs"]:
        assert set(e) == {"epoch", "train_neg_elbo", "test_neg_elbo", "test_rec", "test_kl", "seconds"}
        assert all(math.isfinite(e[k]) for k in e)
        assert e["test_neg_elbo"] == pytest.approx(e["test_rec"] + e["test_kl"])
        assert 0 < e["test_neg_elbo"] < 784 * math.log(2) * 2
    assert m["epochs"][1]["test_neg_elbo"] < m["epochs"][0]["test_neg_elbo"]  # it learns
    final = m["final"]
    assert final["test_neg_elbo"] == m["epochs"][-1]["test_neg_elbo"]
    assert final["iw_samples"] == 5 and math.isfinite(final["test_log_px"])
    assert final["test_log_px"] >= -final["test_neg_elbo"]  # the IS bound is the tighter one
    assert m["world_size"] == 1 and m["device"] == "cpu" and m["torch_version"] == torch.__version__
    assert m["wall_time_s"] >= m["train_time_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (--device cuda)")
def test_trains_on_cuda(tmp_path):
    m = run_cli([*TINY_MODEL, "--device", "cuda", "--seed", "3"], tmp_path)
    assert m["device"] == "cuda:0" and m["config"]["device"] == "cuda"
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    assert m["epochs"][1]["test_neg_elbo"] < m["epochs"][0]["test_neg_elbo"]
    assert math.isfinite(m["final"]["test_log_px"]) and m["final"]["test_log_px"] >= -m["final"]["test_neg_elbo"]
    model = train_mod.load_model(str(tmp_path / "checkpoint.pt"))  # loads on the CPU
    assert next(model.parameters()).device.type == "cpu"


def test_checkpoint_loads_and_matches_config(tiny_run):
    out, _ = tiny_run
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["hidden"] == 16 and ckpt["image_shape"] == [28, 28]
    model = train_mod.load_model(str(out / "checkpoint.pt"))
    assert model.latent == 4 and model.enc[0].out_features == 16
    neg_elbo, rec, kl = model(torch.rand(3, 784))
    assert neg_elbo.shape == (3,) and torch.isfinite(neg_elbo).all()


def test_same_seed_same_metrics_other_seed_differs(tiny_run, tmp_path):
    _, m1 = tiny_run
    m2 = run_cli([*TINY, "--seed", "3"], tmp_path / "a")
    assert without_timings(m1) == without_timings(m2)
    m3 = run_cli([*TINY, "--seed", "4"], tmp_path / "b")
    assert m3["epochs"][0]["train_neg_elbo"] != m1["epochs"][0]["train_neg_elbo"]


def test_progress_and_summary_printed(tmp_path, capsys):
    args = ["--epochs", "1", "--hidden", "8", "--latent", "2", "--iw-samples", "3", "--device", "cpu"]
    assert cli.main(["train", *args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "epoch   1/1  train neg-ELBO" in out and "nats/image" in out
    assert "test log p(x) ~" in out and "K=3" in out


def test_gaussian_decoder_and_data_dir(tmp_path):
    rng = np.random.RandomState(0)
    ddir = tmp_path / "mnist"
    ddir.mkdir()
    data.write_idx(ddir / (data.TRAIN_IMAGES + ".gz"), rng.randint(0, 256, (40, 5, 6)).astype(np.uint8))
    data.write_idx(ddir / data.TEST_IMAGES, rng.randint(0, 256, (10, 5, 6)).astype(np.uint8))
    m = run_cli([*TINY, "--decoder", "gaussian", "--data-dir", str(ddir), "--batch-size", "16"],
                tmp_path / "out")
    assert m["data"]["n_train"] == 40 and m["data"]["image_shape"] == [5, 6]
    assert m["config"]["decoder"] == "gaussian"
    assert math.isfinite(m["final"]["test_log_px"])
    assert train_mod.load_model(str(tmp_path / "out" / "checkpoint.pt")).in_dim == 30


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
    (["--epochs", "-3"], "argument --epochs: expected a positive integer, got -3"),
    (["--epochs", "two"], "argument --epochs: expected a positive integer, got 'two'"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive integer"),
    (["--hidden", "0"], "argument --hidden: expected a positive integer"),
    (["--iw-samples", "0"], "argument --iw-samples: expected a positive integer"),
    (["--lr", "0"], "argument --lr: expected a positive number"),
    (["--lr", "nan"], "argument --lr: expected a positive number"),
    (["--seed", "-1"], "argument --seed: expected a non-negative integer"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--decoder", "poisson"], "argument --decoder: invalid choice"),
    (["--data-dir", "/definitely/not/here"], "--data-dir /definitely/not/here: no such directory"),
    (["--backend", "definitely-not-a-backend"], "--backend definitely-not-a-backend"),
])
def test_cli_errors_are_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", *args, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", *TINY_MODEL, "--device", "cuda", "--out", str(tmp_path)])
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit):
        cli.main(["train", *TINY, "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'f'}: exists and is not a directory" in err


def test_config_validate_for_api_users():
    with pytest.raises(train_mod.ConfigError, match="--epochs: expected a positive integer"):
        train_mod.TrainConfig(epochs=0).validate()
    with pytest.raises(train_mod.ConfigError, match="--lr"):
        train_mod.TrainConfig(lr=-1.0).validate()
    with pytest.raises(train_mod.ConfigError, match="--decoder"):
        train_mod.TrainConfig(decoder="x").validate()


def test_no_subcommand_prints_help(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().err


def test_python_dash_m_error_is_clean(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vae_fast", "train", "--epochs", "0"],
                          cwd=tmp_path, env=env_with_repo(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "vae-fast train: error: argument --epochs" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_torchrun_ddp_two_processes(device, tmp_path):
    """cpu: gloo, whatever the machine; cuda: NCCL, one GPU per rank (NCCL refuses two ranks on one GPU)."""
    if device == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA devices for 2 NCCL ranks, {torch.cuda.device_count()} visible")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vae_fast", "train", "--epochs", "1", "--hidden", "16", "--latent", "4",
           "--iw-samples", "5", "--device", device, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env_with_repo(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("epoch   1/1  train neg-ELBO") == 1  # only rank 0 prints
    assert "x 2 processes (DDP)" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["threads"] >= 1
    assert m["device"] == ("cpu" if device == "cpu" else "cuda:0")  # rank 0 writes metrics.json
    assert m["data"]["n_test"] == 1000
    assert math.isfinite(m["epochs"][0]["test_neg_elbo"]) and math.isfinite(m["final"]["test_log_px"])
    for name in OUTPUTS:
        assert (out / name).exists(), name
    # the all-reduced test neg-ELBO is the global one: the checkpoint evaluated in one process
    # over the whole test set agrees (up to Monte-Carlo noise of the sampled z)
    model = train_mod.load_model(str(out / "checkpoint.pt"))
    env = train_mod.Dist(0, 1, 0, torch.device("cpu"), owns_group=False)
    single = train_mod.evaluate(model, data.load().test, env, seed=0)
    assert single["neg_elbo"] == pytest.approx(m["final"]["test_neg_elbo"], abs=1.0)


def _fused_backends():
    """(backend, device) pairs: every fused backend that runs here, on its device (Triton: CUDA
    when there is a GPU, else the interpreter on the CPU), and "auto" on the CPU and on CUDA."""
    try:
        from vae_fast._backends import available_backends
    except ImportError:
        return []
    pairs = [(name, device_of(name).type) for name, status in available_backends().items()
             if status.available and name != "reference"]
    return pairs + [("auto", "cpu")] + ([("auto", "cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("backend,device", _fused_backends())
def test_fused_backend_trains(backend, device, tmp_path):
    """--backend <fused> end to end on tiny IDX data (the Triton interpreter is slow on the CPU)."""
    rng = np.random.RandomState(0)
    ddir = tmp_path / "mnist"
    ddir.mkdir()
    data.write_idx(ddir / data.TRAIN_IMAGES, rng.randint(0, 256, (64, 4, 4)).astype(np.uint8))
    data.write_idx(ddir / data.TEST_IMAGES, rng.randint(0, 256, (16, 4, 4)).astype(np.uint8))
    m = run_cli(["--epochs", "1", "--hidden", "8", "--latent", "2", "--iw-samples", "2", "--quiet",
                 "--batch-size", "32", "--backend", backend, "--device", device, "--data-dir", str(ddir)],
                tmp_path / "o")
    assert m["config"]["backend"] == backend and m["device"].split(":")[0] == device
    assert math.isfinite(m["final"]["test_neg_elbo"]) and math.isfinite(m["final"]["test_log_px"])
