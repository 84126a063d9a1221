"""The loop and flag checks that all four scripts share (common/), exercised through each script."""

import dataclasses
import importlib
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.algorithms import ALGORITHMS, load_algorithm
from common import datasets, experiment
from common.checkpoints import read_checkpoint, save_checkpoint
from common.evaluation import make_env, run_episodes
from tests.bounded_envs import make_dataset, pendulum_torque
from tests.cli import CLI_SMALL, REPO, refusal, run_script
from tests.helpers import SMALL_RUN, assert_trees_equal, random_batch



@pytest.mark.parametrize("script", ALGORITHMS)
def test_same_seed_same_losses(script):
    module, make_agent = load_algorithm(script)
    agent = make_agent(module.Args(**SMALL_RUN), 3, 2)
    data = {k: jnp.concatenate([v] * 4) for k, v in random_batch().items()}
    runs = [agent.train_chunk(agent.init(jax.random.PRNGKey(7)), data)[1] for _ in range(2)]
    assert_trees_equal(*runs)
    different = agent.train_chunk(agent.init(jax.random.PRNGKey(8)), data)[1]
    assert not np.array_equal(runs[0]["losses/critic"], different["losses/critic"])


@pytest.mark.parametrize("script", ALGORITHMS)
@pytest.mark.parametrize("args, message", [
    (["--batch-size", "-1"], "--batch-size must be positive"),
    (["--log-every", "0"], "--total-steps and --log-every must be positive"),
    (["--total-steps", "150", "--log-every", "100"], "multiples of --log-every"),
    (["--env-id", "hopper-mediun"], "Did you mean 'hopper-medium'"),
    (["--eval-only", "--checkpoint", "missing.msgpack"], "no checkpoint at missing.msgpack"),
    (["--eval-workers", "0"], "--eval-workers must be >= 1"),
])
def test_bad_shared_flags_are_one_clear_line(script, args, message, minari_store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    said = refusal(script, *args, capsys=capsys)
    assert said.startswith("error: ") and message in said and "\n" not in said


@pytest.mark.parametrize("script", ALGORITHMS)
def test_a_refused_flag_on_the_command_line_is_one_line_without_a_traceback(script, minari_store, tmp_path):
    out = run_script(f"{script}.py", "--batch-size", "-1", cwd=tmp_path)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1] == "error: --batch-size must be positive, got -1"
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("script", ALGORITHMS)
def test_eval_only_rejects_a_checkpoint_of_another_algorithm(script, tiny_hopper, tmp_path):
    module, make_agent = load_algorithm(script)
    state = make_agent(module.Args(), 11, 3).init(jax.random.PRNGKey(0))
    other = "cql" if script == "iql" else "iql"
    save_checkpoint(tmp_path / "other.msgpack", state, {"algorithm": other, "env_id": tiny_hopper, "step": 0})
    with pytest.raises(SystemExit, match=f"error: .*other.msgpack was written by {other}, not {script}$"):
        module.main(module.Args(env_id=tiny_hopper, eval_only=True, checkpoint=tmp_path / "other.msgpack"))


@pytest.mark.parametrize("script", ALGORITHMS)
def test_nan_loss_stops_the_run_naming_update_and_loss(script, tiny_hopper, tmp_path, monkeypatch):
    module = importlib.import_module(script)
    real = datasets.load_dataset

    def poisoned(name):
        data = real(name)
        data.reward[:] = np.nan  # the critic's TD target is the first thing to break
        return data

    monkeypatch.setattr(experiment, "load_dataset", poisoned)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"losses/critic became nan.* at update 1;"):
        module.main(module.Args(env_id=tiny_hopper, **SMALL_RUN))
    assert list(tmp_path.glob("runs/*/nonfinite.msgpack"))


@pytest.mark.parametrize("script", ALGORITHMS)
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


@pytest.mark.parametrize("script", ALGORITHMS)
def test_a_resumed_run_takes_the_same_updates_as_one_never_stopped(script, tiny_hopper, tmp_path, monkeypatch):
    module = importlib.import_module(script)
    monkeypatch.chdir(tmp_path)
    flags = dict(SMALL_RUN, total_steps=16, eval_every=4, save_every=8)
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
    flags = dict(SMALL_RUN, total_steps=16, eval_every=8, save_every=8)
    module.main(module.Args(env_id=tiny_hopper, **flags))
    (checkpoint,) = tmp_path.glob("runs/*/checkpoint_8.msgpack")
    with pytest.raises(SystemExit, match=message):
        module.main(module.Args(env_id=tiny_hopper, checkpoint=checkpoint, **(flags | changed)))


