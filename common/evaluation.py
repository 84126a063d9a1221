"""Run a policy in the real environment for a batch of seeded episodes."""

import multiprocessing
import os
import signal
from functools import partial

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
                 rescale_actions: bool = True, videos: list | None = None, workers=None) -> np.ndarray:
    """Return the undiscounted returns of `repeat` groups of `num_episodes` episodes, flat: (repeat * num_episodes,).

    `policy(obs_batch) -> action_batch` acts on all episodes at once, in [-1, 1] (`make_env`): one batched
    forward pass per step, always of the same shape (finished episodes keep their last observation),
    so a jitted policy compiles once. Episode j of every group is reset with seed `seed + j`, so
    the same seed always gives the same start states, and `repeat` > 1 evaluates several policies
    (the caller routes each group's rows to its own policy) from the same start states.
    `env_id` may be an id or a gymnasium EnvSpec. With `videos` a list, the first episode of each group is rendered
    and one `Video` per group is appended to it. `workers` (an `EnvWorkers`) steps the environments in other
    processes, with the same returns to the bit; recorded episodes always run here, where they are rendered.
    """
    seeds = [seed + i % num_episodes for i in range(repeat * num_episodes)]
    here = workers is None or videos is not None
    if here:
        envs = [make_env(env_id, rescale_actions, record=videos is not None and i % num_episodes == 0)
                for i in range(len(seeds))]
        obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
        step = partial(step_envs, envs)
    else:
        obs, step = workers.reset(env_id, rescale_actions, seeds), workers.step
    returns = np.zeros(len(seeds))
    alive = np.ones(len(seeds), dtype=bool)
    while alive.any():
        next_obs, reward, done = step(np.asarray(policy(obs.astype(np.float32))), alive)
        obs[alive], returns[alive] = next_obs[alive], returns[alive] + reward[alive]
        alive &= ~done
    if here:
        if videos is not None:
            videos.extend(env.get_wrapper_attr("video")() for env in envs[::num_episodes])
        for env in envs:
            env.close()
    return returns


def step_envs(envs, actions, alive):
    """Step the environments still `alive`: (observations, rewards, done); rows of finished ones are left at 0."""
    obs = np.zeros((len(envs), *envs[0].observation_space.shape))
    reward, done = np.zeros(len(envs)), np.zeros(len(envs), dtype=bool)
    for i in np.flatnonzero(alive):
        obs[i], reward[i], terminated, truncated, _ = envs[i].step(actions[i])
        done[i] = terminated or truncated
    return obs, reward, done


