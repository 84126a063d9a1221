"""Run an algorithm script through its real command line, in a scratch directory."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# small networks, a few hundred updates, two evaluation episodes: a whole run in seconds
CLI_SMALL = ["--hidden-dims", "32", "32", "--batch-size", "32", "--log-every", "100", "--eval-episodes", "2"]


def run_script(script: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
