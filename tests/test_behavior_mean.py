"""benchmarks/behavior_mean.py: the average action of a tanh-Gaussian, and its refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import behavior_mean, make_datasets


def test_average_action_is_the_mode_without_noise_and_shrinks_towards_zero_with_it():
    mean = jnp.array([[1.0, -0.5, 0.0]])
    key = jax.random.PRNGKey(0)
    quiet = behavior_mean.average_action(mean, jnp.full_like(mean, -10.0), key, 64)
    np.testing.assert_allclose(quiet, jnp.tanh(mean), atol=1e-5)
    noisy = behavior_mean.average_action(mean, jnp.zeros_like(mean), key, 20_000)
    # E[tanh(u)] for u ~ N(1, 1), by quadrature: well below tanh(1) = 0.76, since tanh saturates
    u = np.linspace(-7, 9, 20_001)
    expected = np.sum(np.tanh(u) * np.exp(-0.5 * (u - 1) ** 2)) / np.sum(np.exp(-0.5 * (u - 1) ** 2))
    assert abs(float(noisy[0, 0]) - expected) < 0.01 and expected < np.tanh(1.0) - 0.1
    assert abs(float(noisy[0, 2])) < 0.02  # symmetric about 0


def test_unknown_environment_is_refused():
    with pytest.raises(SystemExit, match=r"error: unknown environment ant; choose from"):
        behavior_mean.main(behavior_mean.Args(env="ant"))


def test_missing_policy_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(make_datasets, "BEHAVIOR_DIR", tmp_path)
    with pytest.raises(SystemExit, match="error: No behaviour policy at .*hopper/medium.msgpack"):
        behavior_mean.main(behavior_mean.Args(env="hopper"))
