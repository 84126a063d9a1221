"""Pick the expert and medium behaviour policies from a `train_behavior` run and measure them.

    python -m benchmarks.select_behavior --env hopper

Every figure here is a mean over `--episodes` episodes (100; episode i reset with seed 20000 + i)
with actions *sampled* from the policy, as they are when the datasets are collected.
  random  uniformly random actions: the reference minimum (normalized score 0);
  expert  of the best checkpoints by training-time evaluation, the one with the highest
          return: the reference maximum (normalized score 100);
  medium  the checkpoint of the same run whose score is closest to `--medium-target`
          (D4RL's medium is about a third of expert; we accept 30 to 60).
Writes benchmarks/behavior/<env>/{expert,medium}.msgpack, behavior/<env>/selection.json,
the environment's entry in common/reference_scores.json and the table in behavior/README.md.
"""

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import flax.serialization
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import tyro

from benchmarks.speed import machine
from benchmarks.train_behavior import BEHAVIOR_DIR
from common.datasets import ENVS, REFERENCE_SCORES
from common.evaluation import run_episodes
from common.networks import TanhGaussianActor, sample_tanh_gaussian

EXPERT_FLOORS = {"hopper": 3000, "halfcheetah": 9000, "walker2d": 4000}
# Not common/evaluation.py's EVAL_SEED: the candidates were picked by train_behavior.py's evaluations on
# EVAL_SEED + i, so they are measured here on other episodes, which the picking cannot have favoured.
MEASURE_SEED = 20_000


@dataclass
class Args:
    env: str = "hopper"
    episodes: int = 100
    expert_candidates: int = 5
    """how many of the best checkpoints (by the 10-episode training-time evaluation) to measure"""
    medium_target: float = 45.0
    """normalized score the medium policy should be closest to"""
    behavior_dir: Path = BEHAVIOR_DIR
    """where train_behavior wrote <env>/history.csv and <env>/checkpoints/"""
    references: Path = REFERENCE_SCORES
    """the reference-score file to update"""


def measure(policy, env_id: str, episodes: int) -> np.ndarray:
    return run_episodes(policy, env_id, episodes, MEASURE_SEED)


def sampling_policy(actor, params, seed: int = 0):
    """obs batch -> actions sampled from the tanh-Gaussian, with a fresh key each call."""
    sample = jax.jit(lambda obs, key: sample_tanh_gaussian(*actor.apply(params, obs), key)[0])
    key = [jax.random.PRNGKey(seed)]

    def policy(obs):
        key[0], k = jax.random.split(key[0])
        return sample(obs, k)

    return policy


