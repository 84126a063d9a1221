"""Checkpoints: the whole training state as flax msgpack (no pickle) with a JSON header, and resuming one."""

import dataclasses
import json
from pathlib import Path

import flax.serialization
import jax
import numpy as np

# Flags that may differ when a run is resumed: none of them changes the updates.
RESUMABLE_CHANGES = {"checkpoint", "eval_only", "exp_name", "eval_every", "eval_episodes", "save_every",
                     "capture_video", "video_every"}


def settings(args) -> dict:
    """The flags of a run as strings: written to args.json and into every checkpoint."""
    return {k: str(v) for k, v in dataclasses.asdict(args).items()}


def save_checkpoint(path: Path, state, meta: dict):
    """Write the whole training state as flax msgpack (no pickle), next to a small JSON header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(flax.serialization.msgpack_serialize(
        {"meta": json.dumps(meta), "state": flax.serialization.to_state_dict(jax.device_get(state))}))
    tmp.replace(path)  # atomic: an interrupted save never leaves half a checkpoint


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(meta, state as a dict of arrays) of a checkpoint; raises ValueError with a readable reason."""
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        raw = flax.serialization.msgpack_restore(Path(path).read_bytes())
        return json.loads(raw["meta"]), raw["state"]
    except Exception as e:
        raise ValueError(f"{path} is not a checkpoint written by this project ({type(e).__name__}: {e})") from e


def load_checkpoint(path: Path, template, algorithm: str):
    """Restore a state shaped like `template`; raises ValueError with a readable reason on a mismatch."""
    meta, saved = read_checkpoint(path)
    check_algorithm(path, meta, algorithm)
    try:
        state = flax.serialization.from_state_dict(template, saved)
        jax.tree.map(_same_shape, template, state)
    except Exception as e:
        raise ValueError(f"{path} does not fit these networks (env {meta.get('env_id')}): {e}") from e
    return state, meta


def check_algorithm(path: Path, meta: dict, algorithm: str):
    if meta.get("algorithm") != algorithm:
        raise ValueError(f"{path} was written by {meta.get('algorithm')}, not {algorithm}")


def _same_shape(a, b):
    if np.shape(a) != np.shape(b):
        raise ValueError(f"shape {np.shape(b)} where {np.shape(a)} was expected")


def resume(args, state, algorithm: str):
    """Load args.checkpoint to go on training it: (state, its update, its training seconds so far).

    The state holds everything an update reads (parameters, optimiser moments, the random key), so a resumed run
    takes the very updates the uninterrupted one would have taken, provided the flags are the same.
    """
    try:
        state, meta = load_checkpoint(args.checkpoint, state, algorithm)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if "args" not in meta:
        raise SystemExit(f"error: {args.checkpoint} does not record its flags, so it cannot be resumed safely; "
                         f"--eval-only evaluates it")
    now = settings(args)
    changed = [k for k in now if k not in RESUMABLE_CHANGES and meta["args"].get(k) != now[k]]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {meta['args'].get(k)} (now {now[k]})" for k in changed)
        raise SystemExit(f"error: {args.checkpoint} was trained with {was}; resuming needs the same flags "
                         f"(only {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE_CHANGES))} may change)")
    print(f"resuming {args.checkpoint} at update {meta['step']}")
    return state, meta["step"], meta.get("wall_s", 0.0)
