"""benchmarks/gpu_summary.py: issue 8's targets read off bench reports, on made-up reports."""
import importlib.util
import json
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "gpu_summary", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_summary.py")
gpu_summary = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_summary)


def report(tmp_path, name, rows):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "device": {"name": "GPU"}, "date": "2026-11-27", "versions": {"torch": "2.11"},
        "git": {"commit": "abcdef0"}, "copy": {"gbps": 4000.0}, "complete": True,
        "rows": [dict(zip(("op", "direction", "shape", "dtype", "impl", "median_s", "copy_fraction"), r))
                 for r in rows]}))
    return str(path)


def verdicts(lines, target, case):
    return [verdict for verdict, t, c, _ in lines if (t, c) == (target, case)]


def test_targets(tmp_path):
    case = ("sample_and_kl", "fwd", "stream-2^24")
    fused = report(tmp_path, "fused", [
        (*case, "float32", "cuda", 1.0e-3, 0.90), (*case, "float32", "triton", 1.3e-3, 0.70),
        (*case, "bfloat16", "cuda", 1.0e-3, 0.69),
        ("negative_elbo", "fwd+bwd", "mnist", "float32", "eager", 2.0e-3, None),
        ("negative_elbo", "fwd+bwd", "mnist", "float32", "cuda", 0.9e-3, None),
    ])
    compiled = report(tmp_path, "compiled", [
        ("negative_elbo", "fwd+bwd", "stream-2^26", "float32", "compiled", 1.4e-3, None),
        ("negative_elbo", "fwd+bwd", "stream-2^26", "float32", "eager", 3.0e-3, None),
        ("negative_elbo", "fwd+bwd", "stream-2^26", "float32", "cuda", 1.0e-3, 0.9),
        ("negative_elbo", "fwd+bwd", "stream-2^26", "float32", "triton", None, None),  # failed
    ])
    lines = gpu_summary.summarize(gpu_summary.load([fused, compiled]))
    row = "sample_and_kl fwd stream-2^24 float32"
    assert verdicts(lines, "cuda >= 0.85 of copy", row) == ["PASS"]
    assert verdicts(lines, "triton >= 0.85 of copy", row) == ["MISS"]
    assert verdicts(lines, "triton <= 1.25x cuda time", row) == ["MISS"]   # 1.30x
    assert verdicts(lines, "cuda >= 0.70 of copy", "sample_and_kl fwd stream-2^24 bfloat16") == ["MISS"]
    assert verdicts(lines, "cuda >= 1.3x compiled", "negative_elbo fwd+bwd stream-2^26 float32") == ["PASS"]
    assert verdicts(lines, "cuda >= 3.0x eager", "negative_elbo fwd+bwd stream-2^26 float32") == ["PASS"]
    assert verdicts(lines, "cuda >= 2.0x eager", "negative_elbo fwd+bwd mnist float32") == ["PASS"]
    # a failed or absent measurement is never a pass
    assert verdicts(lines, "triton >= 1.3x compiled", "negative_elbo fwd+bwd stream-2^26 float32") == ["not measured"]
    assert verdicts(lines, "cuda >= 0.85 of copy", "gaussian_kl fwd stream-2^26 float32") == ["not measured"]
    assert sum(t[0] == "PASS" for t in lines) == 5  # with negative_elbo fwd+bwd 2^26 at 0.9 of copy
