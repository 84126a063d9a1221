"""Run an algorithm script through its real command line, in a scratch directory; or refuse its flags in-process."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tyro

REPO = Path(__file__).resolve().parents[1]
# small networks, a few hundred updates, two evaluation episodes: a whole run in seconds
CLI_SMALL = ["--hidden-dims", "32", "32", "--batch-size", "32", "--log-every", "100", "--eval-episodes", "2"]


def run_script(script: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def refusal(script: str, *args: str, capsys) -> str:
    """What `python <script> <args>` says as it refuses its flags, found in this process (no interpreter to start):
    the one-line error of the script's checks, or tyro's message for a flag it cannot parse."""
    module = importlib.import_module(script.removesuffix(".py"))
    with pytest.raises(SystemExit) as stopped:
        module.main(tyro.cli(module.Args, args=list(args)))
    code = stopped.value.code
    return code if isinstance(code, str) else " ".join(capsys.readouterr().err.split())  # tyro's box, unwrapped
