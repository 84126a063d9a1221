"""Run directories, TensorBoard scalars, an evaluations CSV, checkpoints and the guards every training loop needs."""

import dataclasses
import json
import signal
import time
from pathlib import Path

import flax.serialization
import jax
import numpy as np
from tensorboardX import SummaryWriter


def settings(args) -> dict:
    """The flags of a run as strings: written to args.json and into every checkpoint."""
    return {k: str(v) for k, v in dataclasses.asdict(args).items()}


class Run:
    """One experiment: `runs/{env_id}__{exp_name}__{seed}__{unix_time}` with TensorBoard logs and checkpoints.

    `resumed_at=step` continues the run whose checkpoint is args.checkpoint, in that checkpoint's directory:
    what it logged after `step` (when it was killed after its last checkpoint) is dropped, so nothing is counted twice.
    """

    def __init__(self, args, root: Path = Path("runs"), resumed_at: int | None = None):
        if resumed_at is None:
            self.dir = root / f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
            self.dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.dir))
        else:
            self.dir = Path(args.checkpoint).parent
            self._drop_evaluations_after(resumed_at)
            self.writer = SummaryWriter(str(self.dir), purge_step=resumed_at + 1)
        config = settings(args)
        self.json("args.json", config)
        table = "\n".join(f"|{k}|{v}|" for k, v in config.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    def scalars(self, values: dict, step: int):
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), step)

    def evaluation(self, row: dict):
        """Append one evaluation (with the metrics of the chunk before it) to evaluations.csv."""
        path = self.dir / "evaluations.csv"
        with path.open("a") as f:
            if f.tell() == 0:
                f.write(",".join(row) + "\n")
            f.write(",".join(f"{float(v):.6g}" for v in row.values()) + "\n")

    def _drop_evaluations_after(self, step: int):
        path = self.dir / "evaluations.csv"
        lines = path.read_text().splitlines() if path.is_file() else []
        if lines:
            kept = [lines[0], *(row for row in lines[1:] if float(row.split(",")[0]) <= step)]
            path.write_text("\n".join(kept) + "\n")

    def json(self, name: str, content: dict):
        (self.dir / name).write_text(json.dumps(content, indent=2) + "\n")

    def text(self, tag: str, text: str):
        self.writer.add_text(tag, text)

    def close(self):
        self.writer.close()


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


def first_nonfinite(metrics: dict):
    """(index, names) of the first update whose metrics hold a NaN/inf, from per-update arrays; else None."""
    bad = {name: np.flatnonzero(~np.isfinite(np.asarray(values))) for name, values in metrics.items()}
    bad = {name: idx[0] for name, idx in bad.items() if idx.size}
    if not bad:
        return None
    first = min(bad.values())
    return int(first), sorted(name for name, idx in bad.items() if idx == first)


class GracefulInterrupt:
    """Turn Ctrl-C (and SIGTERM) into a flag, so the loop can finish its chunk, save and exit cleanly."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, *_):
        if self.requested:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this chunk, saving a checkpoint, then stopping (Ctrl-C again to abort)")