def default_workers(num_envs: int) -> int:
    """Processes for `num_envs` evaluation episodes: one per 16, at most one per core this process may use (training
    waits while it evaluates). A round trip to a worker costs about 130 µs a step, three MuJoCo steps (about 40 µs
    each, on a 2-core Xeon), so a share of 16 keeps that overhead to about a fifth; 150 episodes on that Xeon's two
    cores take 1.7x less time with 2 workers than in one process (benchmarks/eval_workers.md)."""
    return max(1, min(num_envs // 16, len(os.sched_getaffinity(0))))


class EnvWorkers:
    """Processes that each hold a contiguous share of an evaluation's environments and step them on request.

    Started once and kept for every evaluation of a run, since a new process first imports gymnasium and MuJoCo.
    They ignore Ctrl-C, which is the training loop's to handle, and end with this process (or on `close`).
    """

    def __init__(self, count: int):
        # Spawned, never forked from a process running JAX's threads. A spawned process imports the running script
        # (not running its `if __name__ == "__main__":` block), which is why they are started once per run.
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        platforms = os.environ.get("JAX_PLATFORMS")
        os.environ["JAX_PLATFORMS"] = "cpu"  # what they inherit: a worker only steps MuJoCo, and claims no GPU
        try:
            for _ in range(count):
                ours, theirs = context.Pipe()
                process = context.Process(target=_serve_envs, args=(theirs,), daemon=True)
                process.start()
                theirs.close()
                self.pipes.append(ours)
                self.processes.append(process)
        finally:
            if platforms is None:
                del os.environ["JAX_PLATFORMS"]
            else:
                os.environ["JAX_PLATFORMS"] = platforms
        self.shares = []

    def reset(self, env_id, rescale_actions: bool, seeds: list[int]) -> np.ndarray:
        spec = env_id.to_json() if isinstance(env_id, gym.envs.registration.EnvSpec) else env_id
        shares = np.array_split(np.arange(len(seeds)), len(self.pipes))
        self.shares = [share for share in shares if len(share)]
        for pipe, share in zip(self.pipes, self.shares):
            pipe.send(("reset", (spec, rescale_actions, [seeds[i] for i in share])))
        return np.concatenate(self.receive())

    def step(self, actions, alive):
        for pipe, share in zip(self.pipes, self.shares):
            pipe.send(("step", (actions[share], alive[share])))
        obs, reward, done = zip(*self.receive())
        return np.concatenate(obs), np.concatenate(reward), np.concatenate(done)

    def receive(self) -> list:
        try:
            return [pipe.recv() for pipe in self.pipes[:len(self.shares)]]
        except (EOFError, OSError) as e:
            raise RuntimeError("an evaluation worker process ended (its error, if any, is printed above); "
                               "--eval-workers 1 steps the episodes in this process") from e

    def close(self):
        for pipe in self.pipes:
            pipe.close()  # a worker's next receive fails, and it ends
        for process in self.processes:
            process.join(timeout=10)
        self.pipes, self.processes = [], []


def _serve_envs(pipe):
    """A worker's loop: `reset` makes (or reuses) its environments and returns their first observations, `step`
    steps those still alive."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    envs, made_for = [], None
    try:
        while True:
            request, payload = pipe.recv()
            if request == "reset":
                spec, rescale_actions, seeds = payload
                if made_for != (spec, rescale_actions) or len(envs) != len(seeds):
                    for env in envs:
                        env.close()
                    env_id = gym.envs.registration.EnvSpec.from_json(spec) if spec.startswith("{") else spec
                    envs, made_for = [make_env(env_id, rescale_actions) for _ in seeds], (spec, rescale_actions)
                pipe.send(np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)]))
            else:
                pipe.send(step_envs(envs, *payload))
    except (EOFError, OSError):  # the main process closed its end, or ended
        for env in envs:
            env.close()


def make_evaluator(policy, env_spec, ref_scores: tuple, num_seeds: int, num_episodes: int,
                   rescale_actions: bool = True, workers: int | None = None):
    """evaluate(state, record=False) -> (returns of shape (seeds, episodes), each seed's normalized score, each
    seed's `Video` of its first episode if `record` else None): all episodes step together, in `env_spec`'s
    environment with `policy(state, obs)`'s [-1, 1] mapped onto its action bounds.
    With num_seeds > 1, `state` holds that many stacked states (seeds, and any swept values: `run_labels`) and the
    policy is vmapped over them. `workers` processes step the episodes (None: `default_workers`; 1: this process),
    started at the first evaluation that needs them."""
    batched_policy = jax.jit(jax.vmap(policy)) if num_seeds > 1 else policy
    count = default_workers(num_seeds * num_episodes) if workers is None else workers
    pool = []  # the EnvWorkers, once started

    def evaluate(state, record: bool = False):
        def act(obs):  # (seeds x episodes, obs_dim) -> one forward pass of every seed's policy
            if num_seeds == 1:
                return batched_policy(state, obs)
            return batched_policy(state, obs.reshape(num_seeds, num_episodes, -1)).reshape(len(obs), -1)
        videos = [] if record else None
        if count > 1 and not record and not pool:
            pool.append(EnvWorkers(count))
        returns = run_episodes(act, env_spec, num_episodes, EVAL_SEED, repeat=num_seeds,
                               rescale_actions=rescale_actions, videos=videos, workers=pool[0] if pool else None)
        returns = returns.reshape(num_seeds, num_episodes)
        return returns, [normalized_score(r.mean(), *ref_scores) for r in returns], videos

    def close():  # the workers also end with this process
        while pool:
            pool.pop().close()
    evaluate.close = close
    return evaluate
