"""`vae-fast train`: outputs, metrics.json schema, reproducibility, CLI errors, --data-dir, and a
2-process DDP run under torchrun (gloo on the CPU; NCCL on two GPUs where there are two). Tiny
models and 1-2 epochs keep it fast. Every run names its --device: "auto" picks CUDA on a GPU machine."""
import gzip
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
    assert len(err.splitlines()) == 1 and "vae-fast train: error: " in err and message in err, err


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



# ------------------------------------------------------------- issue 10: user errors, atomic outputs
def tiny_idx_dir(root, train_shape=(64, 4, 4), test_shape=(16, 4, 4)):
    rng = np.random.RandomState(0)
    root.mkdir(parents=True, exist_ok=True)
    data.write_idx(root / data.TRAIN_IMAGES, rng.randint(0, 256, train_shape).astype(np.uint8))
    data.write_idx(root / data.TEST_IMAGES, rng.randint(0, 256, test_shape).astype(np.uint8))
    return root


FAST = ["--epochs", "1", "--hidden", "16", "--latent", "4", "--iw-samples", "2", "--quiet", "--device", "cpu",
        "--batch-size", "32"]


def cli_error(argv, capsys) -> str:
    """The one line a user error prints; asserts status 2, one line, no traceback."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"vae-fast {argv[0]}: error: "), err
    return err.strip()


def leftovers(root):
    return sorted(p.name for p in Path(root).rglob("*.tmp-*"))


def _bad_data_dir(kind, root):
    d = tiny_idx_dir(root / kind)
    path = d / data.TRAIN_IMAGES
    if kind == "overflow":
        path.write_bytes(bytes([0, 0, 8, 3]) + b"\xff" * 12)
    elif kind == "empty-images":
        data.write_idx(path, np.zeros((5, 0, 0), np.uint8))
    elif kind == "corrupt-gz":
        raw = gzip.compress(path.read_bytes(), mtime=0)
        path.unlink()
        (d / (data.TRAIN_IMAGES + ".gz")).write_bytes(raw[:10] + bytes([raw[10] ^ 0xFF]) + raw[11:])
    elif kind == "label-count":
        data.write_idx(d / data.TRAIN_LABELS, np.zeros(63, np.uint8))
    return d


@pytest.mark.parametrize("kind, message", [
    ("overflow", f"expected {(2**32 - 1) ** 3} data bytes"),
    ("empty-images", "with N, rows, cols > 0, got dtype uint8 and shape (5, 0, 0)"),
    ("corrupt-gz", "train-images-idx3-ubyte.gz: cannot read: Error -3 while decompressing"),
    ("label-count", "train-labels-idx1-ubyte: expected 64 labels"),
])
def test_bad_idx_files_are_one_line_errors(kind, message, tmp_path, capsys):
    d = _bad_data_dir(kind, tmp_path)
    err = cli_error(["train", *FAST, "--data-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert message in err
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["--seed", str(2**64)], "argument --seed: expected a non-negative integer below 2**63, got 18446744073709551616"),
    (["--epochs", str(2**63)], "argument --epochs: expected a positive integer below 2**63"),
    (["--iw-samples", str(2**63)], "argument --iw-samples: expected a positive integer below 2**63"),
    (["--batch-size", str(10**30)], "argument --batch-size: expected a positive integer below 2**63"),
    (["--lr", "1e300"], "--lr: expected a positive number at most 1e+30, got 1e+300"),
    (["--threads", str(2**40)], "--threads: expected an integer in 1..1024, got 1099511627776"),
    (["--hidden", str(10**12)], "--hidden 1000000000000 / --latent 4: cannot build the model (16 inputs) on cpu"),
])
def test_out_of_range_numbers_are_one_line_errors(args, message, tmp_path, capsys):
    d = tiny_idx_dir(tmp_path / "d")
    err = cli_error(["train", *FAST, *args, "--data-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert message in err
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_config_validate_ranges_for_api_users():
    with pytest.raises(train_mod.ConfigError, match=r"--seed: expected a non-negative integer below 2\*\*63"):
        train_mod.TrainConfig(seed=2**63).validate()
    with pytest.raises(train_mod.ConfigError, match=r"--epochs: expected a positive integer below 2\*\*63"):
        train_mod.TrainConfig(epochs=2**63).validate()
    train_mod.TrainConfig(seed=2**63 - 1, lr=1e30, threads=1024).validate()  # the bounds themselves are fine


def test_seed_at_the_top_of_its_range_trains(tmp_path):
    """2**63 - 1 plus the per-rank offsets of the evaluation generators stays a valid torch seed."""
    d = tiny_idx_dir(tmp_path / "d")
    m = run_cli([*FAST, "--seed", str(2**63 - 1), "--data-dir", str(d)], tmp_path / "o")
    assert m["config"]["seed"] == 2**63 - 1


def test_diverging_run_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Exit status 2 (the fix is an option, --lr), no traceback, --out untouched."""
    d = tiny_idx_dir(tmp_path / "d")
    err = cli_error(["train", *FAST, "--lr", "1e6", "--data-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert err == "vae-fast train: error: training diverged at epoch 1 (loss nan); try a lower --lr"
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def _unusable_out(kind, tmp_path):
    if kind == "under-a-file":
        (tmp_path / "f").write_text("x")
        return tmp_path / "f" / "sub", f"--out {tmp_path / 'f' / 'sub'}: {tmp_path / 'f'} is not a directory"
    if kind == "is-a-file":
        (tmp_path / "f").write_text("x")
        return tmp_path / "f", f"--out {tmp_path / 'f'}: exists and is not a directory"
    if kind == "proc":
        return Path("/proc/vae-fast-out"), "--out /proc/vae-fast-out: cannot create a directory there"
    if kind == "empty":
        return "", "--out: expected a directory name, got ''"
    if kind == "read-only":
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        return tmp_path / "ro" / "out", f"--out {tmp_path / 'ro' / 'out'}: cannot create a directory there: Permission denied"


@pytest.mark.parametrize("kind", ["under-a-file", "is-a-file", "proc", "read-only", "empty"])
def test_unusable_out_fails_before_training(kind, tmp_path, capsys, monkeypatch):
    if kind == "proc" and not os.path.isdir("/proc"):
        pytest.skip("no /proc on this system")
    if kind == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories (run as a normal user to test this)")
    out, message = _unusable_out(kind, tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(train_mod, "_train", no_training)
    monkeypatch.setattr(data, "load", no_training)
    assert message in cli_error(["train", *FAST, "--out", str(out)], capsys)


def test_fresh_out_appears_whole_and_a_rerun_replaces_only_its_files(tmp_path):
    d = tiny_idx_dir(tmp_path / "d")
    out = tmp_path / "runs" / "o"
    m1 = run_cli([*FAST, "--data-dir", str(d), "--seed", "1"], out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS) and leftovers(tmp_path) == []
    (out / "my-notes.txt").write_text("mine")
    m2 = run_cli([*FAST, "--data-dir", str(d), "--seed", "2"], out)
    assert m2["config"]["seed"] == 2 and m1["config"]["seed"] == 1
    assert (out / "my-notes.txt").read_text() == "mine"  # not ours: left alone
    assert torch.load(out / "checkpoint.pt", weights_only=True)["config"]["seed"] == 2
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_at", ["samples.png", "reconstructions.png", "metrics.json"])
def test_interrupted_writing_leaves_the_previous_run_whole(fail_at, tmp_path, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) while the outputs are written: --out keeps the previous run's four
    files byte for byte (before: a new checkpoint.pt next to the old metrics.json and PNGs)."""
    d = tiny_idx_dir(tmp_path / "d")
    out = tmp_path / "o"
    run_cli([*FAST, "--data-dir", str(d), "--seed", "1"], out)
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    real_save_grid, real_dump = train_mod.save_grid, json.dump

    def save_grid(path, *args, **kwargs):
        if os.path.basename(path) == fail_at:
            raise KeyboardInterrupt
        return real_save_grid(path, *args, **kwargs)

    def dump(obj, f, *args, **kwargs):
        if fail_at == "metrics.json" and "epochs" in obj:
            f.write("{\"partial\": ")
            raise KeyboardInterrupt
        return real_dump(obj, f, *args, **kwargs)

    monkeypatch.setattr(train_mod, "save_grid", save_grid)
    monkeypatch.setattr(train_mod.json, "dump", dump)
    assert cli.main(["train", *FAST, "--data-dir", str(d), "--seed", "2", "--out", str(out)]) == 130
    assert "vae-fast: interrupted" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    assert leftovers(tmp_path) == []


def test_signals_during_the_commit_are_delivered_after_it(tmp_path, monkeypatch):
    """SIGINT arriving between two of the renames that move the files into place: every file is
    the new one, then the KeyboardInterrupt comes."""
    import signal
    import threading

    from vae_fast import _outputs

    out = tmp_path / "o"
    out.mkdir()
    for name in OUTPUTS:
        (out / name).write_text("old")
    staged = _outputs.StagedOutputs(str(out), ValueError)
    assert Path(staged.path).parent == tmp_path and Path(staged.path).name.startswith("o.tmp-")
    for name in OUTPUTS:
        Path(staged.path, name).write_text("new")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        real_replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:  # to the main thread: os.kill may hand it to another thread, which
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # may run late

    monkeypatch.setattr(_outputs.os, "replace", replace)
    # Python's own SIGINT handling, unblocked, whatever ran before in this process (a full CI run
    # once got no KeyboardInterrupt here while the file alone passed; the message says what it found)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        staged.commit()
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail(f"no KeyboardInterrupt; before the test: SIGINT handler {handler!r}, blocked {sorted(mask)}")
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    assert len(calls) == len(OUTPUTS)
    assert {(out / name).read_text() for name in OUTPUTS} == {"new"}
    assert not Path(staged.path).exists()


def png_size(path) -> tuple[int, int]:
    raw = Path(path).read_bytes()[:24]
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def test_wide_images_draw_capped_figures(tmp_path):
    """1 x 200,000 'pixel' images: the figures are drawn from block means (before: a figure 40,000
    inches wide, gigabytes of RGBA, killed for memory)."""
    d = tiny_idx_dir(tmp_path / "d", train_shape=(4, 1, 200_000), test_shape=(2, 1, 200_000))
    m = run_cli([*FAST, "--batch-size", "4", "--data-dir", str(d)], tmp_path / "o")
    for png in ("samples.png", "reconstructions.png"):
        w, h = png_size(tmp_path / "o" / png)
        assert w <= 2 * 2700 and h <= 2700, (png, w, h)
    assert any("samples.png: images of 1 x 200000 pixels drawn as means of 1 x" in n for n in m["notes"])


def test_save_grid_small_images_are_not_shrunk(tmp_path):
    assert train_mod.save_grid(str(tmp_path / "a.png"), [torch.rand(64, 784)], (28, 28), cols=8,
                               titles=["t"]) == (1, 1)
    shrunk = train_mod.save_grid(str(tmp_path / "b.png"), [torch.rand(3, 3000 * 5)], (3000, 5), cols=8,
                                 titles=["t"])
    assert shrunk == (3, 1)  # 3000 rows x 1 grid row > 1024: blocks of 3 rows
    w, h = png_size(tmp_path / "b.png")
    assert h <= 2700 and w <= 2700


# ----------------------------------------------------------------- issue 9: one GPU per NCCL rank
def _fake_cuda(monkeypatch, gpus, **env):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", **env}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(train_mod.dist, "is_initialized", lambda: False)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(train_mod.dist, "init_process_group",
                        lambda backend, **kw: calls.append((backend, kw.get("device_id"))))
    monkeypatch.setattr(train_mod.dist, "get_rank", lambda: int(os.environ["RANK"]))
    monkeypatch.setattr(train_mod.dist, "get_world_size", lambda: int(os.environ["WORLD_SIZE"]))
    return calls


@pytest.mark.parametrize("local_rank", ["0", "1"])
def test_setup_distributed_refuses_more_cuda_ranks_than_gpus(local_rank, monkeypatch):
    calls = _fake_cuda(monkeypatch, gpus=1, RANK=local_rank, LOCAL_RANK=local_rank)
    with pytest.raises(train_mod.ConfigError,
                       match=r"--device cuda: 2 processes on this node but 1 GPU visible; NCCL needs one GPU "
                             r"per process: use torchrun --nproc_per_node=1 \(or --device cpu\)"):
        train_mod.setup_distributed("cuda")
    assert calls == []  # refused before touching a GPU or the process group


def test_setup_distributed_one_gpu_per_rank(monkeypatch):
    calls = _fake_cuda(monkeypatch, gpus=2, RANK="3", LOCAL_RANK="1", WORLD_SIZE="4")
    env = train_mod.setup_distributed("auto")
    assert (env.rank, env.world_size, env.local_rank, env.device) == (3, 4, 1, torch.device("cuda", 1))
    assert calls == [("set_device", torch.device("cuda", 1)), ("nccl", torch.device("cuda", 1))]
