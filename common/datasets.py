"""Load an offline RL dataset by name, from wherever it can be found, as flat float32 arrays.

    data = load_dataset("hopper-medium")
    data.obs, data.action, data.reward, data.next_obs, data.terminal   # one row per transition

Names: D4RL-style (`hopper-medium`, `walker2d-medium-expert`, D4RL's `hopper-medium-v2` too)
or any Minari id (`mujoco/hopper/medium-v0`). Where the data comes from, in order:
  1. the local Minari store ($MINARI_DATASETS_PATH, else ~/.minari/datasets);
  2. Minari's hub, if it answers within a few seconds: an id the hub does not list is an error naming the
     closest ids it does list;
  3. this project's stand-in, built from its own behaviour policies (`benchmarks/make_datasets.py`)
     and stored under its own namespace, so it is never mistaken for the official data. Only for the
     project's own names, or for an official id it stands in for when the hub cannot be reached (or the
     download fails). Building one is common/'s only use of benchmarks/ (`build_standin`).

Actions come in [-1, 1], the range of every policy's tanh, whatever the environment's Box bounds are:
`action_low` and `action_high` keep those bounds, and evaluation maps the policy's actions back onto them.
"""

import difflib
import json
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.wrappers.utils import rescale_box

STANDIN_NAMESPACE = "offrl-standin"
ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
QUALITIES = ("random", "medium", "expert", "medium-expert", "medium-replay")
# What Minari's hub publishes under mujoco/<env>/ of these: medium-v0 and expert-v0 (its third set, simple-v0,
# is a weak policy, not D4RL's uniformly random one). It has no replay or medium-expert set for these tasks.
OFFICIAL_QUALITIES = ("medium", "expert")
D4RL_NAMES = [f"{env}-{quality}" for env in ENVS for quality in QUALITIES]
REFERENCE_SCORES = Path(__file__).with_name("reference_scores.json")
HUB_TIMEOUT_S = 3.0
# Data actions at most this far outside their bounds (as a fraction of half the range) are rounding: clipped.
ACTION_TOLERANCE = 1e-3


class DatasetError(Exception):
    """A dataset could not be named, found, fetched or read. The message says what to do."""


@dataclass
class OfflineDataset:
    dataset_id: str
    source: str  # where the data came from, for the run's logs
    obs: np.ndarray
    action: np.ndarray  # in [-1, 1]: the environment's bounds mapped onto the policies' range
    reward: np.ndarray
    next_obs: np.ndarray
    terminal: np.ndarray  # 1.0 only where the episode truly ended; time-limit truncations are 0.0
    episode_returns: np.ndarray
    env_spec: gym.envs.registration.EnvSpec  # the evaluation environment (Hopper-v5, ...)
    action_low: np.ndarray  # that environment's action bounds, which -1 and 1 stand for in `action`
    action_high: np.ndarray
    ref_min_score: float | None
    ref_max_score: float | None
    notes: list[str] = field(default_factory=list)  # what a user should know (reference scores, name mapping)

    @property
    def ref_scores(self) -> tuple[float | None, float | None]:
        return self.ref_min_score, self.ref_max_score

    def normalized_score(self, episode_return):
        return normalized_score(episode_return, self.ref_min_score, self.ref_max_score)


def normalized_score(episode_return, ref_min: float | None, ref_max: float | None):
    """100 * (return - ref_min) / (ref_max - ref_min), or None where no references exist."""
    if ref_min is None or ref_max is None:
        return None
    return 100.0 * (np.asarray(episode_return) - ref_min) / (ref_max - ref_min)


@dataclass
class Resolved:
    official_id: str | None  # a Minari id to look for locally and on the hub
    standin_id: str | None  # the project's stand-in with the same contents, if it can build one
    note: str | None = None