def test_a_checkpoint_whose_flags_are_text_still_resumes(tiny_hopper, tmp_path, monkeypatch, capsys):
    module = importlib.import_module("iql")
    monkeypatch.chdir(tmp_path)
    flags = dict(SMALL_RUN, total_steps=16, eval_every=8, save_every=8)
    module.main(module.Args(env_id=tiny_hopper, **flags))
    (checkpoint,) = tmp_path.glob("runs/*/checkpoint_8.msgpack")
    meta, state = read_checkpoint(checkpoint)
    assert meta["args"]["hidden_dims"] == [32, 32] and meta["args"]["seed"] == 0  # the flags keep their types
    as_before = {k: str(v) for k, v in dataclasses.asdict(module.Args(env_id=tiny_hopper, **flags)).items()}
    save_checkpoint(checkpoint, state, meta | {"args": as_before})  # as checkpoints recorded them before
    with pytest.raises(SystemExit, match="was trained with --batch-size 16 \\(now 8\\)"):
        module.main(module.Args(env_id=tiny_hopper, checkpoint=checkpoint, **(flags | dict(batch_size=8))))
    module.main(module.Args(env_id=tiny_hopper, checkpoint=checkpoint, **flags))
    assert f"resuming {checkpoint} at update 8" in capsys.readouterr().out


# ---- actions in any Box -------------------------------------------------------------------------

def test_evaluation_maps_the_policys_unit_actions_onto_the_bounds():
    always_one = lambda obs: np.ones((len(obs), 1), np.float32)  # noqa: E731
    np.testing.assert_array_equal(run_episodes(always_one, "tests/Echo-v0", 2, seed=0), [10.0, 10.0])  # 5 x 2.0
    np.testing.assert_array_equal(run_episodes(always_one, "tests/Echo-v0", 2, seed=0, rescale_actions=False), [5, 5])
    assert make_env("Hopper-v5").action_space == make_env("Hopper-v5", rescale_actions=False).action_space


@pytest.mark.parametrize("script", ALGORITHMS)
def test_bounded_actions_train_and_evaluate_as_the_prescaled_data_does(script, minari_store, tmp_path, monkeypatch,
                                                                       capsys):
    """Pendulum's torques in [-2, 2] against the same data with them halved onto [-1, 1], by the same seed: the
    same losses (TD3+BC's BC error among them, measured on [-1, 1]), states and evaluation returns."""
    module = importlib.import_module(script)
    make_dataset("tests/pendulum/bounded-v0", "Pendulum-v1", pendulum_torque(2.0))
    make_dataset("tests/pendulum/prescaled-v0", "tests/UnitPendulum-v0", pendulum_torque(1.0))
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name in ("bounded", "prescaled"):
        module.main(module.Args(env_id=f"tests/pendulum/{name}-v0", **SMALL_RUN))
        (runs[name],) = tmp_path.glob(f"runs/tests-pendulum-{name}-v0__*")
    rows = {name: [row.split(",") for row in (run / "evaluations.csv").read_text().splitlines()]
            for name, run in runs.items()}
    without_wall_time = {name: [row[:2] + row[3:] for row in r] for name, r in rows.items()}
    assert without_wall_time["bounded"] == without_wall_time["prescaled"]
    header = rows["bounded"][0]
    assert "charts/episodic_return" in header and ("losses/bc" in header) == (script == "td3_bc")
    meta, bounded = read_checkpoint(runs["bounded"] / "final.msgpack")
    jax.tree.map(np.testing.assert_array_equal, bounded, read_checkpoint(runs["prescaled"] / "final.msgpack")[1])
    assert (meta["action_low"], meta["action_high"]) == ([-2.0], [2.0])

    trained = eval_result_lines(capsys.readouterr().out)[-1]
    module.main(module.Args(eval_only=True, checkpoint=runs["bounded"] / "final.msgpack", **SMALL_RUN))
    assert eval_result_lines(capsys.readouterr().out) == [trained]  # --eval-only maps its actions back the same way


