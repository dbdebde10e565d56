"""The Triton kernels compile for real GPUs (sm_80, sm_90), not only in the interpreter that runs
them in CI, and the sm_90 code is what it should be: tests/triton_aot.py records every launch the
ops make, compiles it with the specialisation a real launch gets (no GPU needed) and checks the
PTX/SASS. One subprocess (TRITON_INTERPRET must be unset there) runs all checks; each test below
reports one of them."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def aot():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout's vae_fast
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_aot.py")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert "compiled" in result.stdout, result.stdout[-2000:] + result.stderr[-6000:]
    return result


def failures(result, check):
    return [line for line in result.stderr.splitlines() if line.startswith(f"FAIL {check} ")]


def test_every_triton_launch_compiles_for_sm80_and_sm90(aot):
    assert not failures(aot, "compile"), "\n".join(failures(aot, "compile"))[-6000:]
    assert re.search(r"compiled [1-9]\d* distinct launches for sm_80 and [1-9]\d* for sm_90", aot.stdout)


@pytest.mark.parametrize("check", ["f64", "vector", "loop", "local", "rng", "respecialise", "inductor", "index64"])
def test_compiled_code(aot, check):
    """f64: float64 kernels compute in float64; vector: 16-byte loads; loop: no fence/atomic per tile;
    local: no local memory; rng: the Box-Muller is the contract's instruction sequence; respecialise:
    a new `scale` compiles nothing new; inductor: the copy of each kernel torch.compile builds
    compiles; index64: rows of 2^31+ elements get 64-bit column offsets (see tests/triton_aot.py)."""
    bad = failures(aot, check)
    assert not bad, "\n".join(bad)[-6000:]


def test_the_checks_ran(aot):
    """A check that inspects nothing cannot fail: the 16-byte load check saw launches."""
    assert re.search(r"\([1-9]\d* checked for 16-byte loads, [1-9]\d* as inductor copies them, "
                     r"[1-9]\d* with 2\^31-element rows\)", aot.stdout), aot.stdout
    assert aot.returncode == 0, aot.stderr[-6000:]
