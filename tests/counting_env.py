"""A tiny deterministic environment whose observations count steps, so data alignment can be checked exactly."""

import gymnasium as gym
import numpy as np


class CountingEnv(gym.Env):
    """obs = [t, 10 * episode_seed], reward = t + 1. Even seeds terminate after 3 steps; odd seeds never
    terminate and are cut by the 5-step time limit (a truncation, which must not become a terminal)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.tag = 0, seed or 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.tag % 2 == 0 and self.t == 3, False, {}

    def _obs(self):
        return np.array([self.t, 10 * self.tag], np.float64)


gym.register("tests/Counting-v0", entry_point="tests.counting_env:CountingEnv", max_episode_steps=5)
