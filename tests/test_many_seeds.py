"""--num-seeds N: N training states updated by one vmapped program, each exactly as its own single run."""

import os
import signal
from functools import partial

import jax
import numpy as np
import pytest

from benchmarks import diagnose
from benchmarks.algorithms import ALGORITHMS, load_algorithm
from common.evaluation import EnvWorkers, run_episodes
from common.experiment import init_states
from tests.cli import CLI_SMALL, run_script
from tests.helpers import SMALL_RUN, random_batch


@pytest.mark.parametrize("script", ALGORITHMS)
def test_vmapped_seeds_match_single_runs_with_the_same_seeds(script):
    module, make_agent = load_algorithm(script)
    args = module.Args(**SMALL_RUN, seed=3, num_seeds=2)
    agent = make_agent(args, 3, 2)
    data = random_batch(size=64)
    stacked, stacked_metrics = jax.jit(jax.vmap(agent.train_chunk, in_axes=(0, None)))(init_states(agent.init, args),
                                                                                        data)
    for i, seed in enumerate([3, 4]):
        single, single_metrics = agent.train_chunk(agent.init(jax.random.PRNGKey(seed)), data)
        seed_i = jax.tree.map(lambda v: v[i], (stacked, stacked_metrics))  # noqa: B023 (used at once)
        jax.tree.map(partial(np.testing.assert_allclose, rtol=2e-4, atol=1e-5), seed_i, (single, single_metrics))
    assert not np.allclose(stacked_metrics["losses/critic"][0], stacked_metrics["losses/critic"][1])  # two runs


def test_repeated_episodes_start_from_the_same_states_for_every_group():
    starts = []

    def record_first_obs(obs):
        if not starts:
            starts.append(obs.copy())
        return np.zeros((len(obs), 3), np.float32)

    returns = run_episodes(record_first_obs, "Hopper-v5", num_episodes=3, seed=7, repeat=2)
    assert returns.shape == (6,)
    np.testing.assert_array_equal(starts[0][:3], starts[0][3:])
    assert not np.array_equal(starts[0][0], starts[0][1])
    np.testing.assert_array_equal(returns[:3], returns[3:])  # same policy, same starts: same returns


def state_dependent_policy(obs):
    return np.tanh(np.sin(3 * obs[:, :3])).astype(np.float32)


def test_episodes_stepped_in_worker_processes_return_what_they_return_here_and_ignore_ctrl_c():
    here = run_episodes(state_dependent_policy, "Hopper-v5", num_episodes=3, seed=7, repeat=2)
    workers = EnvWorkers(2)
    try:
        there = run_episodes(state_dependent_policy, "Hopper-v5", num_episodes=3, seed=7, repeat=2, workers=workers)
        np.testing.assert_array_equal(there, here)  # to the bit: the same episodes, only elsewhere
        assert len(set(here[:3])) == 3  # episodes of different lengths and returns
        os.kill(workers.processes[0].pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        again = run_episodes(state_dependent_policy, "Hopper-v5", num_episodes=3, seed=7, repeat=2, workers=workers)
        np.testing.assert_array_equal(again, here)  # the environments were reused, and reset to the same starts
    finally:
        processes = list(workers.processes)
        workers.close()
    assert not any(process.is_alive() for process in processes)


def test_cli_trains_two_seeds_logs_each_and_evaluates_the_checkpoint(tiny_hopper, tmp_path, capsys):
    out = run_script("iql.py", "--env-id", tiny_hopper, "--total-steps", "200", "--eval-every", "200",
                     "--num-seeds", "2", "--seed", "5", *CLI_SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    printed = out.stdout + out.stderr
    assert "seed   5 | step      200 | return" in printed and "seed   6 | step      200 | return" in printed
    assert "2 seeds   | step      200 | normalized" in printed
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = (run_dir / "evaluations.csv").read_text().splitlines()
    assert rows[0].startswith("step,seed,") and [r.split(",")[:2] for r in rows[1:]] == [["200", "5"], ["200", "6"]]

    again = run_script("iql.py", "--eval-only", "--checkpoint", str(run_dir / "final.msgpack"), "--eval-episodes", "2",
                       "--eval-workers", "2", cwd=tmp_path)  # seeds and networks come from the checkpoint
    # (and its episodes are stepped by two worker processes, with the same returns)
    assert again.returncode == 0, again.stderr
    assert [line for line in again.stdout.splitlines() if line.startswith(("seed ", "2 seeds"))] == \
        [line for line in printed.splitlines() if line.startswith(("seed ", "2 seeds"))]  # as when it was trained

    capsys.readouterr()
    diagnose.main(diagnose.Args("iql", run_dir / "final.msgpack", episodes=2))
    diagnosis = capsys.readouterr().out
    assert "seed 6 (update 200):" in diagnosis and "  episode 1: return" in diagnosis
    assert "visited states outside the data's range, by dimension: dim" in diagnosis
    assert "on the data's states, its actions differ from the data's by" in diagnosis


def test_num_seeds_must_be_positive(minari_store, tmp_path):
    out = run_script("iql.py", "--num-seeds", "0", cwd=tmp_path)
    assert out.returncode != 0 and "--num-seeds must be positive, got 0" in out.stderr
