"""Run the `llmray` command as a user does: a fresh Python process from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "support" / "pipelines" / "tiny.yaml"  # every stage kind, tiny and fast


def llmray(*argv, timeout: float = 900, cwd: Path | str = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """`llmray ARGV...` with captured text output; never raises on a non-zero exit (tests assert it)."""
    return subprocess.run([sys.executable, "-m", "llmray.cli", *map(str, argv)], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env if env is not None else os.environ.copy())
