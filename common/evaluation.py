"""Run a policy in the real environment for a batch of seeded episodes."""

import gymnasium as gym
import jax
import numpy as np
from gymnasium.wrappers import RescaleAction

from common.datasets import normalized_score
from common.video import make_recording_env

EVAL_SEED = 10_000  # evaluation episode i starts from reset(seed=10000 + i), in every script and every run


def make_env(env_id, rescale_actions: bool = True, record: bool = False) -> gym.Env:
    """The environment, taking actions in [-1, 1] (every policy's tanh range) and mapping them onto its own Box
    bounds, as the loader mapped the data's actions the other way. Already [-1, 1]: left as it is, bit for bit.
    `rescale_actions=False` passes actions through (checkpoints from before the loader scaled them).
    `record=True` renders its episodes (common/video.py)."""
    env = make_recording_env(env_id) if record else gym.make(env_id)
    space = env.action_space
    if rescale_actions and not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        env = RescaleAction(env, space.dtype.type(-1), space.dtype.type(1))
    return env


def run_episodes(policy, env_id, num_episodes: int, seed: int, repeat: int = 1,
                 rescale_actions: bool = True, videos: list | None = None) -> np.ndarray:
    """Return the undiscounted returns of `repeat` groups of `num_episodes` episodes, flat: (repeat * num_episodes,).

    `policy(obs_batch) -> action_batch` acts on all episodes at once, in [-1, 1] (`make_env`): one batched
    forward pass per step, always of the same shape (finished episodes keep their last observation),
    so a jitted policy compiles once. Episode j of every group is reset with seed `seed + j`, so
    the same seed always gives the same start states, and `repeat` > 1 evaluates several policies
    (the caller routes each group's rows to its own policy) from the same start states.
    `env_id` may be an id or a gymnasium EnvSpec. With `videos` a list, the first episode of each group is rendered
    and one `Video` per group is appended to it.
    """
    envs = [make_env(env_id, rescale_actions, record=videos is not None and i % num_episodes == 0)
            for i in range(repeat * num_episodes)]
    obs = np.stack([env.reset(seed=seed + i % num_episodes)[0] for i, env in enumerate(envs)])
    returns = np.zeros(len(envs))
    alive = np.ones(len(envs), dtype=bool)
    while alive.any():
        actions = np.asarray(policy(obs.astype(np.float32)))
        for i in np.flatnonzero(alive):
            obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
            returns[i] += reward
            alive[i] = not (terminated or truncated)
    if videos is not None:
        videos.extend(env.get_wrapper_attr("video")() for env in envs[::num_episodes])
    for env in envs:
        env.close()
    return returns


def make_evaluator(policy, env_spec, ref_scores: tuple, num_seeds: int, num_episodes: int,
                   rescale_actions: bool = True):
    """evaluate(state, record=False) -> (returns of shape (seeds, episodes), each seed's normalized score, each
    seed's `Video` of its first episode if `record` else None): all episodes step together, in `env_spec`'s
    environment with `policy(state, obs)`'s [-1, 1] mapped onto its action bounds.
    With num_seeds > 1, `state` holds that many stacked states (seeds, and any swept values: `run_labels`) and the
    policy is vmapped over them."""
    batched_policy = jax.jit(jax.vmap(policy)) if num_seeds > 1 else policy

    def evaluate(state, record: bool = False):
        def act(obs):  # (seeds x episodes, obs_dim) -> one forward pass of every seed's policy
            if num_seeds == 1:
                return batched_policy(state, obs)
            return batched_policy(state, obs.reshape(num_seeds, num_episodes, -1)).reshape(len(obs), -1)
        videos = [] if record else None
        returns = run_episodes(act, env_spec, num_episodes, EVAL_SEED, repeat=num_seeds,
                               rescale_actions=rescale_actions, videos=videos)
        returns = returns.reshape(num_seeds, num_episodes)
        return returns, [normalized_score(r.mean(), *ref_scores) for r in returns], videos
    return evaluate
