"""benchmarks/gpu_check.py, the script kept ready for a lent GPU, runs end to end here (on the CPU, or on CUDA)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.mark.artifacts
def test_gpu_check_quick_run_writes_every_row(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], check=True, timeout=120,
                   capture_output=True, text=True)
    results = json.loads(out.read_text())["results"]
    chain = {(row["policy"], row["batch"], row["path"]) for row in results["chain"]}
    assert chain == {(policy, batch, path) for policy in ("sac (Gaussian)", "diffsac K=8") for batch in (1, 1024)
                     for path in ("eager", "CUDA graph")}
    assert all(row["p50_us"] > 0 for row in results["chain"] if row["path"] == "eager")
    assert [row["algorithm"] for row in results["update"]] == ["sac (Gaussian)", "diffsac K=8"]
    assert all(row["p50_ms"] > 0 for row in results["update"])