def main(args: Args):
    env_id, run_dir = ENVS[args.env], args.behavior_dir / args.env
    env = gym.make(env_id)
    action_dim, obs_dim = env.action_space.shape[0], env.observation_space.shape[0]
    actor = TanhGaussianActor(action_dim)
    template = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, obs_dim)))
    load = lambda step: flax.serialization.from_bytes(  # noqa: E731
        template, (run_dir / "checkpoints" / f"actor_{step:07d}.msgpack").read_bytes())
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    history = [(int(r["step"]), float(r["eval_return_mean"])) for r in rows]
    wall_time = int(rows[-1]["wall_time"])

    rng = np.random.default_rng(0)
    random_returns = measure(lambda o: rng.uniform(-1, 1, (len(o), action_dim)), env_id, args.episodes)
    print(f"random: {random_returns.mean():.1f} ± {random_returns.std():.1f}")

    measured = {}
    for step, _ in sorted(history, key=lambda h: -h[1])[: args.expert_candidates]:
        measured[step] = measure(sampling_policy(actor, load(step)), env_id, args.episodes)
        print(f"step {step}: {measured[step].mean():.1f} ± {measured[step].std():.1f}")
    expert_step = max(measured, key=lambda s: measured[s].mean())
    expert_returns = measured[expert_step]
    score = lambda r: 100 * (r - random_returns.mean()) / (expert_returns.mean() - random_returns.mean())  # noqa: E731

    # Medium: walk the run's checkpoints from the one whose training-time return is nearest the target.
    target = random_returns.mean() + args.medium_target / 100 * (expert_returns.mean() - random_returns.mean())
    medium_step = None
    for step, _ in sorted((h for h in history if h[0] < expert_step), key=lambda h: abs(h[1] - target))[:8]:
        returns = measure(sampling_policy(actor, load(step)), env_id, args.episodes)
        print(f"medium candidate step {step}: {returns.mean():.1f} (normalized {score(returns.mean()):.1f})")
        if 30 <= score(returns.mean()) <= 60:
            medium_step, medium_returns = step, returns
            break
    if medium_step is None:
        raise SystemExit("no checkpoint scores between 30 and 60: save checkpoints more often and run again")

    # For reference only (the data are collected with sampled actions): the same policies acting on their mean.
    deterministic = {name: measure(jax.jit(lambda o, p=load(step): jnp.tanh(actor.apply(p, o)[0])), env_id,
                                   args.episodes)
                     for name, step in (("expert", expert_step), ("medium", medium_step))}
    shutil.copy(run_dir / "checkpoints" / f"actor_{expert_step:07d}.msgpack", run_dir / "expert.msgpack")
    shutil.copy(run_dir / "checkpoints" / f"actor_{medium_step:07d}.msgpack", run_dir / "medium.msgpack")
    summary = lambda r: {"mean": round(float(r.mean()), 1), "std": round(float(r.std()), 1)}  # noqa: E731
    selection = {
        "env_id": env_id, "episodes": args.episodes, "episode_seeds": f"{MEASURE_SEED} + i", "actions": "sampled",
        "random": summary(random_returns),
        "expert": {"step": expert_step, **summary(expert_returns), "floor": EXPERT_FLOORS[args.env],
                   "deterministic": summary(deterministic["expert"])},
        "medium": {"step": medium_step, **summary(medium_returns),
                   "normalized": round(float(score(medium_returns.mean())), 1),
                   "deterministic": summary(deterministic["medium"])},
        "training": {"steps": history[-1][0], "wall_time_s": wall_time, "machine": machine()},
    }
    (run_dir / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    refs = json.loads(args.references.read_text()) if args.references.exists() else {}
    refs[env_id] = {"random": selection["random"]["mean"], "expert": selection["expert"]["mean"],
                    "source": f"benchmarks/behavior/{args.env}/selection.json"}
    args.references.write_text(json.dumps(refs, indent=2, sort_keys=True) + "\n")
    write_table(args.behavior_dir)
    print(json.dumps(selection, indent=2))
    if expert_returns.mean() < EXPERT_FLOORS[args.env]:
        print(f"WARNING: expert return {expert_returns.mean():.0f} is below the floor {EXPERT_FLOORS[args.env]}")


def write_table(behavior_dir: Path):
    rows = []
    for env in ENVS:
        path = behavior_dir / env / "selection.json"
        if path.exists():
            s = json.loads(path.read_text())
            e, m, t = s["expert"], s["medium"], s["training"]
            rows.append(f"| {s['env_id']} | {s['random']['mean']:.1f} ± {s['random']['std']:.1f} | "
                        f"{m['mean']:.1f} ± {m['std']:.1f} (step {m['step']}, normalized {m['normalized']:.1f}; "
                        f"mean action {m['deterministic']['mean']:.1f}) | {e['mean']:.1f} ± {e['std']:.1f} "
                        f"(step {e['step']}; mean action {e['deterministic']['mean']:.1f}) | {e['floor']} | "
                        f"{t['steps']} steps, {t['wall_time_s'] / 3600:.1f} h on {t['machine']} |")
    (behavior_dir / "README.md").write_text(
        "# Behaviour policies\n\nSAC actors trained with `python -m benchmarks.train_behavior --env ENV` and chosen "
        "with `python -m benchmarks.select_behavior --env ENV`, which also measured this table:\n"
        "undiscounted return, mean ± std over 100 episodes (seeds 20000 + i), actions sampled from the policy\n"
        "(\"mean action\": the same policy acting deterministically, for reference only).\n\n"
        "| environment | random | medium | expert | expert floor | training |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main(tyro.cli(Args))
