"""Checkpoints: the whole training state as flax msgpack (no pickle) with a JSON header, and resuming one."""

import dataclasses
import json
from pathlib import Path

import flax.serialization
import jax
import numpy as np

# Flags that may differ when a run is resumed: none of them changes the updates.
RESUMABLE_CHANGES = {"checkpoint", "eval_only", "exp_name", "eval_every", "eval_episodes", "eval_workers",
                     "save_every", "capture_video", "video_every"}


def settings(args) -> dict:
    """The flags of a run with their types, as JSON holds them (a tuple as a list, a path as a string): written to
    args.json and into every checkpoint, so that the checkpoint alone can rebuild its agent."""
    return json.loads(json.dumps(dataclasses.asdict(args), default=str))


def as_text(flags: dict) -> bool:
    """Were these flags recorded as strings, as checkpoints did before they kept the types?"""
    return all(isinstance(value, str) for value in flags.values())


def as_typed(value) -> str:
    """A recorded flag's value as it is typed on the command line: a list as its values (--alpha 1.0 5.0)."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def trained_args(args_type, meta: dict):
    """The script's Args (`args_type`) as the checkpoint's run had them, JSON's lists back to tuples; None for a
    checkpoint that records no flags, or records them as text (written before checkpoints kept their types)."""
    flags = meta.get("args", {})
    if not flags or as_text(flags):
        return None
    fields = {f.name for f in dataclasses.fields(args_type)}
    return args_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in flags.items() if k in fields})


def save_checkpoint(path: Path, state, meta: dict):
    """Write the whole training state as flax msgpack (no pickle), next to a small JSON header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(flax.serialization.msgpack_serialize(
        {"meta": json.dumps(meta), "state": flax.serialization.to_state_dict(jax.device_get(state))}))
    tmp.replace(path)  # atomic: an interrupted save never leaves half a checkpoint


def read_checkpoint(path: Path, algorithm: str | None = None) -> tuple[dict, dict]:
    """(meta, state as a dict of arrays) of a checkpoint, one `algorithm` wrote if that is given; raises ValueError
    with a readable reason."""
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        raw = flax.serialization.msgpack_restore(Path(path).read_bytes())
        meta, state = json.loads(raw["meta"]), raw["state"]
    except Exception as e:
        raise ValueError(f"{path} is not a checkpoint written by this project ({type(e).__name__}: {e})") from e
    if algorithm is not None and meta.get("algorithm") != algorithm:
        raise ValueError(f"{path} was written by {meta.get('algorithm')}, not {algorithm}")
    return meta, state


def load_checkpoint(path: Path, template, algorithm: str):
    """Restore a state shaped like `template`; raises ValueError with a readable reason on a mismatch."""
    meta, saved = read_checkpoint(path, algorithm)
    try:
        state = flax.serialization.from_state_dict(template, saved)
        jax.tree.map(_same_shape, template, state)
    except Exception as e:
        raise ValueError(f"{path} does not fit these networks (env {meta.get('env_id')}): {e}") from e
    return state, meta


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
    if as_text(meta["args"]):  # an older checkpoint: compare the flags as it wrote them
        now = {k: str(v) for k, v in dataclasses.asdict(args).items()}
    changed = [k for k in now if k not in RESUMABLE_CHANGES and meta["args"].get(k) != now[k]]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {as_typed(meta['args'].get(k))} (now {as_typed(now[k])})"
                        for k in changed)
        raise SystemExit(f"error: {args.checkpoint} was trained with {was}; resuming needs the same flags "
                         f"(only {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE_CHANGES))} may change)")
    print(f"resuming {args.checkpoint} at update {meta['step']}")
    return state, meta["step"], meta.get("wall_s", 0.0)
