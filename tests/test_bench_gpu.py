"""bench/gpu.py runs here as a smoke test: every row of its table on reduced networks, on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEADER = ("row", "tile", "rate", "goal (before)", "TFLOP/s", "work", "outside fwd", "peak GiB")
MODEL_ROWS = (
    "module eager",
    "served eager",
    "served compiled",
    "error policy-eager",
    "error policy-compiled",
    "error fixed-tile",
    "check host-canvas",
    "png encode",
)
ROWS = [f"{m} {r}" for m in ("x4plus", "animevideov3") for r in MODEL_ROWS] + [
    f"gfpgan {p} batch {b}" for p in ("fp32", "fp16") for b in (1, 8)
]


@pytest.mark.slow  # ~20-30 s on 2 busy cores, mostly importing torch and spandrel
def test_quick_cpu_run_prints_every_row(tmp_path: Path) -> None:
    report = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--device", "cpu", "--quick", "--json", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("row "))
    assert all(f" {column} " in f" {header} " for column in HEADER), header
    names = [
        line.split(" | ")[0].strip() for line in lines[lines.index(header) + 2 :] if " | " in line
    ]
    assert names == ROWS
    assert "whole run:" in done.stdout

    rows = {row["name"]: row for row in json.loads(report.read_text())["rows"]}
    assert list(rows) == ROWS
    assert not [name for name, row in rows.items() if row["status"] == "FAILED"]
    # What a CPU run measures, it measures: a rate for each served row, an error for each seam row.
    for model in ("x4plus", "animevideov3"):
        assert rows[f"{model} served eager"]["rate"] > 0
        assert 1.0 <= rows[f"{model} served eager"]["work"] < 4.0
        assert rows[f"{model} error fixed-tile"]["err_mean"] is not None
        assert rows[f"{model} check host-canvas"]["err_max"] <= 1
        assert rows[f"{model} served compiled"]["status"] == "skipped"  # not on a CPU by default
    assert rows["gfpgan fp32 batch 8"]["rate"] > 0
    assert rows["gfpgan fp16 batch 1"]["status"] == "skipped"
