"""Small pieces the per-algorithm tests share: a hand-made batch and pytree comparisons."""

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
