"""How do a saved policy's evaluation episodes end, and how far from the data do its states go?

    python -m benchmarks.diagnose iql runs/hopper-medium__iql__0__1795526497/final.msgpack

Replays the policy's evaluation episodes (the training runs' seeds, 10000 + i) and prints each episode's
return, length and ending (terminated, or cut by the time limit), then compares the states it visits with
the dataset's: for each observation dimension, the share of visited states outside the data's 0.1–99.9
percentile range. A policy that leaves the data's states has left what its critic was trained on.
Last, on the data's own states, how far its actions are from the data's (root mean square per dimension):
a policy that stays close to the data's behaviour stays near the spread of the data's own actions.
A checkpoint of several seeds (--num-seeds) is read seed by seed.
"""

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import flax.serialization
import gymnasium as gym
import jax
import numpy as np
import tyro

from benchmarks.speed import MAKERS
from common.datasets import load_dataset
from common.logger import load_checkpoint
from common.training import EVAL_SEED, init_states


@dataclass
class Args:
    algo: tyro.conf.Positional[str]
    checkpoint: tyro.conf.Positional[Path]
    episodes: int = 10
    hidden_dims: tuple[int, ...] = (256, 256)
    """the networks' sizes, as the run was trained with"""


def episode(policy, env_spec, seed: int):
    env = gym.make(env_spec)
    obs, _ = env.reset(seed=seed)
    states, total, terminated, truncated = [obs], 0.0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, _ = env.step(np.asarray(policy(obs[None].astype(np.float32)))[0])
        states.append(obs)
        total += reward
    return np.array(states), total, "terminated" if terminated else "time limit"


def action_gap(policy, data, num_states: int = 10_000, seed: int = 0) -> float:
    """RMS of policy(s) − a over (s, a) drawn from the data (all of it, if smaller), per action dimension."""
    rows = np.random.default_rng(seed).permutation(len(data.obs))[:num_states]
    return float(np.sqrt(np.mean((np.asarray(policy(data.obs[rows])) - data.action[rows]) ** 2)))


def main(args: Args):
    if args.algo not in MAKERS:
        raise SystemExit(f"error: unknown algorithm {args.algo}; choose from {list(MAKERS)}")
    module = importlib.import_module(args.algo)
    try:
        meta = json.loads(flax.serialization.msgpack_restore(args.checkpoint.read_bytes())["meta"])
    except Exception as e:  # missing, unreadable or not ours: one line, not a traceback
        raise SystemExit(f"error: cannot read a checkpoint at {args.checkpoint} ({type(e).__name__}: {e})") from None
    seeds = meta.get("seeds", [0])
    data = load_dataset(meta["env_id"])
    script_args = module.Args(env_id=meta["env_id"], seed=seeds[0], num_seeds=len(seeds), hidden_dims=args.hidden_dims)
    agent = getattr(module, MAKERS[args.algo])(script_args, data.obs.shape[1], data.action.shape[1])
    try:
        states, _ = load_checkpoint(args.checkpoint, init_states(agent.init, script_args), args.algo)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    low, high = np.percentile(data.obs, [0.1, 99.9], axis=0)

    def outside(x):
        return (x < low) | (x > high)

    print(f"data: {len(data.episode_returns)} episodes; share of its own states outside [0.1, 99.9] is 0.2% "
          f"per dimension by construction")
    for i, seed in enumerate(seeds):
        state = jax.tree.map(lambda x: x[i], states) if len(seeds) > 1 else states  # noqa: B023 (used at once)
        visited = []
        print(f"seed {seed} (update {meta['step']}):")
        for j in range(args.episodes):
            obs, total, ending = episode(lambda o: agent.policy(state, o), data.env_spec, EVAL_SEED + j)  # noqa: B023
            visited.append(obs)
            far = np.flatnonzero(outside(obs[-1]))
            print(f"  episode {j}: return {total:7.1f}, {len(obs) - 1:4d} steps, {ending}; "
                  f"final state outside the data's range in dimensions {far.tolist()}")
        share = outside(np.concatenate(visited)).mean(0)
        top = np.argsort(share)[::-1][:4]
        print("  visited states outside the data's range, by dimension: "
              + ", ".join(f"dim {d}: {100 * share[d]:.1f}%" for d in top))
        gap = action_gap(lambda o: agent.policy(state, o), data)  # noqa: B023 (used at once)
        print(f"  on the data's states, its actions differ from the data's by {gap:.3f} (RMS per dimension; the "
              f"best action that ignores the state: {np.sqrt(data.action.var(0).mean()):.3f})")


if __name__ == "__main__":
    main(tyro.cli(Args))
