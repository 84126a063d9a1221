"""Run a policy in the real environment for a batch of seeded episodes."""

import gymnasium as gym
import numpy as np


def run_episodes(policy, env_id: str, num_episodes: int, seed: int, repeat: int = 1) -> np.ndarray:
    """Return the undiscounted returns of `repeat` groups of `num_episodes` episodes, flat: (repeat * num_episodes,).

    `policy(obs_batch) -> action_batch` acts on all episodes at once: one batched forward
    pass per step, always of the same shape (finished episodes keep their last observation),
    so a jitted policy compiles once. Episode j of every group is reset with seed `seed + j`, so
    the same seed always gives the same start states, and `repeat` > 1 evaluates several policies
    (the caller routes each group's rows to its own policy) from the same start states.
    `env_id` may be an id or a gymnasium EnvSpec.
    """
    envs = [gym.make(env_id) for _ in range(repeat * num_episodes)]
    obs = np.stack([env.reset(seed=seed + i % num_episodes)[0] for i, env in enumerate(envs)])
    returns = np.zeros(len(envs))
    alive = np.ones(len(envs), dtype=bool)
    while alive.any():
        actions = np.asarray(policy(obs.astype(np.float32)))
        for i in np.flatnonzero(alive):
            obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
            returns[i] += reward
            alive[i] = not (terminated or truncated)
    for env in envs:
        env.close()
    return returns