def resolve_name(name: str) -> Resolved:
    """Map a user's dataset name to the Minari ids that may hold it."""
    d4rl = re.fullmatch(r"(\w+?)-(random|medium-expert|medium-replay|medium|expert)(-v\d+)?", name)
    if d4rl and d4rl[1] in ENVS:
        env, quality, version = d4rl.groups()
        official = f"mujoco/{env}/{quality}-v0" if quality in OFFICIAL_QUALITIES else None
        note = None
        if version:
            target = official or f"{STANDIN_NAMESPACE}/{env}/{quality}-v0"
            note = f"{name} is D4RL's name; using {target} ({ENVS[env]}), which is not D4RL's {version[1:]} data."
        return Resolved(official, f"{STANDIN_NAMESPACE}/{env}/{quality}-v0", note)
    minari_id = re.fullmatch(r"([\w-]+)/(\w+)/([\w-]+)-v(\d+)", name)
    if minari_id:
        namespace, env, quality, version = minari_id.groups()
        if namespace == STANDIN_NAMESPACE:
            return Resolved(None, name)
        # A stand-in replaces only the official sets it was made after: mujoco/<env>/{medium,expert}-v0
        stands_in = namespace == "mujoco" and env in ENVS and quality in OFFICIAL_QUALITIES and version == "0"
        return Resolved(name, f"{STANDIN_NAMESPACE}/{env}/{quality}-v0" if stands_in else None)
    suggestion = difflib.get_close_matches(name, D4RL_NAMES, n=1)
    hint = f" Did you mean '{suggestion[0]}'?" if suggestion else ""
    raise DatasetError(
        f"Unknown dataset '{name}'.{hint} Valid names: {', '.join(D4RL_NAMES)}, "
        f"D4RL's '-v2' forms of these, or a Minari id such as mujoco/hopper/medium-v0."
    )


def load_dataset(name: str) -> OfflineDataset:
    """Find the dataset (local store, then hub, then stand-in) and return it as flat arrays.

    Each `[data]` line is printed once, as soon as it is known: a fallback's reason before the build it causes.
    """
    import minari

    resolved = resolve_name(name)
    notes = []

    def note(text: str):
        notes.append(text)
        print(f"[data] note: {text}")

    if resolved.note:
        note(resolved.note)
    local = set(minari.list_local_datasets())
    if resolved.official_id in local:
        return _read(resolved.official_id, "local Minari store", notes)
    if resolved.official_id:
        reachable, why = hub_reachable()
        if reachable:
            try:
                listed = remote_dataset_ids(resolved.official_id)
            except Exception as e:  # a dropped connection: as if the hub could not be reached
                reachable, why = False, f"listing the hub's datasets failed: {e}"
        if reachable and resolved.official_id not in listed:
            if name == resolved.official_id or resolved.standin_id is None:  # a Minari id that exists nowhere
                raise DatasetError(f"Minari's hub has no dataset {resolved.official_id}; "
                                   f"{_closest(resolved.official_id, listed, 'the hub lists')}.")
            reachable, why = False, "the hub does not list it"  # a project name: its stand-in, as promised
        if reachable:
            try:
                minari.download_dataset(resolved.official_id)
                return _read(resolved.official_id, "Minari hub (downloaded now)", notes)
            except DatasetError:
                raise
            except Exception as e:  # a dropped connection, a version this Minari cannot read: the stand-in
                why = f"download failed: {e}"
        if resolved.standin_id is None:
            known = local | {f"mujoco/{env}/{q}-v0" for env in ENVS for q in OFFICIAL_QUALITIES}
            raise DatasetError(f"{resolved.official_id} is not in the local Minari store and the hub cannot be used "
                               f"({why}), so whether it exists cannot be checked; "
                               f"{_closest(resolved.official_id, known, 'known here without the hub')}; if it exists, "
                               f"download it on a machine with internet (minari download {resolved.official_id}) "
                               f"and copy it into $MINARI_DATASETS_PATH.")
        note(f"{resolved.official_id} not available ({why}); using this project's stand-in "
             f"{resolved.standin_id} instead, which is NOT the official data.")
    if resolved.standin_id not in local:
        print(f"[data] building stand-in dataset {resolved.standin_id} (once; it is stored in the local Minari store)")
        build_standin(resolved.standin_id)
    return _read(resolved.standin_id, "project stand-in (local Minari store)", notes)


def build_standin(dataset_id: str):
    """Build a stand-in into the local store, with benchmarks/make_datasets.py: common/'s one import from benchmarks/.

    It is deliberate, so that the README's first run works with no dataset downloaded; it is imported here, only
    when a stand-in is missing, so that a copy of common/ without benchmarks/ still loads every dataset it has.
    """
    try:
        from benchmarks.make_datasets import build_dataset
    except ModuleNotFoundError as e:
        raise DatasetError(f"{dataset_id} is not in the local Minari store, and building it needs this repository's "
                           f"benchmarks/make_datasets.py, which cannot be imported here ({e}).") from e
    build_dataset(dataset_id)