@pytest.mark.filterwarnings("ignore:Action is not in action space")  # Minari records it all the same
@pytest.mark.parametrize("make, message", [
    (lambda: make_dataset("tests/cartpole/random-v0", "CartPole-v1", lambda rng: int(rng.integers(2)), episodes=1),
     "action space Discrete(2); these scripts handle only continuous actions"),
    (lambda: make_dataset("tests/echo/outside-v0", "tests/Echo-v0", lambda rng: np.array([3.0], np.float32), episodes=1),
     "5 of its 5 actions lie outside the action space's bounds"),
], ids=["discrete", "outside_bounds"])
def test_data_that_cannot_be_handled_is_one_line_and_writes_nothing(make, message, minari_store, tmp_path):
    make()
    dataset_id = "tests/cartpole/random-v0" if "Discrete" in message else "tests/echo/outside-v0"
    out = run_script("iql.py", "--env-id", dataset_id, *CLI_SMALL, cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"error: Dataset {dataset_id}") and message in line
    assert not (tmp_path / "runs").exists()


def test_an_unknown_version_stops_the_script_before_anything_is_written(minari_store, tmp_path, monkeypatch):
    import minari

    monkeypatch.setattr(datasets, "hub_reachable", lambda: (True, ""))
    monkeypatch.setattr(minari, "list_remote_datasets", lambda prefix=None, **_: {"mujoco/hopper/medium-v0": {}})
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module("td3_bc")
    with pytest.raises(SystemExit, match="^error: Minari's hub has no dataset mujoco/hopper/medium-v99; the closest "
                                         "ids the hub lists: mujoco/hopper/medium-v0"):
        module.main(module.Args(env_id="mujoco/hopper/medium-v99", **SMALL_RUN))
    assert not (tmp_path / "runs").exists() and list(minari_store.iterdir()) == []


# ---- --eval-only from the checkpoint alone ------------------------------------------------------

def eval_result_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("step ")]


@pytest.mark.parametrize("script", ALGORITHMS)
def test_eval_only_needs_no_dataset(script, tiny_hopper, tmp_path, monkeypatch, capsys):
    module = importlib.import_module(script)
    monkeypatch.chdir(tmp_path)
    module.main(module.Args(env_id=tiny_hopper, **SMALL_RUN))
    (checkpoint,) = tmp_path.glob("runs/*/final.msgpack")
    (trained,) = eval_result_lines(capsys.readouterr().out)

    def no_data(*args, **kwargs):
        raise AssertionError("--eval-only loaded a dataset")

    empty = tmp_path / "empty_store"
    empty.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(empty))
    monkeypatch.setattr(experiment, "load_dataset", no_data)
    module.main(module.Args(eval_only=True, checkpoint=checkpoint, **SMALL_RUN))
    out = capsys.readouterr().out
    assert "in Hopper-v5" in out and "trained on offrl-standin/hopper/random-v0" in out
    assert eval_result_lines(out) == [trained] and "normalized" in trained  # the checkpoint's reference scores
    assert list(empty.iterdir()) == []


