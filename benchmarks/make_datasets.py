"""Build the project's stand-in datasets, D4RL-style, in Minari's format, with Minari's own DataCollector.

    python -m benchmarks.make_datasets hopper-medium                   # 1M steps, about 10 minutes
    python -m benchmarks.make_datasets hopper-random --num-steps 10000
    python -m benchmarks.make_datasets --summary                       # writes benchmarks/datasets.md

  random         uniformly random actions in [-1, 1] (D4RL used a randomly initialised policy instead)
  medium/expert  actions sampled from the committed SAC behaviour policies in benchmarks/behavior/<env>/
  medium-expert  the medium and expert datasets, combined (twice the steps, as in D4RL)

Data lands in the local Minari store under the offrl-standin/ namespace. Episode i starts from
reset(seed=seed + i) and the policy's noise comes from one key, so the same seed rebuilds the same data on
the same kind of machine. On another CPU the policy's arithmetic can differ in the last bits and the
trajectories drift apart: a rebuild keeps the episode count and the statistics, not the bits.
"""

import json
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import flax.serialization
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import tyro
from tqdm import tqdm

from benchmarks.train_behavior import BEHAVIOR_DIR
from common.datasets import (CACHE_FILE, ENVS, REFERENCE_SCORES, STANDIN_NAMESPACE, DatasetError, load_dataset,
                             resolve_name)
from common.networks import TanhGaussianActor, sample_tanh_gaussian

SUMMARY = Path(__file__).parent / "datasets.md"


def load_behavior_policy(env: str, quality: str):
    """The committed actor as a function (obs, key) -> sampled action, or None for `random`."""
    if quality == "random":
        return None
    actor, params = load_behavior_actor(env, quality)
    return jax.jit(lambda obs, key: sample_tanh_gaussian(*actor.apply(params, obs), key)[0])


def load_behavior_actor(env: str, quality: str):
    """The committed tanh-Gaussian actor of `env` ("expert" or "medium") and its parameters."""
    path = BEHAVIOR_DIR / env / f"{quality}.msgpack"
    if not path.exists():
        raise DatasetError(f"No behaviour policy at {path}: train one with `python -m benchmarks.train_behavior "
                           f"--env {env}` and pick checkpoints with "
                           f"`python -m benchmarks.select_behavior --env {env}`.")
    spec = gym.spec(ENVS[env])
    obs_dim, action_dim = _dims(spec)
    actor = TanhGaussianActor(action_dim)
    params = flax.serialization.from_bytes(actor.init(jax.random.PRNGKey(0), jnp.zeros((1, obs_dim))),
                                           path.read_bytes())
    return actor, params


def _dims(spec):
    env = gym.make(spec)
    dims = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return dims


def build_dataset(dataset_id: str, num_steps: int = 1_000_000, seed: int = 0, force: bool = False):
    """Collect `num_steps` transitions into the local Minari store as `dataset_id`
    (offrl-standin/<env>/<quality>-v0)."""
    import minari
    from minari.storage import get_dataset_path

    _, env, quality_v = dataset_id.split("/")
    quality = quality_v.rsplit("-v", 1)[0]
    path = get_dataset_path(dataset_id)
    if path.exists():
        if not force:
            print(f"[data] {dataset_id} already exists at {path}; pass --force to rebuild it")
            return
        shutil.rmtree(path)
    refs = json.loads(REFERENCE_SCORES.read_text()).get(ENVS[env]) if REFERENCE_SCORES.exists() else None
    if refs is None:
        raise DatasetError(f"No reference scores for {ENVS[env]} in {REFERENCE_SCORES}: run "
                           f"`python -m benchmarks.select_behavior --env {env}` first.")
    metadata = dict(
        author="offline-rl-jax contributors (stand-in data, not the official Minari/D4RL datasets)",
        algorithm_name=f"SAC behaviour policy ({quality})" if quality != "random" else "uniform random actions",
        code_permalink="benchmarks/make_datasets.py in this repository",
        ref_min_score=refs["random"],
        ref_max_score=refs["expert"],
        description=(f"Stand-in for D4RL's {env}-{quality}, made by this project. "
                     + DESCRIPTIONS[quality].format(env=env, env_id=ENVS[env], seed=seed, num_steps=num_steps)
                     + " Reference scores: mean return over 100 episodes of uniformly random actions (ref_min) "
                     "and of the expert SAC policy sampling its actions (ref_max)."),
    )
    try:
        if quality == "medium-expert":
            parts = []
            for q in ("medium", "expert"):
                part_id = f"{STANDIN_NAMESPACE}/{env}/{q}-v0"
                build_dataset(part_id, num_steps, seed)
                parts.append(minari.load_dataset(part_id))
            dataset = minari.combine_datasets(parts, dataset_id)
            dataset.storage.update_metadata({k: v for k, v in metadata.items()})
        else:
            _collect(dataset_id, env, quality, num_steps, seed, metadata)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # never leave a half-written dataset behind
        raise
    print(f"[data] built {dataset_id} at {path}")
    load_dataset(dataset_id)  # reads it back once, checking it and writing the flat-array cache that later loads use


