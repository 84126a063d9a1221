"""Build the project's stand-in datasets, D4RL-style, in Minari's format.

    python -m benchmarks.make_datasets hopper-medium                   # 1M steps, in parallel on every core
    python -m benchmarks.make_datasets hopper-random --num-steps 10000
    python -m benchmarks.make_datasets hopper-medium-replay            # reruns the SAC training: about an hour
    python -m benchmarks.make_datasets --summary                       # writes benchmarks/datasets.md

  random         uniformly random actions in [-1, 1] (D4RL used a randomly initialised policy instead)
  medium/expert  actions sampled from the committed SAC behaviour policies in benchmarks/behavior/<env>/
  medium-expert  the medium and expert datasets, combined (twice the steps, as in D4RL)
  medium-replay  every transition the behaviour SAC's training run collected until its policy reached medium:
                 the run is redone from its committed config and seed up to the step at which the medium
                 policy was selected (selection.json), and its buffer is stored up to the rerun's first
                 evaluation that matches the committed run's at that step (a rerun can learn faster)

Data lands in the local Minari store under the offrl-standin/ namespace. Episode i starts from
reset(seed=seed + i) and draws its action noise from its own key (seed, i), so episodes are independent:
`--workers` processes collect them side by side and the dataset is the same for any number of workers.
The same seed rebuilds the same data on the same kind of machine. On another CPU the policy's arithmetic
can differ in the last bits and the trajectories drift apart: a rebuild keeps the episode count and the
statistics, not the bits.
"""

import contextlib
import csv
import hashlib
import io
import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

import flax.serialization
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import tyro
from tqdm import tqdm

from benchmarks.speed import machine
from benchmarks.train_behavior import BEHAVIOR_DIR
from common.datasets import (CACHE_FILE, ENVS, QUALITIES, REFERENCE_SCORES, STANDIN_NAMESPACE, DatasetError,
                             load_dataset, resolve_name)
from common.networks import TanhGaussianActor, sample_tanh_gaussian

SUMMARY = Path(__file__).parent / "datasets.md"


def load_behavior_policy(env: str, quality: str, behavior_dir: Path | None = None):
    """The committed actor as a function (obs, key) -> sampled action, or None for `random`."""
    if quality == "random":
        return None
    actor, params = load_behavior_actor(env, quality, behavior_dir)
    return jax.jit(lambda obs, key: sample_tanh_gaussian(*actor.apply(params, obs), key)[0])


def load_behavior_actor(env: str, quality: str, behavior_dir: Path | None = None):
    """The committed tanh-Gaussian actor of `env` ("expert" or "medium") and its parameters."""
    path = (behavior_dir or BEHAVIOR_DIR) / env / f"{quality}.msgpack"
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


def build_dataset(dataset_id: str, num_steps: int = 1_000_000, seed: int = 0, force: bool = False,
                  workers: int | None = None):
    """Collect `num_steps` transitions into the local Minari store as `dataset_id`
    (offrl-standin/<env>/<quality>-v0), with `workers` processes (default: every core)."""
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
        algorithm_name=ALGORITHMS[quality],
        code_permalink="benchmarks/make_datasets.py in this repository",
        ref_min_score=refs["random"],
        ref_max_score=refs["expert"],
        description=(f"Stand-in for D4RL's {env}-{quality}, made by this project. "
                     + DESCRIPTIONS[quality].format(env=env, env_id=ENVS[env], seed=seed, num_steps=num_steps)
                     + " Reference scores: mean return over 100 episodes of uniformly random actions (ref_min) "
                     "and of the expert SAC policy sampling its actions (ref_max)."),
    )
    start, workers = time.perf_counter(), workers or len(os.sched_getaffinity(0))
    method = f"collected by {workers} worker{'s' if workers > 1 else ''}"
    try:
        if quality == "medium-expert":
            parts = []
            for q in ("medium", "expert"):
                part_id = f"{STANDIN_NAMESPACE}/{env}/{q}-v0"
                build_dataset(part_id, num_steps, seed, workers=workers)
                parts.append(minari.load_dataset(part_id))
            start = time.perf_counter()  # its build time is the combining: its parts record their own
            dataset = minari.combine_datasets(parts, dataset_id)
            dataset.storage.update_metadata(metadata | {"author": {metadata["author"]}})  # Minari wants a set here
            method = "combined from its parts (built before)"
        else:
            if quality == "medium-replay":
                episodes, method = medium_replay(env, workers)
            else:
                episodes = collect(env, quality, num_steps, seed, workers)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*author_email.*")  # the stand-ins have no contact address
                dataset = minari.create_dataset_from_buffers(dataset_id, episodes, env=ENVS[env], eval_env=ENVS[env],
                                                             **metadata)
        seconds = time.perf_counter() - start
        dataset.storage.update_metadata({"build_seconds": round(seconds, 1), "build_method": method,
                                         "build_machine": machine()})
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # never leave a half-written dataset behind
        raise
    print(f"[data] built {dataset_id} at {path} in {seconds:.0f} s ({method})")
    with contextlib.redirect_stdout(io.StringIO()):  # read back once, silently: checks it, writes the flat-array cache
        load_dataset(dataset_id)