def remote_dataset_ids(dataset_id: str) -> set[str]:
    """The ids Minari's hub lists under the dataset's first namespace (everything, if it lists none there)."""
    import minari

    return set(minari.list_remote_datasets(prefix=dataset_id.split("/")[0]) or minari.list_remote_datasets())


def _closest(dataset_id: str, candidates, where: str) -> str:
    """'the closest ids <where>: a, b, c', for an error message."""
    closest = difflib.get_close_matches(dataset_id, sorted(candidates), n=3, cutoff=0.5)
    shown = closest or sorted(candidates)[:5]
    text = f"the closest ids {where}: {', '.join(shown)}" if shown else f"no ids are {where}"
    if dataset_id.startswith("mujoco/"):  # the project's own name for the same data, where it has one
        env, quality = dataset_id.split("/")[1], dataset_id.split("/")[-1].rsplit("-v", 1)[0]
        if env in ENVS and quality in QUALITIES:
            text += f" (this project's stand-in of it is --env-id {env}-{quality})"
    return text


def hub_reachable() -> tuple[bool, str]:
    """Can Minari's remote be reached? Answers within HUB_TIMEOUT_S instead of retrying for a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False, "HF_HUB_OFFLINE is set"
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    url = "https://storage.googleapis.com" if remote.startswith("gcp://") else os.environ.get(
        "HF_ENDPOINT", "https://huggingface.co")
    host, port = urllib.parse.urlparse(url).hostname, urllib.parse.urlparse(url).port or 443
    try:
        socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
        return True, ""
    except OSError as e:
        return False, f"cannot connect to {host}: {e}"


def _read(dataset_id: str, source: str, notes: list[str]) -> OfflineDataset:
    """Read a dataset from the local store into flat arrays, or raise DatasetError saying why not."""
    import minari
    from minari.storage import get_dataset_path

    path = get_dataset_path(dataset_id)
    try:
        dataset = minari.load_dataset(dataset_id)
        env = dataset.recover_environment(eval_env=True)
        env_spec, action_space = env.spec, env.action_space
        env.close()
        check_action_space(dataset_id, action_space)
        metadata = dataset.storage.metadata
        arrays = _flat_arrays(dataset, path)
        arrays["action"] = unit_actions(dataset_id, arrays["action"], action_space)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"Could not read dataset {dataset_id} at {path}: {type(e).__name__}: {e}. The file may be "
                           f"corrupted or incomplete; delete that folder and run again to rebuild or re-download it.") from e
    ref_min, ref_max, ref_note = reference_scores(metadata, env_spec.id)
    print(f"[data] {dataset_id}: {len(arrays['episode_returns'])} episodes, {len(arrays['reward'])} transitions, "
        f"from {source}")
    if ref_note:
        notes.append(ref_note)
        print(f"[data] note: {ref_note}")
    return OfflineDataset(dataset_id, source, **arrays, env_spec=env_spec, action_low=action_space.low,
                          action_high=action_space.high, ref_min_score=ref_min, ref_max_score=ref_max, notes=notes)


def check_action_space(dataset_id: str, space):
    """Every policy here acts in [-1, 1] through a tanh, mapped onto the environment's bounds: they must be finite."""
    if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
        raise DatasetError(f"Dataset {dataset_id} has the action space {space}; these scripts handle only "
                           f"continuous actions, a one-dimensional gymnasium Box.")
    if not (np.isfinite(space.low).all() and np.isfinite(space.high).all() and (space.low < space.high).all()):
        raise DatasetError(f"Dataset {dataset_id} has the action space {space}, whose bounds are not finite (or "
                           f"empty); the policies' actions in [-1, 1] can be mapped only onto finite bounds.")


