"""Sweeps (`--alpha 1 2.5 5`): every value x --num-seeds seeds in one vmapped program, each exactly its own run."""

import dataclasses
import importlib
from functools import partial

import jax
import numpy as np
import pytest

from benchmarks import diagnose
from benchmarks.algorithms import load_algorithm
from common.checkpoints import read_checkpoint
from common.experiment import compile_chunk, init_states, run_labels, sweep
from common.guards import stop_if_nonfinite
from tests.cli import CLI_SMALL, run_script
from tests.helpers import SMALL_RUN, assert_trees_equal, random_batch

# Each algorithm's regularisation strength(s), two values each; two swept flags sweep their grid (IQL: 2 x 2)
SWEEPS = [
    ("td3_bc", dict(alpha=(1.0, 5.0))),
    ("td3_bc", dict(alpha=(0.5, 4.0), variant="sac_bc")),
    ("iql", dict(expectile=(0.6, 0.9), beta=(1.0, 10.0))),
    ("iql", dict(bc_alpha=(1.0, 5.0), actor_loss="ddpg_bc")),
    ("awr", dict(temperature=(0.5, 2.0))),
    ("cql", dict(cql_alpha=(1.0, 10.0))),
]


@pytest.mark.parametrize("script, flags", SWEEPS, ids=[f"{s}-{'-'.join(f)}" for s, f in SWEEPS])
def test_a_sweep_gives_each_value_what_its_own_run_gives(script, flags):
    module, make_agent = load_algorithm(script)
    args = module.Args(**SMALL_RUN, seed=3, num_seeds=2, **flags)
    module.check_args(args)
    data = random_batch(size=64)
    states, metrics = compile_chunk(make_agent, args, 3, 2)(init_states(make_agent(args, 3, 2).init, args), data)
    labels = run_labels(args)
    assert len(labels) == 2 * int(np.prod([len(v) for v in sweep(args).values()]))
    for i, label in enumerate(labels):  # the run this state stands for: its one value of each flag, its seed
        alone = dataclasses.replace(args, **label, num_seeds=1)
        agent = make_agent(alone, 3, 2)
        single = agent.train_chunk(agent.init(jax.random.PRNGKey(label["seed"])), data)
        state_i = jax.tree.map(lambda v: v[i], (states, metrics))  # noqa: B023 (used at once)
        jax.tree.map(partial(np.testing.assert_allclose, rtol=2e-4, atol=1e-5), state_i, single)
    # the values matter: the same seed with another value trained otherwise
    same_seed = [i for i, label in enumerate(labels) if label["seed"] == 3]
    assert not np.allclose(metrics["losses/actor"][same_seed[0]], metrics["losses/actor"][same_seed[-1]])


def test_one_value_compiles_what_a_run_without_sweeps_did():
    module, make_agent = load_algorithm("td3_bc")
    args = module.Args(**SMALL_RUN, alpha=(2.5,))  # one value in a tuple is that value
    module.check_args(args)
    assert args.alpha == 2.5 and sweep(args) == {} and run_labels(args) == [{"seed": 0}]
    agent, data = make_agent(args, 3, 2), random_batch(size=64)
    state = agent.init(jax.random.PRNGKey(0))
    assert_trees_equal(compile_chunk(make_agent, args, 3, 2)(state, data), agent.train_chunk(state, data))


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "1", "1"], "--alpha takes one value, or several different ones to sweep them, got 1.0 1.0"),
    (["--alpha"], "--alpha takes one value, or several different ones to sweep them, got none"),
    (["--alpha", "1", "-2"], "--alpha must be >= 0, got -2.0"),
])
def test_bad_sweeps_are_one_clear_line(flags, message, minari_store, tmp_path):
    out = run_script("td3_bc.py", *flags, cwd=tmp_path)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr


def test_help_says_which_flags_sweep():
    out = run_script("iql.py", "--help", cwd=".")
    assert "--expectile FLOAT [FLOAT ...]" in out.stdout and "--beta FLOAT [FLOAT ...]" in out.stdout
    assert "a sweep" in out.stdout


