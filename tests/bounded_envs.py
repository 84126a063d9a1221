"""Environments whose actions are not in [-1, 1], and tiny Minari datasets of any environment.

Pendulum-v1 takes a torque in [-2, 2]; tests/UnitPendulum-v0 is the same pendulum taking it in [-1, 1] (doubled
inside), so its data is Pendulum's with the actions pre-scaled. tests/Echo-v0 pays the action it receives, which
shows what reached the environment; tests/Unbounded-v0 has no action bounds.
"""

import gymnasium as gym
import minari
import numpy as np
import pytest
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class UnitPendulum(PendulumEnv):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def step(self, action):
        return super().step(2 * np.asarray(action))  # exact: the same torque Pendulum-v1 gets from RescaleAction


class EchoEnv(gym.Env):
    """obs = [t]; reward = the first action component the environment receives; 5 steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def __init__(self, bound: float = 2.0):
        self.action_space = gym.spaces.Box(-bound, bound, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), float(action[0]), False, False, {}


gym.register("tests/UnitPendulum-v0", entry_point="tests.bounded_envs:UnitPendulum", max_episode_steps=200)
gym.register("tests/Echo-v0", entry_point="tests.bounded_envs:EchoEnv", max_episode_steps=5)
gym.register("tests/Unbounded-v0", entry_point="tests.bounded_envs:EchoEnv", max_episode_steps=5,
             kwargs={"bound": np.inf})


def make_dataset(dataset_id: str, env_id: str, action, episodes: int = 3, refs=None):
    """A Minari dataset of `episodes` whole episodes of `env_id` (reset seeds 0, 1, ...), acting
    `action(rng) -> action` with one generator for all of them, so the same call gives the same actions."""
    rng = np.random.default_rng(0)
    collector = minari.DataCollector(gym.make(env_id), record_infos=False)
    for seed in range(episodes):
        collector.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, _ = collector.step(action(rng))
            done = terminated or truncated
    kwargs = {"ref_min_score": refs[0], "ref_max_score": refs[1]} if refs else {}
    with pytest.warns(UserWarning):  # Minari asks for an e-mail address and a code link
        collector.create_dataset(dataset_id, author="tests", description=f"{env_id} for the action-bounds tests",
                                 **kwargs)


def pendulum_torque(scale: float):
    """Torques on a grid of quarters of the range, times `scale`: exact in float32 at either scale."""
    return lambda rng: np.array([scale * rng.integers(-4, 5) / 4], np.float32)