def unit_actions(dataset_id: str, action: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """The data's actions mapped from the space's bounds onto [-1, 1] (unchanged, bit for bit, where those are
    already [-1, 1]); actions outside the bounds by more than rounding are refused, not silently clipped."""
    _, to_unit, _ = rescale_box(space, space.dtype.type(-1), space.dtype.type(1))  # the inverse of RescaleAction
    unit = to_unit(action).astype(np.float32)
    outside = (np.abs(unit) > 1 + ACTION_TOLERANCE).any(-1)
    if outside.any():
        raise DatasetError(f"Dataset {dataset_id}: {outside.sum()} of its {len(action)} actions lie outside the "
                           f"action space's bounds (low {space.low.tolist()}, high {space.high.tolist()}) by more "
                           f"than {ACTION_TOLERANCE:g} of their half-range; only actions within the bounds are "
                           f"accepted.")
    return np.clip(unit, -1.0, 1.0)


ARRAYS = ("obs", "action", "reward", "next_obs", "terminal", "episode_returns")
CACHE_FILE = "flat_arrays.npz"


def _flat_arrays(dataset, path: Path) -> dict:
    """The episodes as flat float32 arrays. Reading episode by episode costs up to 2 ms each, and a
    random dataset holds ~45k episodes, so the result is cached beside the dataset (plain .npz, no pickle),
    keyed by the data files' sizes and modification times: a changed or damaged file is read afresh."""
    fingerprint = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
                           for f in sorted((path / "data").iterdir()))
    cache = path / CACHE_FILE
    try:
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["fingerprint"]) == fingerprint:
                return {k: saved[k] for k in ARRAYS}
    except Exception:
        pass  # no cache yet, or an unreadable one: read the dataset itself
    arrays = _episodes_to_arrays(dataset, path)
    try:
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, fingerprint=np.array(fingerprint), **arrays)
        tmp.replace(cache)
    except OSError:
        pass  # a read-only store: no cache, same data
    return arrays


def _episodes_to_arrays(dataset, path: Path) -> dict:
    obs, next_obs, action, reward, terminal, returns = [], [], [], [], [], []
    for ep in _read_episodes(dataset, path):
        o = np.asarray(ep["observations"], np.float32)  # T+1 observations for T actions
        if o.ndim != 2 or len(o) != len(ep["actions"]) + 1:
            raise DatasetError(f"Dataset {dataset.id}: episode {ep['id']} is not a flat Box episode with T+1 "
                               f"observations (observations {o.shape}, actions {np.shape(ep['actions'])}).")
        obs.append(o[:-1])
        next_obs.append(o[1:])
        action.append(ep["actions"])
        reward.append(ep["rewards"])
        terminal.append(ep["terminations"])
        returns.append(np.sum(ep["rewards"]))
    if not returns:
        raise DatasetError(f"Dataset {dataset.id} holds no episodes; delete its folder and run again.")
    f32 = lambda parts: np.concatenate(parts).astype(np.float32)  # noqa: E731
    return {"obs": f32(obs), "action": f32(action), "reward": f32(reward), "next_obs": f32(next_obs),
            "terminal": f32(terminal), "episode_returns": np.asarray(returns, np.float32)}


def _read_episodes(dataset, path: Path):
    """The episodes' arrays, in order. Minari reads an episode in about 2 ms, most of it spent opening HDF5
    objects through h5py's high-level API; a 1M-step random dataset has ~45k episodes. For a flat Box dataset
    in Minari's HDF5 layout (one group per episode), h5py's low-level calls read the same arrays 4x faster."""
    file = path / "data" / "main_data.hdf5"
    flat = [isinstance(space, gym.spaces.Box) and len(space.shape) == 1
            for space in (dataset.observation_space, dataset.action_space)]
    if not (all(flat) and file.is_file()):
        yield from dataset.storage.get_episodes(dataset.episode_indices)
        return
    import h5py

    with h5py.File(file, "r") as f:
        for i in dataset.episode_indices:
            group = h5py.h5g.open(f.id, f"episode_{i}".encode())
            episode = {"id": i}
            for key in ("observations", "actions", "rewards", "terminations"):
                data = h5py.h5d.open(group, key.encode())
                episode[key] = np.empty(data.shape, data.dtype)
                data.read(h5py.h5s.ALL, h5py.h5s.ALL, episode[key])
            yield episode


def reference_scores(metadata: dict, env_id: str) -> tuple[float | None, float | None, str | None]:
    """The dataset's own reference returns, else this project's for the same environment, else none."""
    if metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None:
        return float(metadata["ref_min_score"]), float(metadata["ref_max_score"]), None
    ours = json.loads(REFERENCE_SCORES.read_text()).get(env_id) if REFERENCE_SCORES.exists() else None
    if ours:
        return (ours["random"], ours["expert"], f"the dataset has no reference scores; normalizing with this "
                f"project's own random ({ours['random']:.0f}) and expert ({ours['expert']:.0f}) returns on {env_id}.")
    return None, None, f"no reference scores for {env_id}: reporting raw returns, not normalized scores."
