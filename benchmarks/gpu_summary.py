"""Issue 8's acceptance targets, read off `vae-fast bench` reports (bench.json): one line per target
and case, PASS or MISS with the numbers, for the closing note of a GPU session.

    python benchmarks/gpu_summary.py OUT/bench-fused/bench.json OUT/bench-compiled/bench.json

Each figure comes from one report, so every ratio is against baselines of the same run: the copy
fraction from the first report that timed the fused backend, the speedups from the first report
that timed the fused backend and the baseline together. A case no report holds is listed as
"not measured", never as a pass.
"""
import json
import sys

FUSED_OPS = ("reparameterize", "gaussian_kl", "sample_and_kl", "bernoulli_nll", "negative_elbo")
STREAMS = ("stream-2^24", "stream-2^26")
DIRECTIONS = ("fwd", "fwd+bwd")
DTYPES = ("float32", "bfloat16")
COPY_TARGET = {"float32": 0.85, "bfloat16": 0.70}   # fraction of the copy bandwidth
LOSS_HEAD = "negative_elbo"                          # sample_and_kl + bernoulli_nll in one call
VS_COMPILED, VS_EAGER, MNIST_VS_EAGER = 1.3, 3.0, 2.0
TRITON_OVER_CUDA = 1.25                              # at most, in time, at >= 2^24 elements


def load(paths):
    reports = []
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        index = {}
        for r in report.get("rows", []):
            if r.get("median_s"):
                index[(r["op"], r["direction"], r["shape"], r["dtype"], r["impl"])] = r
        reports.append((path, report, index))
    return reports


def find(reports, case, impls):
    """The rows of `impls` for `case` from the first report holding all of them, and its path."""
    for path, _, index in reports:
        rows = [index.get((*case, impl)) for impl in impls]
        if all(rows):
            return rows, path
    return None, None


def line(ok, target, case, detail):
    """(verdict, target, case, detail): verdict PASS, MISS or "not measured" (ok is None)."""
    return ("not measured" if ok is None else ("PASS" if ok else "MISS"), target, " ".join(case), detail)


def format_line(verdict, target, case, detail):
    return f"{verdict:12s} {target:28s} {case:42s} {detail}"


def summarize(reports, backends=("cuda", "triton")):
    out = []
    for op in FUSED_OPS:
        for shape in STREAMS:
            for dtype in DTYPES:
                for direction in DIRECTIONS:
                    case = (op, direction, shape, dtype)
                    for impl in backends:
                        rows, _ = find(reports, case, [impl])
                        target = f"{impl} >= {COPY_TARGET[dtype]:.2f} of copy"
                        if rows is None:
                            out.append(line(None, target, case, ""))
                            continue
                        frac = rows[0]["copy_fraction"]
                        out.append(line(frac >= COPY_TARGET[dtype], target, case,
                                        f"{frac:.2f} ({rows[0]['median_s'] * 1e3:.3f} ms)"))
                    rows, _ = find(reports, case, ["cuda", "triton"])
                    target = f"triton <= {TRITON_OVER_CUDA}x cuda time"
                    if rows is None:
                        out.append(line(None, target, case, ""))
                    else:
                        ratio = rows[1]["median_s"] / rows[0]["median_s"]
                        out.append(line(ratio <= TRITON_OVER_CUDA, target, case, f"{ratio:.2f}x"))
    for shape, targets in [(s, (("compiled", VS_COMPILED), ("eager", VS_EAGER))) for s in STREAMS] + \
                          [("mnist", (("eager", MNIST_VS_EAGER),))]:
        for dtype in DTYPES:
            case = (LOSS_HEAD, "fwd+bwd", shape, dtype)
            for impl in backends:
                for base, factor in targets:
                    rows, _ = find(reports, case, [base, impl])
                    target = f"{impl} >= {factor}x {base}"
                    if rows is None:
                        out.append(line(None, target, case, ""))
                        continue
                    speedup = rows[0]["median_s"] / rows[1]["median_s"]
                    out.append(line(speedup >= factor, target, case,
                                    f"{speedup:.2f}x ({rows[1]['median_s'] * 1e3:.3f} vs "
                                    f"{rows[0]['median_s'] * 1e3:.3f} ms)"))
    return out


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    reports = load(argv)
    for path, report, _ in reports:
        copy = report.get("copy") or {}
        print(f"{path}: {report['device']['name']}, {report['date']}, torch {report['versions']['torch']}, "
              f"commit {report['git'].get('commit', '?')[:7]}, copy {copy.get('gbps', float('nan')):.0f} GB/s, "
              f"complete: {report.get('complete', 'n/a')}")
    lines = summarize(reports)
    for fields in lines:
        print(format_line(*fields))
    counts = {v: sum(t[0] == v for t in lines) for v in ("PASS", "MISS", "not measured")}
    print(", ".join(f"{n} {v}" for v, n in counts.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
