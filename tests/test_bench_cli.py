"""`posflow bench` is a command of the installed product: it runs from any directory, not only
from the repository's root (the harness is packaged with the rest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_posflow_bench_runs_from_any_directory(tmp_path: Path) -> None:
    posflow = Path(sys.executable).parent / "posflow"
    shown = subprocess.run(
        [str(posflow), "bench", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "--count" in shown.stdout and "--open" in shown.stdout
    imported = subprocess.run(
        [sys.executable, "-c", "import bench.harness.run, bench.harness.floor"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
