"""The loop and flag checks that all four scripts share (common/training.py), exercised through each script."""

import importlib
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from common.logger import read_checkpoint, save_checkpoint
from tests.cli import REPO, run_script

SCRIPTS = ["iql", "td3_bc", "awr", "cql"]
MAKERS = {"iql": "make_iql", "td3_bc": "make_td3_bc", "awr": "make_awr", "cql": "make_cql"}
CLI_SMALL = ["--hidden-dims", "32", "32", "--batch-size", "32", "--log-every", "100", "--eval-episodes", "2"]
SMALL = dict(hidden_dims=(32, 32), batch_size=16, log_every=4, total_steps=8, eval_every=8)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("args, message", [
    (["--batch-size", "-1"], "--batch-size must be positive"),
    (["--log-every", "0"], "--total-steps and --log-every must be positive"),
    (["--total-steps", "150", "--log-every", "100"], "multiples of --log-every"),
    (["--env-id", "hopper-mediun"], "Did you mean 'hopper-medium'"),
    (["--eval-only", "--checkpoint", "missing.msgpack"], "no checkpoint at missing.msgpack"),
])
def test_bad_shared_flags_are_one_clear_line(script, args, message, minari_store, tmp_path):
    out = run_script(f"{script}.py", *args, cwd=tmp_path)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_eval_only_rejects_a_checkpoint_of_another_algorithm(script, tiny_hopper, tmp_path):
    module = importlib.import_module(script)
    state = getattr(module, MAKERS[script])(module.Args(), 11, 3).init(jax.random.PRNGKey(0))
    other = "cql" if script == "iql" else "iql"
    save_checkpoint(tmp_path / "other.msgpack", state, {"algorithm": other, "env_id": tiny_hopper, "step": 0})
    with pytest.raises(SystemExit, match=f"error: .*other.msgpack was written by {other}, not {script}$"):
        module.main(module.Args(env_id=tiny_hopper, eval_only=True, checkpoint=tmp_path / "other.msgpack"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_nan_loss_stops_the_run_naming_update_and_loss(script, tiny_hopper, tmp_path, monkeypatch):
    from common import datasets

    module = importlib.import_module(script)
    real = datasets.load_dataset

    def poisoned(name):
        data = real(name)
        data.reward[:] = np.nan  # the critic's TD target is the first thing to break
        return data

    monkeypatch.setattr(module, "load_dataset", poisoned)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"losses/critic became nan.* at update 1;"):
        module.main(module.Args(env_id=tiny_hopper, **SMALL))
    assert list(tmp_path.glob("runs/*/nonfinite.msgpack"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_saves_and_exits_cleanly(script, tiny_hopper, tmp_path):
    proc = subprocess.Popen([sys.executable, str(REPO / f"{script}.py"), "--env-id", tiny_hopper,
                             "--total-steps", "10000000", *CLI_SMALL], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # let it compile and train a few chunks
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "interrupted at update" in stdout and "Traceback" not in stderr
    assert list(tmp_path.glob("runs/*/final.msgpack"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_resumed_run_takes_the_same_updates_as_one_never_stopped(script, tiny_hopper, tmp_path, monkeypatch):
    module = importlib.import_module(script)
    monkeypatch.chdir(tmp_path)
    flags = dict(SMALL, total_steps=16, eval_every=4, save_every=8)
    module.main(module.Args(env_id=tiny_hopper, **flags))
    (run_dir,) = tmp_path.glob("runs/*")
    never_stopped = read_checkpoint(run_dir / "final.msgpack")[1]
    evaluations = (run_dir / "evaluations.csv").read_text().splitlines()

    # As if killed just before update 16: resume from the checkpoint at update 8, in the same directory
    module.main(module.Args(env_id=tiny_hopper, checkpoint=run_dir / "checkpoint_8.msgpack", **flags))
    assert list(tmp_path.glob("runs/*")) == [run_dir]
    jax.tree.map(np.testing.assert_array_equal, read_checkpoint(run_dir / "final.msgpack")[1], never_stopped)
    resumed = (run_dir / "evaluations.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in resumed[1:]] == ["4", "8", "12", "16"]  # the old 12 and 16 were dropped
    without_wall_time = lambda rows: [row.split(",")[:2] + row.split(",")[3:] for row in rows]  # noqa: E731
    assert without_wall_time(resumed) == without_wall_time(evaluations)


@pytest.mark.parametrize("changed, message", [
    (dict(batch_size=8), "was trained with --batch-size 16 \\(now 8\\); resuming needs the same flags"),
    (dict(total_steps=24), "was trained with --total-steps 16 \\(now 24\\)"),
])
def test_resuming_with_other_flags_is_refused(changed, message, tiny_hopper, tmp_path, monkeypatch):
    module = importlib.import_module("iql")
    monkeypatch.chdir(tmp_path)
    flags = dict(SMALL, total_steps=16, eval_every=8, save_every=8)
    module.main(module.Args(env_id=tiny_hopper, **flags))
    (checkpoint,) = tmp_path.glob("runs/*/checkpoint_8.msgpack")
    with pytest.raises(SystemExit, match=message):
        module.main(module.Args(env_id=tiny_hopper, checkpoint=checkpoint, **(flags | changed)))
