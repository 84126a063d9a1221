"""Run a policy in the real environment and turn returns into D4RL-style normalized scores."""

import gymnasium as gym
import numpy as np


def run_episodes(policy, env_id: str, num_episodes: int, seed: int) -> np.ndarray:
    """Return the undiscounted return of `num_episodes` episodes.

    `policy(obs_batch) -> action_batch` acts on all unfinished episodes at once (one
    batched forward pass per step instead of one per episode). Episode i is reset with
    seed `seed + i`, so the same seed always gives the same start states.
    """
    envs = [gym.make(env_id) for _ in range(num_episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    returns = np.zeros(num_episodes)
    alive = np.ones(num_episodes, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        actions = np.asarray(policy(obs[idx].astype(np.float32)))
        for i, action in zip(idx, actions):
            obs[i], reward, terminated, truncated, _ = envs[i].step(action)
            returns[i] += reward
            alive[i] = not (terminated or truncated)
    for env in envs:
        env.close()
    return returns


def normalized_score(episode_return, ref_min_score: float, ref_max_score: float):
    """100 * (return - random) / (expert - random): 0 is the random policy, 100 the expert."""
    return 100.0 * (np.asarray(episode_return) - ref_min_score) / (ref_max_score - ref_min_score)