ALGORITHMS = {"random": "uniform random actions", "medium": "SAC behaviour policy (medium)",
              "expert": "SAC behaviour policy (expert)", "medium-expert": "SAC behaviour policies (medium, expert)",
              "medium-replay": "SAC training run (replay buffer)"}
DESCRIPTIONS = {
    "random": "{num_steps} steps of {env_id} with actions drawn uniformly from [-1, 1]; episode i is reset "
              "with seed {seed} + i.",
    "medium": "{num_steps} steps of {env_id} with actions sampled from a SAC policy stopped at about a third of "
              "expert performance (benchmarks/behavior/{env}/medium.msgpack); episode i is reset with seed {seed} + i.",
    "expert": "{num_steps} steps of {env_id} with actions sampled from a fully trained SAC policy "
              "(benchmarks/behavior/{env}/expert.msgpack); episode i is reset with seed {seed} + i.",
    "medium-expert": "The {env}-medium and {env}-expert stand-ins ({num_steps} steps each, seed {seed}), combined.",
    "medium-replay": "Every transition of the SAC training run of {env_id} (benchmarks/behavior/{env}/config.json), "
                     "rerun from its first step until its policy first evaluated at least as well as the committed "
                     "run's medium policy did (benchmarks/behavior/{env}/selection.json, history.csv), and at most "
                     "to that policy's step: uniformly random actions, then the policy as it learned.",
}


