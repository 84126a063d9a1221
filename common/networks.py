"""Network building blocks shared by every script. No losses live here: only function approximators."""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense layers with ReLU between them; the last layer is linear."""

    hidden_dims: Sequence[int]
    out_dim: int

    @nn.compact
    def __call__(self, x):
        for width in self.hidden_dims:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.out_dim)(x)


class Critic(nn.Module):
    """Q(s, a) -> scalar per sample."""

    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs, action):
        return MLP(self.hidden_dims, 1)(jnp.concatenate([obs, action], -1)).squeeze(-1)


class TwinCritic(nn.Module):
    """Two independent critics evaluated in one call; output shape (2, ...)."""

    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs, action):
        twins = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twins(self.hidden_dims)(obs, action)

    @staticmethod
    def member(params, i: int) -> dict:
        """Twin i's parameters alone, for `Critic(hidden_dims).apply`: one critic without the other's forward pass."""
        return {"params": jax.tree.map(lambda x: x[i], params["params"]["VmapCritic_0"])}  # flax's name for the vmap


class ValueNet(nn.Module):
    """V(s) -> scalar per sample."""

    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs):
        return MLP(self.hidden_dims, 1)(obs).squeeze(-1)


class DeterministicActor(nn.Module):
    """a = tanh(f(s)): actions in [-1, 1], onto which the loader maps every environment's bounds."""

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs):
        return jnp.tanh(MLP(self.hidden_dims, self.action_dim)(obs))


LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


class GaussianActor(nn.Module):
    """Gaussian with a tanh-bounded mean and a learned state-independent log-std (IQL's and AWR's policy).

    Returns (mean, log_std); the mean is the deterministic action, `gaussian_log_prob` scores dataset actions.
    """

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs):
        mean = jnp.tanh(MLP(self.hidden_dims, self.action_dim)(obs))
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, jnp.broadcast_to(jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX), mean.shape)


class TanhGaussianActor(nn.Module):
    """Gaussian with state-dependent mean and log-std, squashed by tanh (SAC's policy).

    Returns (mean, log_std) of the pre-tanh Gaussian; use `sample_tanh_gaussian`
    to draw actions and their log-probabilities, `jnp.tanh(mean)` for the mode.
    """

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs):
        out = MLP(self.hidden_dims, 2 * self.action_dim)(obs)
        mean, log_std = jnp.split(out, 2, axis=-1)
        # Squash log_std smoothly into its range: hard clipping would zero its gradient.
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(log_std) + 1)
        return mean, log_std


def gaussian_log_prob(mean, log_std, x):
    """Log-density of a diagonal Gaussian, summed over the last axis."""
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def tanh_log_det(u):
    """log|d tanh(u)/du| = log(1 - tanh(u)^2), summed over the last axis, in a numerically stable form."""
    return jnp.sum(2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)


def sample_tanh_gaussian(mean, log_std, key):
    """Reparameterised sample a = tanh(u), u ~ N(mean, std), with log pi(a|s)."""
    u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    return jnp.tanh(u), gaussian_log_prob(mean, log_std, u) - tanh_log_det(u)


def tanh_gaussian_log_prob(mean, log_std, action, bound=1 - 1e-6):
    """log pi(a|s) of a given action, e.g. the dataset's. Actions are clipped just inside (-1, 1), where atanh
    is finite: data recorded at the bounds would otherwise score -inf."""
    u = jnp.arctanh(jnp.clip(action, -bound, bound))
    return gaussian_log_prob(mean, log_std, u) - tanh_log_det(u)
