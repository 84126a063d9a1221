"""What does perfect imitation of a stand-in dataset score? Three ways to act with its behaviour policy.

    python -m benchmarks.behavior_mean --env hopper

A deterministic policy fitted to the data by squared error (or by a Gaussian's log-likelihood with a
state-independent std, as IQL's and AWR's actors are) converges to the data's *average* action at each
state, E[a|s]. For a tanh-Gaussian behaviour policy that average is not its mode tanh(mean): the noise
is squashed before it is averaged. This script measures, on the training runs' evaluation seeds
(10000 + i), the behaviour policy acting three ways:
  sampled          as the dataset was collected;
  mode             tanh(mean), its own deterministic action;
  average action   E[a|s], estimated from --samples draws at every step: what cloning converges to.
An offline method whose policy stays at the data's average action scores like the last row.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import tyro

from benchmarks.make_datasets import load_behavior_actor
from benchmarks.select_behavior import sampling_policy
from common.datasets import ENVS, DatasetError, reference_scores
from common.evaluation import run_episodes
from common.evaluation import EVAL_SEED


@dataclass
class Args:
    env: str = "hopper"
    policy: str = "medium"
    """which behaviour policy: medium or expert"""
    episodes: int = 100
    samples: int = 512
    """actions drawn per state to estimate the average action"""


def average_action(mean, log_std, key, samples: int):
    """Monte Carlo estimate of E[tanh(u)], u ~ N(mean, exp(log_std)²): the tanh-Gaussian's average action."""
    noise = jax.random.normal(key, (samples, *mean.shape))
    return jnp.tanh(mean + jnp.exp(log_std) * noise).mean(0)


def main(args: Args):
    if args.env not in ENVS:
        raise SystemExit(f"error: unknown environment {args.env}; choose from {list(ENVS)}")
    try:
        actor, params = load_behavior_actor(args.env, args.policy)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    env_id = ENVS[args.env]

    average = jax.jit(lambda obs, key: average_action(*actor.apply(params, obs), key, args.samples))
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 100_000))
    policies = {
        "sampled": sampling_policy(actor, params),
        "mode": jax.jit(lambda obs: jnp.tanh(actor.apply(params, obs)[0])),
        "average action": lambda obs: average(obs, next(keys)),
    }
    low, high, _ = reference_scores({}, env_id)  # this project's random and expert returns
    normalize = lambda r: 100 * (r - low) / (high - low)
    print(f"{env_id}, {args.policy} behaviour policy, {args.episodes} episodes (seeds {EVAL_SEED} + i):")
    for name, policy in policies.items():
        returns = run_episodes(policy, env_id, args.episodes, EVAL_SEED)
        print(f"  {name:15s} return {returns.mean():7.1f} ± {returns.std():6.1f}   normalized {normalize(returns.mean()):5.1f}")


if __name__ == "__main__":
    main(tyro.cli(Args))