DESCRIPTIONS = {
    "random": "{num_steps} steps of {env_id} with actions drawn uniformly from [-1, 1]; episode i is reset "
              "with seed {seed} + i.",
    "medium": "{num_steps} steps of {env_id} with actions sampled from a SAC policy stopped at about a third of "
              "expert performance (benchmarks/behavior/{env}/medium.msgpack); episode i is reset with seed {seed} + i.",
    "expert": "{num_steps} steps of {env_id} with actions sampled from a fully trained SAC policy "
              "(benchmarks/behavior/{env}/expert.msgpack); episode i is reset with seed {seed} + i.",
    "medium-expert": "The {env}-medium and {env}-expert stand-ins ({num_steps} steps each, seed {seed}), combined.",
}


def _collect(dataset_id, env, quality, num_steps, seed, metadata):
    import minari

    policy = load_behavior_policy(env, quality)
    collector = minari.DataCollector(gym.make(ENVS[env]), record_infos=False)
    rng, key = np.random.default_rng(seed), jax.random.PRNGKey(seed)
    obs, _ = collector.reset(seed=seed)
    episode = 0
    for _ in tqdm(range(num_steps), desc=dataset_id, mininterval=2.0):
        if policy is None:
            action = rng.uniform(-1.0, 1.0, collector.action_space.shape).astype(np.float32)
        else:
            key, k = jax.random.split(key)
            action = np.asarray(policy(obs.astype(np.float32), k))
        obs, _, terminated, truncated, _ = collector.step(action)
        if terminated or truncated:
            episode += 1
            obs, _ = collector.reset(seed=seed + episode)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*author_email.*")  # the stand-ins have no contact address
        collector.create_dataset(dataset_id=dataset_id, eval_env=ENVS[env], **metadata)
    collector.close()


def measure_load(dataset_id: str) -> dict:
    """Load one dataset in a fresh process: seconds, peak RSS and the figures of the summary table."""
    code = ("import json, resource, time; from common.datasets import load_dataset; t = time.perf_counter(); "
            f"d = load_dataset({dataset_id!r}); s = time.perf_counter() - t; r = d.episode_returns; "
            "print(json.dumps({'seconds': s, 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
            "'episodes': len(r), 'steps': len(d.reward), 'mean': float(r.mean()), 'min': float(r.min()), "
            "'max': float(r.max()), 'normalized': float(d.normalized_score(r).mean())}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_summary():
    """Tabulate every stand-in dataset in the local store into benchmarks/datasets.md."""
    import minari
    from minari.storage import get_dataset_path

    from benchmarks.speed import machine

    rows = []
    for dataset_id in sorted(minari.list_local_datasets(prefix=STANDIN_NAMESPACE)):
        # the first load reads every episode and writes this cache; later loads read the cache
        (Path(get_dataset_path(dataset_id)) / CACHE_FILE).unlink(missing_ok=True)
        first, m = measure_load(dataset_id), measure_load(dataset_id)
        rows.append(f"| {dataset_id} | {m['episodes']} | {m['steps']} | {m['mean']:.1f} | {m['min']:.1f} | "
                    f"{m['max']:.1f} | {m['normalized']:.1f} | {first['seconds']:.1f} s, {first['rss_mb']:.0f} MB | "
                    f"{m['seconds']:.1f} s, {m['rss_mb']:.0f} MB |")
    SUMMARY.write_text(
        "# Stand-in datasets\n\nBuilt with `python -m benchmarks.make_datasets NAME` (seed 0, 1M steps unless noted; "
        "medium-expert is medium + expert) and tabulated with `python -m benchmarks.make_datasets --summary`\n"
        f"on {machine()}. Returns are undiscounted episode returns; the normalized score uses the dataset's own "
        "reference scores. The last two columns are `load_dataset` in a fresh process, wall time and peak RSS: the "
        "first load reads every episode and caches flat arrays beside the data; later loads read that cache. "
        "A rebuild on another kind of machine keeps the episode count and these statistics, not the bits "
        "(the policy's arithmetic differs in the last bits there, and the trajectories drift apart).\n\n"
        "| dataset | episodes | steps | mean return | min | max | mean normalized score | first load | later loads |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(SUMMARY.read_text())


@dataclass
class Args:
    names: tyro.conf.Positional[tuple[str, ...]] = ()
    """datasets to build: hopper-medium, walker2d-random, offrl-standin/hopper/expert-v0, ..."""
    num_steps: int = 1_000_000
    """transitions per dataset (medium-expert gets this many from each part)"""
    seed: int = 0
    force: bool = False
    """rebuild a dataset that already exists"""
    summary: bool = False
    """afterwards, tabulate every local stand-in into benchmarks/datasets.md"""


def _interrupt(*_):
    raise KeyboardInterrupt


def main(args: Args):
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up half-built data exactly as Ctrl-C does
    if args.num_steps <= 0:
        raise SystemExit(f"--num-steps must be positive, got {args.num_steps}")
    try:
        for name in args.names:
            standin = resolve_name(name).standin_id
            if standin is None:
                raise DatasetError(f"{name} has no stand-in; stand-ins exist for {', '.join(ENVS)} x "
                                   f"random/medium/expert/medium-expert.")
            build_dataset(standin, args.num_steps, args.seed, args.force)
        if args.summary:
            write_summary()
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit("interrupted: the unfinished dataset was removed; datasets already built are kept")


if __name__ == "__main__":
    main(tyro.cli(Args))
