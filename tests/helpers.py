"""Small pieces the tests share: a small run and grid, a hand-made batch, pytree comparisons."""

import json

import jax
import jax.numpy as jnp
import numpy as np

# Args of a run of a few updates, for any of the four scripts
SMALL_RUN = dict(hidden_dims=(32, 32), batch_size=16, log_every=4, total_steps=8, eval_every=8)


def random_batch(size=16, obs_dim=3, action_dim=2):
    """A fixed float32 batch of transitions (seeded), about a fifth of them terminal."""
    rng = np.random.default_rng(0)
    batch = {"obs": rng.normal(size=(size, obs_dim)), "action": rng.uniform(-0.9, 0.9, (size, action_dim)),
             "reward": rng.normal(size=size), "next_obs": rng.normal(size=(size, obs_dim)),
             "terminal": (rng.random(size) < 0.2).astype(np.float64)}
    return jax.tree.map(jnp.float32, batch)


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_trees_differ(a, b):
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def small_grid(tiny_hopper, tmp_path, **overrides):
    """benchmarks.run's Args for one IQL seed of 200 updates on the tiny dataset, its files under tmp_path."""
    from benchmarks import run
    from tests.cli import CLI_SMALL
    settings = dict(algos=("iql",), env_ids=(tiny_hopper,), seeds=(0,), total_steps=200, eval_every=100,
                    name="small_iql", script_args=" ".join(CLI_SMALL), results=tmp_path / "results", work_dir=tmp_path)
    return run.Args(**(settings | overrides))


def write_cell(results, name, seed, scores, outcome="finished", machine="test machine"):
    """A finished hopper-medium run of `name` in a results folder, as benchmarks.run records one, scoring `scores`
    at updates 100, 200, ..."""
    folder = results / "hopper-medium"
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{100 * (i + 1)},{seed},1,0,0,{s},{s}\n" for i, s in enumerate(scores))
    (folder / f"{name}__seed{seed}.csv").write_text(
        "step,seed,wall_s,return_std,charts/episodic_return,charts/normalized_score,values/q\n" + rows)
    record = {"algo": "iql", "name": name, "env_id": "hopper-medium", "seed": seed, "total_steps": 100 * len(scores),
              "command": f"python {name}.py --env-id hopper-medium --seed {seed} --total-steps {100 * len(scores)}",
              "outcome": outcome, "wall_s": 120.0, "machine": machine, "date": "2026-11-24",
              "dataset": {"dataset_id": "d", "source": "s", "episodes": 3, "transitions": 30, "mean_return": 1.0,
                          "mean_normalized_return": 39.4}}
    (folder / f"{name}__seed{seed}.json").write_text(json.dumps(record))