def test_eval_only_in_an_empty_store_and_a_conflicting_env_id(tiny_hopper, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    importlib.import_module("td3_bc").main(importlib.import_module("td3_bc").Args(env_id=tiny_hopper, **SMALL_RUN))
    (checkpoint,) = tmp_path.glob("runs/*/final.msgpack")
    empty = tmp_path / "empty_store"
    empty.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = ["--hidden-dims", "32", "32", "--eval-episodes", "2"]
    out = run_script("td3_bc.py", "--eval-only", "--checkpoint", str(checkpoint), *small, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(eval_result_lines(out.stdout)) == 1
    same = run_script("td3_bc.py", "--env-id", "offrl-standin/hopper/random-v0", "--eval-only", "--checkpoint",
                      str(checkpoint), *small, cwd=tmp_path)  # another name for the same data
    assert same.returncode == 0, same.stderr
    other = run_script("td3_bc.py", "--env-id", "walker2d-medium", "--eval-only", "--checkpoint", str(checkpoint),
                       *small, cwd=tmp_path)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert (f"was trained on --env-id {tiny_hopper} (dataset offrl-standin/hopper/random-v0), not on --env-id "
            f"walker2d-medium" in other.stderr)
    assert list(empty.iterdir()) == [] and len(list(tmp_path.glob("runs/*"))) == 1


def test_a_checkpoint_from_before_still_evaluates_from_its_dataset(tiny_hopper, tmp_path, monkeypatch, capsys):
    module = importlib.import_module("iql")
    monkeypatch.chdir(tmp_path)
    module.main(module.Args(env_id=tiny_hopper, **SMALL_RUN))
    (checkpoint,) = tmp_path.glob("runs/*/final.msgpack")
    (trained,) = eval_result_lines(capsys.readouterr().out)
    meta, state = read_checkpoint(checkpoint)
    old_meta = {k: v for k, v in meta.items() if k not in ("eval_env_spec", "action_low", "action_high",
                                                            "ref_min_score", "ref_max_score")}
    save_checkpoint(tmp_path / "old.msgpack", state, old_meta)  # the same state, as checkpoints were written before
    module.main(module.Args(eval_only=True, checkpoint=tmp_path / "old.msgpack", **SMALL_RUN))
    out = capsys.readouterr().out
    assert "[data] offrl-standin/hopper/random-v0" in out and eval_result_lines(out) == [trained]


# ---- flags that make no sense ---------------------------------------------------------------------

@pytest.mark.parametrize("script", ALGORITHMS)
def test_empty_hidden_dims_is_one_clear_line(script, minari_store, tmp_path):
    out = run_script(f"{script}.py", "--hidden-dims", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "error: --hidden-dims must be one or more positive layer widths (e.g. --hidden-dims " \
                                 "256 256), got none"
    assert not (tmp_path / "runs").exists()


LEARNING_RATE = {"iql": "learning_rate", "td3_bc": "learning_rate", "awr": "learning_rate", "cql": "critic_lr"}


@pytest.mark.parametrize("script", ALGORITHMS)
@pytest.mark.parametrize("flags, message", [
    (dict(hidden_dims=(32, 0)), "--hidden-dims must be one or more positive layer widths"),
    (dict(discount=1.5), "--discount must be in [0, 1], got 1.5"),
    (dict(discount=float("nan")), "--discount must be in [0, 1], got nan"),
    (dict(polyak=0.0), "--polyak must be in (0, 1], got 0.0"),
    (dict(save_every=-4), "--save-every must be >= 0"),
    (dict(exp_name="a/b"), "--exp-name must be a name without '/', got 'a/b'"),
    (dict(learning_rate=0.0), "must be > 0, got 0.0"),
])
def test_senseless_values_are_refused_before_anything_is_written(script, flags, message, tmp_path, monkeypatch):
    module = importlib.import_module(script)
    if "learning_rate" in flags:
        flags = {LEARNING_RATE[script]: flags["learning_rate"]}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(experiment, "load_dataset", lambda name: pytest.fail("the flags were checked after loading"))
    with pytest.raises(SystemExit) as e:
        module.main(module.Args(**(SMALL_RUN | flags)))
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script, flags, message", [
    ("iql", dict(max_weight=0.0), "--max-weight must be > 0"),
    ("iql", dict(bc_alpha=-1.0), "--bc-alpha must be >= 0"),
    ("td3_bc", dict(alpha=float("nan")), "--alpha must be >= 0, got nan"),
    ("cql", dict(lagrange_threshold=float("inf")), "--lagrange-threshold must be a finite number"),
])
def test_senseless_algorithm_values_are_refused(script, flags, message, tmp_path, monkeypatch):
    module = importlib.import_module(script)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=f"^error: {re.escape(message)}"):
        module.main(module.Args(**(SMALL_RUN | flags)))
    assert not (tmp_path / "runs").exists()


def test_graceful_interrupt_gives_ctrl_c_back_when_the_loop_ends(ctrl_c_raises):
    from common.guards import GracefulInterrupt

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with GracefulInterrupt() as interrupt:
        signal.raise_signal(signal.SIGINT)  # inside: a flag, so the loop can save first
        assert interrupt.requested
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(KeyboardInterrupt):  # after: Ctrl-C means what it meant before (a test run, a notebook)
        signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("sweep", [{}, {"expectile": (0.6, 0.8)}])
def test_the_run_closes_each_tensorboard_writer_once(sweep, tiny_hopper, tmp_path, monkeypatch):
    import common.logger
    import iql

    closed = []
    monkeypatch.setattr(common.logger.SummaryWriter, "close", lambda writer: closed.append(id(writer)))
    monkeypatch.chdir(tmp_path)
    iql.main(iql.Args(env_id=tiny_hopper, **SMALL_RUN, **sweep))
    assert len(closed) == len(set(closed)) == (1 if not sweep else 3)  # a sweep: the run's and one per value
