"""`vae-fast bench --quick` on the CPU: the JSON report's schema (every row, the copy baseline, the
dispatch overhead), the byte model, the table and the plot; and the guard that keeps CPU results
out of benchmarks/results/. One quick run (tiny shapes, one thread) serves every test."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vae_fast
from vae_fast import bench, cli

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMESPACE = {"triton": "vae_fast_triton", "cpu": "vae_fast", "cuda": "vae_fast"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ)  # TRITON_INTERPRET=1 from conftest without a GPU: triton runs interpreted
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "vae_fast", "bench", "--quick", "--device", "cpu",
                           "--threads", "1", "--out", str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "bench.json") as f:
        return out, json.load(f), proc.stdout


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_report_header(quick_run):
    _, report, _ = quick_run
    assert report["quick"] is True
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["versions"]["torch"] == torch.__version__
    assert "triton" in report["versions"] and "commit" in report["git"]
    assert report["date"].startswith("20")
    assert report["options"]["compile_backend"] == "aot_eager"
    assert any("peak_mem_bytes is null" in note for note in report["notes"])


def test_copy_baseline(quick_run):
    _, report, _ = quick_run
    copy = report["copy"]
    assert copy["bytes"] == 2 * copy["elements"] * 4
    assert positive(copy["median_s"]) and positive(copy["gbps"])
    assert copy["gbps"] == pytest.approx(copy["bytes"] / copy["median_s"] / 1e9)


def test_every_row_has_the_schema_and_positive_numbers(quick_run):
    _, report, _ = quick_run
    rows = report["rows"]
    assert rows
    for row in rows:
        assert set(row) == set(bench.ROW_KEYS), row
        assert row["error"] is None, row
        assert positive(row["median_s"]) and row["number"] >= 1 and row["repeats"] >= 1, row
        assert positive(row["speedup_vs_eager"]) and positive(row["speedup_vs_compiled"]), row
        assert row["peak_mem_bytes"] is None  # the CPU keeps no allocator statistics
        if row["op"] == "vae_step":
            assert row["min_bytes"] is None and row["gbps"] is None and row["copy_fraction"] is None
        else:
            assert positive(row["min_bytes"]) and positive(row["gbps"]) and positive(row["copy_fraction"]), row
            assert row["gbps"] == pytest.approx(row["min_bytes"] / row["median_s"] / 1e9)
            assert row["copy_fraction"] == pytest.approx(row["gbps"] / report["copy"]["gbps"])
        if row["impl"] == "eager":
            assert row["speedup_vs_eager"] == pytest.approx(1.0)


def test_every_op_direction_shape_and_impl_is_measured(quick_run):
    _, report, _ = quick_run
    impls = {"eager", "compiled", *report["options"]["backends"]}
    # on the CPU Triton runs only interpreted (TRITON_INTERPRET=1, set by conftest without a GPU)
    if vae_fast.available_backends()["triton"].available and vae_fast._triton_loader.interpreted:
        assert "triton" in impls  # --quick includes it
    found = {(r["op"], r["direction"], r["shape"], r["impl"]) for r in report["rows"]}
    for op in bench.OPS:
        shapes = {"vae_step": ["mnist"], "diffusers_posterior": ["ld-2x4x8x8", "video-1x4x3x4x4"]}.get(
            op, ["mnist", "stream-2^12"])
        for direction in bench.DIRECTIONS:
            for shape in shapes:
                for impl in impls:
                    assert (op, direction, shape, impl) in found
    assert {r["dtype"] for r in report["rows"]} == {"float32"}


def test_min_bytes_by_hand(quick_run):
    """Spot checks of the byte model (module docstring of vae_fast.bench) on the MNIST shapes:
    latents 128x20 (N = 2560, B = 128), images 128x784 (M = 100352), float32."""
    _, report, _ = quick_run
    by = {(r["op"], r["direction"]): r["min_bytes"] for r in report["rows"] if r["shape"] == "mnist"}
    N, M, B = 128 * 20, 128 * 784, 128
    assert by["reparameterize", "fwd"] == 4 * 3 * N
    assert by["reparameterize", "fwd+bwd"] == 4 * 6 * N
    assert by["gaussian_kl", "fwd+bwd"] == 4 * 6 * N
    assert by["sample_and_kl", "fwd"] == 4 * (3 * N + B)
    assert by["sample_and_kl", "fwd+bwd"] == 4 * (8 * N + 2 * B)
    assert by["bernoulli_nll", "fwd"] == 4 * 2 * M
    assert by["bernoulli_nll", "fwd+bwd"] == 4 * 5 * M
    assert by["negative_elbo", "fwd+bwd"] == 4 * (5 * M + 6 * N)


def test_dispatch_overhead(quick_run):
    _, report, _ = quick_run
    d = report["dispatch"]
    calls = {r["call"]: r for r in d["rows"]}
    for call in ("torch F.binary_cross_entropy_with_logits",
                 "vae_fast.bernoulli_nll(backend='reference')"):
        assert positive(calls[call]["us_per_call"])
    for b in report["options"]["backends"]:
        assert positive(calls[f"vae_fast.bernoulli_nll(backend={b!r})"]["us_per_call"])
        assert isinstance(d["python_layer_us"][b], float)
        for op in ("bernoulli_nll", "sample_and_kl"):  # public API and direct op, without and with grad
            for grad in ("", ", input requiring grad"):
                for call in (f"vae_fast.{op}(backend={b!r}){grad}",
                             f"torch.ops.{NAMESPACE[b]}.{op}.default{grad}"):
                    assert positive(calls[call]["us_per_call"]) and positive(calls[call]["us_min"]), call
                    assert calls[call]["us_min"] <= calls[call]["us_per_call"]
        assert set(d["python_layer_by_call"][b]) == {"bernoulli_nll", "bernoulli_nll grad",
                                                     "sample_and_kl", "sample_and_kl grad"}
        assert d["python_layer_us"][b] == d["python_layer_by_call"][b]["bernoulli_nll"]
    assert set(d["python_layer_us"]) == set(report["options"]["backends"])


def test_table_and_plot(quick_run):
    out, report, stdout = quick_run
    assert "x eager" in stdout and "x compiled" in stdout and "dispatch overhead" in stdout
    assert "copy baseline" in stdout
    assert (out / "bench.png").read_bytes()[:8] == PNG_MAGIC
    assert report["complete"] is True and not list(out.glob("*.tmp"))


def test_cpu_results_stay_out_of_benchmarks_results(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--quick", "--device", "cpu", "--out", str(tmp_path / "benchmarks" / "results" / "x")])
    assert "full GPU runs only" in capsys.readouterr().err
    assert not (tmp_path / "benchmarks").exists()


def test_bad_names_are_usage_errors(capsys):
    for args in (["--shapes", "huge"], ["--backends", "tpu"], ["--ops", "softmax"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["bench", "--quick", *args])
        assert info.value.code == 2
    assert "huge" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["existing-file", "under-a-file", "proc"])
def test_unusable_out_fails_before_the_benchmark(kind, tmp_path, capsys, monkeypatch):
    """One line, status 2, and nothing measured (before: the whole run, then a traceback)."""
    (tmp_path / "f").write_text("x")
    out, message = {"existing-file": (tmp_path / "f", "exists and is not a directory"),
                    "under-a-file": (tmp_path / "f" / "sub", f"{tmp_path / 'f'} is not a directory"),
                    "proc": (Path("/proc/vae-fast-bench"), "cannot write there")}[kind]
    if kind == "proc" and not os.path.isdir("/proc"):
        pytest.skip("no /proc on this system")

    def measured(*args, **kwargs):
        raise AssertionError("the benchmark ran before --out was checked")

    monkeypatch.setattr(bench, "copy_bandwidth", measured)
    monkeypatch.setattr(bench, "measure_case", measured)
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--quick", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"vae-fast bench: error: --out {out}: {message}"), err


def test_a_run_cut_short_keeps_the_cases_it_finished(tmp_path, monkeypatch, capsys):
    """A time limit (a lent GPU's) stopping the run mid-way leaves bench.json with every case done
    so far, marked incomplete; each case's numbers are printed as soon as it is measured."""
    calls = []

    def measured(case, impls, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # what `timeout -s INT` does to the run
        calls.append(case)
        return [{**dict.fromkeys(bench.ROW_KEYS), "op": case.op, "impl": impl, "median_s": 1e-3,
                 "gbps": 2.0, "direction": case.direction, "shape": case.shape.name,
                 "dtype": case.dtype_name} for impl in impls]

    monkeypatch.setattr(bench, "copy_bandwidth", lambda *a: {"gbps": 4.0, "median_s": 1.0})
    monkeypatch.setattr(bench, "measure_case", measured)
    assert cli.main(["bench", "--quick", "--device", "cpu", "--backends", "cpu", "--directions", "fwd+bwd",
                     "--out", str(tmp_path)]) == 130
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["complete"] is False and report["options"]["directions"] == ["fwd+bwd"]
    assert calls[0].direction == "fwd+bwd"
    assert [(r["op"], r["impl"]) for r in report["rows"]] == [(calls[0].op, i) for i in ("eager", "compiled", "cpu")]
    assert all(r["copy_fraction"] == 0.5 for r in report["rows"])
    assert "copy  50%" in capsys.readouterr().out
    assert not (tmp_path / "bench.png").exists()
