"""The benchmark script runs end to end (its numbers are for docs/benchmarks.md, never asserted)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--only", "batch 1024",
                             "--variants", "dnnlab,dnnlab no-diag,bf16,cuda graph", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    (row,) = data["workloads"].values()
    for loop in ("lean", "lean fused", "dataloader", "dnnlab", "dnnlab no-diag"):
        assert row[loop] > 0
    assert row["bf16"] > 0
    if data["device"] == "cpu":  # a fast path that cannot apply reports why instead of a number
        assert row["cuda graph"] == "trainer.cuda_graph off: a CUDA graph needs a CUDA device (this run is on cpu)"
    # Both start-up times are measured; which is larger is a benchmark number, not a test (it flips under load).
    assert data["startup_smoke_s"] > 0 and data["startup_torch_floor_s"] > 0 and "samples/s" in result.stdout