def test_a_nonfinite_loss_names_its_combination(tmp_path):
    labels = [{"alpha": 1.0, "seed": 3}, {"alpha": 2.5, "seed": 3}]
    metrics = [{"losses/critic": np.ones(4)}, {"losses/critic": np.array([1.0, np.inf, 1.0, 1.0])}]
    with pytest.raises(SystemExit, match=r"^error: alpha 2.5, seed 3: losses/critic became inf at update 102;"):
        stop_if_nonfinite(metrics, 100, labels, lambda: tmp_path / "nonfinite.msgpack")


def test_cli_sweep_logs_and_evaluates_every_combination_and_its_checkpoint(tiny_hopper, tmp_path, capsys):
    flags = ["--env-id", tiny_hopper, "--expectile", "0.6", "0.8", "--num-seeds", "2", "--seed", "5", *CLI_SMALL]
    out = run_script("iql.py", *flags, "--total-steps", "200", "--eval-every", "200", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for value in ("0.6", "0.8"):
        assert f"expectile {value} | seed   5 | step      200 | return" in out.stdout
        assert f"expectile {value} | seed   6 | step      200 | return" in out.stdout
        assert f"expectile {value} | 2 seeds   | step      200 | normalized" in out.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = (run_dir / "evaluations.csv").read_text().splitlines()
    assert rows[0].startswith("step,expectile,seed,")
    assert [r.split(",")[:3] for r in rows[1:]] == [["200", "0.6", "5"], ["200", "0.6", "6"],
                                                     ["200", "0.8", "5"], ["200", "0.8", "6"]]
    for name in ("expectile_0.6", "expectile_0.8"):  # a TensorBoard run per combination
        assert list((run_dir / name).glob("events.out.tfevents.*"))
    meta, state = read_checkpoint(run_dir / "final.msgpack")
    assert jax.tree.leaves(state)[0].shape[0] == 4  # every combination's seeds

    again = run_script("iql.py", *flags, "--eval-only", "--checkpoint", str(run_dir / "final.msgpack"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trained = [line for line in out.stdout.splitlines() if line.startswith("expectile ")]
    assert [line for line in again.stdout.splitlines() if line.startswith("expectile ")] == trained

    diagnose.main(diagnose.Args("iql", run_dir / "final.msgpack", episodes=1))  # state by state, named
    diagnosis = capsys.readouterr().out
    for label in ("expectile 0.6, seed 5", "expectile 0.6, seed 6", "expectile 0.8, seed 5", "expectile 0.8, seed 6"):
        assert f"{label} (update 200):\n  episode 0: return" in diagnosis


def test_a_resumed_sweep_takes_the_same_updates_as_one_never_stopped(tiny_hopper, tmp_path, monkeypatch):
    module = importlib.import_module("td3_bc")
    monkeypatch.chdir(tmp_path)
    flags = dict(SMALL_RUN, total_steps=16, eval_every=4, save_every=8, alpha=(1.0, 5.0), num_seeds=2)
    module.main(module.Args(env_id=tiny_hopper, **flags))
    (run_dir,) = tmp_path.glob("runs/*")
    never_stopped = read_checkpoint(run_dir / "final.msgpack")[1]
    evaluations = (run_dir / "evaluations.csv").read_text().splitlines()

    module.main(module.Args(env_id=tiny_hopper, checkpoint=run_dir / "checkpoint_8.msgpack", **flags))
    jax.tree.map(np.testing.assert_array_equal, read_checkpoint(run_dir / "final.msgpack")[1], never_stopped)
    resumed = (run_dir / "evaluations.csv").read_text().splitlines()
    without_wall_time = lambda rows: [row.split(",")[:3] + row.split(",")[4:] for row in rows]  # noqa: E731
    assert without_wall_time(resumed) == without_wall_time(evaluations) and len(resumed) == 1 + 4 * 4
    with pytest.raises(SystemExit, match=r"was trained with --alpha 1.0 5.0 \(now 1.0 2.5\)"):
        module.main(module.Args(env_id=tiny_hopper, checkpoint=run_dir / "checkpoint_8.msgpack",
                                **(flags | dict(alpha=(1.0, 2.5)))))