def collect(env: str, quality: str, num_steps: int, seed: int, workers: int) -> list:
    """`num_steps` transitions of whole episodes in order (the last one cut short), collected by `workers`
    processes. Episodes are asked for in blocks sized to what is still missing, so little is collected twice."""
    load_behavior_policy(env, quality)  # a missing policy stops here, before any worker starts
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: JAX must not be forked
    episodes, steps, first = [], 0, 0
    # The workers run the policy on the CPU with one thread each, so their arithmetic does not depend on
    # their number, and sixteen of them on a GPU machine do not each claim the GPU.
    worker_env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                  "intra_op_parallelism_threads=1", "OMP_NUM_THREADS": "1"}
    # concurrent.futures, not multiprocessing.Pool: a worker that dies raises BrokenProcessPool instead of a hang,
    # and leaving with episodes still queued cancels them (Pool.terminate could deadlock there).
    with _environ(worker_env), contextlib.ExitStack() as stack:
        pool = ProcessPoolExecutor(workers, context, _start_worker, (env, quality, seed, BEHAVIOR_DIR))
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        bar = tqdm(total=num_steps, desc=f"{env}-{quality} ({workers} workers)", mininterval=2.0)
        while steps < num_steps:
            mean_length = steps / len(episodes) if episodes else 1000
            block = max(workers, min(20_000, math.ceil(1.05 * (num_steps - steps) / mean_length)))
            for episode in pool.map(_episode, range(first, first + block), chunksize=max(1, block // (8 * workers))):
                episode = _cut(episode, num_steps - steps)
                episodes.append(episode)
                steps += len(episode.rewards)
                bar.update(len(episode.rewards))
                if steps == num_steps:
                    break
            first += block
        bar.close()
    return episodes


_worker = {}


def _start_worker(env: str, quality: str, seed: int, behavior_dir: Path):
    _worker.update(env=gym.make(ENVS[env]), policy=load_behavior_policy(env, quality, behavior_dir), seed=seed)


def _episode(index: int):
    """Episode `index` of a dataset: its own reset seed and its own stream of action noise."""
    from minari.data_collector import EpisodeBuffer

    env, policy, seed = _worker["env"], _worker["policy"], _worker["seed"]
    rng = np.random.default_rng([seed, index])
    key = None if policy is None else jax.random.fold_in(jax.random.PRNGKey(seed), index)  # 2 ms: not per random episode
    obs, _ = env.reset(seed=seed + index)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        if policy is None:
            action = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
        else:
            key, k = jax.random.split(key)
            action = np.asarray(policy(obs.astype(np.float32), k))
        obs, reward, terminated, truncated, _ = env.step(action)
        for values, value in zip((observations, actions, rewards, terminations, truncations),
                                 (obs, action, reward, terminated, truncated)):
            values.append(value)
    return EpisodeBuffer(id=index, seed=seed + index, observations=np.array(observations), actions=np.array(actions),
                         rewards=np.array(rewards), terminations=np.array(terminations),
                         truncations=np.array(truncations))


def _cut(episode, steps: int):
    """The episode's first `steps` steps; a cut episode ends truncated, as a time limit would end it."""
    if steps >= len(episode.rewards):
        return episode
    truncations = episode.truncations[:steps].copy()
    truncations[-1] = True
    return replace(episode, observations=episode.observations[: steps + 1], actions=episode.actions[:steps],
                   rewards=episode.rewards[:steps], terminations=episode.terminations[:steps], truncations=truncations)


@contextlib.contextmanager
def _environ(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


REPLAY_DIR = BEHAVIOR_DIR / "_replay"
RECORDED_ACTIONS = "replay_actions.npz"
STOPPED_RECORDING = "replay_stopped"  # a recording stopped before its end, small enough to commit and go on elsewhere


def medium_replay(env: str, workers: int = 1) -> tuple[list, str]:
    """The medium-replay episodes of `env`, and how they were made: replayed from the committed actions of the
    recording where they exist (seconds), else recorded by rerunning the behaviour training (about an hour),
    which writes those actions for committing."""
    recorded = BEHAVIOR_DIR / env / RECORDED_ACTIONS
    if recorded.exists():
        episodes = replay_actions(env, recorded, workers)
        method = f"replayed from {RECORDED_ACTIONS} by {workers} worker{'s' if workers > 1 else ''}"
    else:
        episodes, method = record_replay(env), "recorded by rerunning the behaviour training"
        save_actions(recorded, episodes)
    end = rerun_reaches_medium(env)
    return first_steps(episodes, end), f"{method}, up to step {end}"


def rerun_reaches_medium(env: str) -> int:
    """Where the medium-replay stand-in ends: the rerun's first evaluation that does at least as well as the
    committed run did at its medium checkpoint, and at the latest that checkpoint's step. D4RL's medium-replay
    is a buffer up to the point where the policy reaches medium; a rerun that learns faster than the committed
    run (hopper's and walker2d's did) is past medium well before the committed run's medium step."""
    committed = BEHAVIOR_DIR / env
    medium_step = json.loads((committed / "selection.json").read_text())["medium"]["step"]
    medium = float(history_row(committed / "history.csv", medium_step)["eval_return_mean"])
    with (committed / "replay_history.csv").open() as f:
        return next((int(row["step"]) for row in csv.DictReader(f)
                     if float(row["eval_return_mean"]) >= medium and int(row["step"]) <= medium_step), medium_step)


def history_row(path: Path, step: int) -> dict:
    """The row of a behaviour run's history.csv (or its rerun's) for the evaluation at `step`."""
    with path.open() as f:
        return next(row for row in csv.DictReader(f) if int(row["step"]) == step)


def first_steps(episodes: list, steps: int) -> list:
    """The episodes that make up the first `steps` transitions, the last one cut short."""
    kept, total = [], 0
    for episode in episodes:
        if total == steps:
            break
        kept.append(_cut(episode, steps - total))
        total += len(kept[-1].rewards)
    return kept


def record_replay(env: str) -> list:
    """Rerun `env`'s behaviour SAC from its committed config up to the medium checkpoint's step, and return
    its replay buffer as episodes. A stopped rerun goes on from where it stopped: here from its local state,
    on another machine from the committed `replay_stopped/` folder that a stop writes."""
    from benchmarks import train_behavior

    committed = BEHAVIOR_DIR / env
    for name in ("config.json", "selection.json"):
        if not (committed / name).exists():
            raise DatasetError(f"No {committed / name}: the medium-replay stand-in reruns the committed behaviour "
                               f"training, so it needs that run's config and selection.")
    config = json.loads((committed / "config.json").read_text())
    stop = json.loads((committed / "selection.json").read_text())["medium"]["step"]
    known = {f.name for f in fields(train_behavior.Args)} - {"out_dir", "stop_at"}
    args = train_behavior.Args(**{k: v for k, v in config.items() if k in known}, out_dir=REPLAY_DIR, stop_at=stop)
    local, stopped = REPLAY_DIR / env, committed / STOPPED_RECORDING
    settings = {k: getattr(args, k) for k in known | {"stop_at"}}
    if (local / "config.json").exists() and {k: json.loads((local / "config.json").read_text()).get(k)
                                             for k in settings} != settings:
        raise DatasetError(f"{local} holds a recording made with other settings; delete it and "
                           f"{REPLAY_DIR / '_resume' / env} to record afresh.")
    if stopped.exists() and not (local / "resume.json").exists():
        restore_stopped_recording(env, stopped)
    print(f"[data] rerunning the behaviour SAC of {env} up to step {stop}, recording its replay buffer in {local}")
    train_behavior.main(args)
    step = json.loads((local / "resume.json").read_text())["step"]
    with np.load(REPLAY_DIR / "_resume" / env / "buffer.npz", allow_pickle=False) as saved:
        episodes = buffer_to_episodes({k: saved[k] for k in saved.files}, args.seed, step)
    if step != stop:
        stopped.mkdir(exist_ok=True)
        save_actions(stopped / "actions.npz", episodes)
        for name in ("resume.msgpack", "resume.json", "history.csv"):
            shutil.copyfile(local / name, stopped / name)
        size = sum(f.stat().st_size for f in stopped.iterdir()) / 2**20
        print(f"[data] the rerun stopped at step {step} of {stop}. Here, the same command goes on from {local}; "
              f"elsewhere, from {stopped} ({size:.1f} MiB; commit it)")
        raise KeyboardInterrupt
    shutil.rmtree(stopped, ignore_errors=True)
    shutil.copyfile(local / "history.csv", committed / "replay_history.csv")
    return episodes


def restore_stopped_recording(env: str, stopped: Path):
    """Put a committed stopped recording where `train_behavior` resumes from: its networks, optimisers and
    random state as saved, and its replay buffer rebuilt by replaying the recorded actions."""
    from benchmarks.train_behavior import ReplayBuffer

    print(f"[data] going on from the stopped recording in {stopped}")
    episodes = replay_actions(env, stopped / "actions.npz")
    local, buffer_file = REPLAY_DIR / env, REPLAY_DIR / "_resume" / env / "buffer.npz"
    local.mkdir(parents=True, exist_ok=True)
    buffer_file.parent.mkdir(parents=True, exist_ok=True)
    for name in ("resume.msgpack", "resume.json", "history.csv"):
        shutil.copyfile(stopped / name, local / name)
    flat = lambda parts: np.concatenate(parts).astype(np.float32)  # noqa: E731
    buffer = {"obs": flat([e.observations[:-1] for e in episodes]), "action": flat([e.actions for e in episodes]),
              "reward": flat([e.rewards for e in episodes]), "next_obs": flat([e.observations[1:] for e in episodes]),
              "terminal": flat([e.terminations for e in episodes]), "truncated": flat([e.truncations for e in episodes])}
    assert set(buffer) == set(ReplayBuffer.FIELDS)
    np.savez(buffer_file, **buffer)


def buffer_to_episodes(data: dict, seed: int, steps: int) -> list:
    """The first `steps` rows of a replay buffer as episodes. Every training episode started from
    reset(seed=seed + its first step); the last one ends where the buffer does."""
    ends = np.flatnonzero((data["terminal"][:steps] > 0) | (data["truncated"][:steps] > 0)).tolist()
    ends = ends if ends and ends[-1] == steps - 1 else [*ends, steps - 1]
    episodes, begin = [], 0
    for i, end in enumerate(ends):
        rows = slice(begin, end + 1)
        observations = np.concatenate([data["obs"][rows], data["next_obs"][end:end + 1]])
        episodes.append(_episode_buffer(i, seed + begin, observations, data["action"][rows], data["reward"][rows],
                                        data["terminal"][end] > 0))
        begin = end + 1
    return episodes


def _episode_buffer(index, seed, observations, actions, rewards, terminal: bool):
    """A recorded episode as Minari takes it: it ends terminated, or else truncated."""
    from minari.data_collector import EpisodeBuffer

    ends = np.zeros(len(rewards), bool)
    ends[-1] = True
    return EpisodeBuffer(id=index, seed=seed, observations=observations, actions=actions, rewards=rewards,
                         terminations=ends & terminal, truncations=ends & (not terminal))


def save_actions(path: Path, episodes: list):
    """A recording in a few MB: its actions, each episode's reset seed, length and end, and a checksum of
    everything the simulator produced from them."""
    np.savez_compressed(path, actions=np.concatenate([e.actions for e in episodes]).astype(np.float32),
                        lengths=np.array([len(e.rewards) for e in episodes]),
                        seeds=np.array([e.seed for e in episodes]),
                        terminal=np.array([bool(e.terminations[-1]) for e in episodes]),
                        checksum=np.array(_checksum(episodes)))
    print(f"[data] wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): commit it, and later builds replay it")


def replay_actions(env: str, path: Path, workers: int = 1) -> list:
    """A recording's episodes, rebuilt by stepping the environment through its saved actions, by `workers`
    processes side by side (each episode starts from its own reset seed, so any number gives the same bits).
    Stops with an error where this machine's simulator does not reproduce the recorded observations bit for bit."""
    with np.load(path, allow_pickle=False) as saved:
        recorded = {k: saved[k] for k in saved.files}
    lengths = recorded["lengths"]
    jobs = [(i, int(seed), bool(terminal), recorded["actions"][begin:begin + length]) for i, (begin, length, seed, terminal)
            in enumerate(zip(np.cumsum(lengths) - lengths, lengths, recorded["seeds"], recorded["terminal"]))]
    if workers == 1:
        episodes = _replay_block(jobs, env)
    else:  # contiguous blocks of about equal steps, so the episodes come back in their order
        ends = np.cumsum(lengths)
        bounds = [0, *np.searchsorted(ends, np.linspace(0, ends[-1], workers + 1)[1:-1]).tolist(), len(jobs)]
        blocks = [jobs[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
        with _environ({"JAX_PLATFORMS": "cpu"}), ProcessPoolExecutor(
                workers, multiprocessing.get_context("spawn")) as pool:  # spawn: JAX must not be forked
            episodes = [e for block in pool.map(_replay_block, blocks, [env] * len(blocks)) for e in block]
    if any(e is None for e in episodes) or _checksum(episodes) != str(recorded["checksum"]):
        raise DatasetError(f"Replaying {path} did not reproduce the recorded observations and rewards bit for bit "
                           f"(the simulator's arithmetic differs on this machine). Delete {path} and build again "
                           f"to record afresh, about an hour.")
    return episodes


def _replay_block(jobs: list, env: str) -> list:
    """Replay episodes (index, reset seed, ends terminated, actions); None for one whose ending differs."""
    sim, episodes = gym.make(ENVS[env]), []
    for i, seed, terminal, actions in jobs:
        observations, rewards = [sim.reset(seed=seed)[0]], []
        for t, action in enumerate(actions):
            obs, reward, terminated, _, _ = sim.step(action)
            observations.append(obs)
            rewards.append(reward)
            if terminated != (terminal and t == len(actions) - 1):
                return [*episodes, None]
        episodes.append(_episode_buffer(i, seed, np.array(observations, np.float32), actions,
                                        np.array(rewards, np.float32), terminal))
    return episodes


def _checksum(episodes) -> str:
    digest = hashlib.sha256()
    for e in episodes:
        for values in (e.observations, e.actions, e.rewards):
            digest.update(np.ascontiguousarray(values, np.float32).tobytes())
    return digest.hexdigest()


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

    rows = earlier_rows()  # datasets measured before and not in this store keep their rows
    for dataset_id in sorted(minari.list_local_datasets(prefix=STANDIN_NAMESPACE)):
        meta = minari.load_dataset(dataset_id).storage.metadata
        build = f"{meta['build_seconds']:.0f} s, {meta['build_method']}" if "build_seconds" in meta else "–"
        # the first load reads every episode and writes this cache; later loads read the cache
        (Path(get_dataset_path(dataset_id)) / CACHE_FILE).unlink(missing_ok=True)
        first, m = measure_load(dataset_id), measure_load(dataset_id)
        rows[dataset_id] = (f"| {dataset_id} | {m['episodes']} | {m['steps']} | {m['mean']:.1f} | {m['min']:.1f} | "
                            f"{m['max']:.1f} | {m['normalized']:.1f} | {build} | {first['seconds']:.1f} s, "
                            f"{first['rss_mb']:.0f} MB | {m['seconds']:.1f} s, {m['rss_mb']:.0f} MB | {machine()} |")
    SUMMARY.write_text(
        "# Stand-in datasets\n\nBuilt with `python -m benchmarks.make_datasets NAME` (seed 0, 1M steps unless noted; "
        "medium-expert is medium + expert) and tabulated with `python -m benchmarks.make_datasets --summary`\n"
        "(*measured on*: the machine of the build and the loads; a row keeps its figures until its dataset is "
        "rebuilt and tabulated again). Returns are undiscounted episode returns; the normalized score uses the dataset's own "
        "reference scores. *build*: the build's wall time and how it was made, as recorded in the dataset's "
        "metadata (the read-back after it is not counted). The last two columns are `load_dataset` in a fresh "
        "process, wall time and peak RSS: the first load reads every episode and caches flat arrays beside the "
        "data; later loads read that cache. A rebuild on another kind of machine keeps the episode count and these "
        "statistics, not the bits (the policy's arithmetic differs in the last bits there, and the trajectories "
        "drift apart). Since 2026-12-01 every episode draws its own action noise, so that any number of "
        "`--workers` gives the same data; the medium stand-ins that the grid's medium rows trained on were built "
        "before, from one stream of noise, and a rebuild no longer reproduces their bits (what each grid run trained "
        "on, its episodes and mean normalized return, is in its record under benchmarks/results/).\n\n"
        "| dataset | episodes | steps | mean return | min | max | mean normalized score | build | first load "
        "| later loads | measured on |\n|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows[k] for k in sorted(rows)) + "\n\n"
        + replay_reruns() + builds_elsewhere())
    print(SUMMARY.read_text())


BUILDS_ELSEWHERE = "## Builds on other machines"


def builds_elsewhere() -> str:
    """datasets.md's section on builds timed on other machines (a GPU host's store is gone with it): kept as written."""
    text = SUMMARY.read_text() if SUMMARY.exists() else ""
    return "\n" + text[text.index(BUILDS_ELSEWHERE):] if BUILDS_ELSEWHERE in text else ""


def earlier_rows() -> dict[str, str]:
    """The table rows already in datasets.md, by dataset id; rows from before the build column get a '–' there, and
    rows from before the machine column the machine their table was measured on."""
    rows, lines = {}, SUMMARY.read_text().split("\n## ")[0].splitlines() if SUMMARY.exists() else []  # the table only
    said = re.search(r"`python -m benchmarks.make_datasets --summary`\s+on (.+?)\. Returns", "\n".join(lines[:4]))
    for line in lines:
        cells = line.strip("|").split("|")
        if line.startswith(f"| {STANDIN_NAMESPACE}/"):
            if len(cells) == 9:
                cells.insert(7, " – ")
            if len(cells) == 10:
                cells.append(f" {said.group(1) if said else '–'} ")
            rows[cells[0].strip()] = "|" + "|".join(cells) + "|"
    return rows


def replay_reruns() -> str:
    """How close each medium-replay rerun came to the committed behaviour run, at the medium checkpoint's step."""
    rows = []
    for env in ENVS:
        committed = BEHAVIOR_DIR / env
        if not (committed / "replay_history.csv").exists():
            continue
        step = json.loads((committed / "selection.json").read_text())["medium"]["step"]
        committed_row = history_row(committed / "history.csv", step)
        rerun = history_row(committed / "replay_history.csv", step)
        end = rerun_reaches_medium(env)
        at_end = history_row(committed / "replay_history.csv", end)
        rows.append(f"| {env} | {step} | {committed_row['eval_return_mean']} ± {committed_row['eval_return_std']} | "
                    f"{rerun['eval_return_mean']} ± {rerun['eval_return_std']} | {rerun['train_episodes']} | "
                    f"{int(rerun['wall_time']) / 60:.0f} min | {end} | {at_end['eval_return_mean']} ± "
                    f"{at_end['eval_return_std']} |")
    return (
        "## medium-replay: the reruns\n\nEach medium-replay stand-in is the replay buffer of the behaviour SAC run, "
        "redone from its committed config and seed up to the step at which the medium policy was selected "
        "(`benchmarks/behavior/<env>/replay_history.csv`). The rerun is not the committed run bit for bit: the two "
        "agree while actions are random and part from the first evaluation after the updates begin (the cause was "
        "not established; both ran on 2-core AMD EPYC hosts with jax 0.10.2). Below: the "
        "deterministic policy's return over the training run's evaluation episodes at that step, in the committed "
        "run (`history.csv`) and in the rerun, the rerun's episode count there, and its wall time. Later builds "
        f"replay the rerun's committed actions (`{RECORDED_ACTIONS}`) through the simulator in seconds, and stop "
        "with an error if the observations do not come out bit for bit (checked against a checksum).\n\n"
        "D4RL's medium-replay is a buffer up to the point where the policy reaches medium. A rerun that learns "
        "faster than the committed run is past medium before the committed run's medium step (hopper's rerun "
        "evaluates near expert from 320k steps on), so the stand-in stops at the rerun's first evaluation that "
        "is at least the committed run's evaluation at its medium step (*stand-in ends at*), and at the latest "
        "at that step. The rule was fixed before any training on these datasets.\n\n"
        "| environment | medium step | committed run's evaluation | rerun's evaluation | episodes | rerun's wall time "
        "| stand-in ends at | rerun's evaluation there |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n") if rows else ""


@dataclass
class Args:
    names: tyro.conf.Positional[tuple[str, ...]] = ()
    """datasets to build: hopper-medium, walker2d-random, offrl-standin/hopper/expert-v0, ..."""
    num_steps: int = 1_000_000
    """transitions per dataset (medium-expert gets this many from each part; medium-replay is as long as its
    training run took to reach medium)"""
    seed: int = 0
    force: bool = False
    """rebuild a dataset that already exists"""
    workers: int | None = None
    """processes that collect episodes side by side (default: every core); any number gives the same dataset"""
    summary: bool = False
    """afterwards, tabulate every local stand-in into benchmarks/datasets.md"""


def _interrupt(*_):
    raise KeyboardInterrupt


def main(args: Args):
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up half-built data exactly as Ctrl-C does
    if args.num_steps <= 0:
        raise SystemExit(f"--num-steps must be positive, got {args.num_steps}")
    if args.workers is not None and args.workers <= 0:
        raise SystemExit(f"--workers must be positive, got {args.workers}")
    try:
        for name in args.names:
            standin = resolve_name(name).standin_id
            if standin is None:
                raise DatasetError(f"{name} has no stand-in; stand-ins exist for {', '.join(ENVS)} x "
                                   f"{'/'.join(QUALITIES)}.")
            build_dataset(standin, args.num_steps, args.seed, args.force, args.workers)
        if args.summary:
            write_summary()
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        raise SystemExit("interrupted: the unfinished dataset was removed; datasets already built are kept "
                         "(a medium-replay rerun resumes from where it stopped)")


if __name__ == "__main__":
    main(tyro.cli(Args))
