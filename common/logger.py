"""One run's records: its directory, TensorBoard scalars, evaluations.csv and the checkpoints it writes."""

import json
import time
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter

from common.checkpoints import resume, save_checkpoint, settings
from common.experiment import run_labels


class Run:
    """One experiment: `runs/{env_id}__{exp_name}__{seed}__{unix_time}` with TensorBoard logs and checkpoints.

    With args.checkpoint, it continues the run that checkpoint (at update `step`) comes from, in its directory:
    what it logged after `step` (when it was killed after its last checkpoint) is dropped, so nothing is counted twice.
    `meta` is the header of every checkpoint it saves; `wall_before` the training seconds of the run it resumes.
    """

    def __init__(self, args, meta: dict, step: int = 0, wall_before: float = 0.0):
        if args.checkpoint is None:
            self.dir = Path("runs") / f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self.dir = Path(args.checkpoint).parent
            self._drop_evaluations_after(step)
        purge = {} if args.checkpoint is None else {"purge_step": step + 1}
        self.writer = SummaryWriter(str(self.dir), **purge)
        self.meta, self.labels = meta, run_labels(args)
        # A sweep logs each combination of values as a TensorBoard run of its own, in a subdirectory named for it
        # (alpha_2.5): TensorBoard draws the combinations on the same charts. Without a sweep: one, the run itself.
        self.groups = {name: ([i for i, label in enumerate(self.labels) if combination_name(label) == name],
                              SummaryWriter(str(self.dir / name), **purge) if name else self.writer)
                       for name in dict.fromkeys(map(combination_name, self.labels))}
        config = settings(args)
        self.json("args.json", config)
        table = "\n".join(f"|{k}|{v}|" for k, v in config.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.start = time.perf_counter() - wall_before

    def scalars(self, values: dict, step: int, writer=None):
        for name, value in values.items():
            (writer or self.writer).add_scalar(name, float(value), step)

    def log_chunk(self, per_seed_scalars: list[dict], step: int, updates_per_sec: float):
        """A chunk's scalars, each combination of swept values the mean over its seeds."""
        for name, (rows, writer) in self.groups.items():
            self.scalars({k: np.mean([per_seed_scalars[i][k] for i in rows]) for k in per_seed_scalars[0]}
                         | ({} if name else {"charts/updates_per_sec": updates_per_sec}), step, writer)
        if "" not in self.groups:
            self.scalars({"charts/updates_per_sec": updates_per_sec}, step)

    def log_evaluation(self, step: int, returns, scores, per_seed_scalars: list[dict]) -> str:
        """Record an evaluation (returns: states x episodes, in `run_labels` order), with each state's chunk scalars;
        -> the lines to print."""
        for rows, writer in self.groups.values():
            stacked = len(rows) > 1  # several seeds of this combination
            for i in rows:
                result = ({"charts/episodic_return": returns[i].mean()}
                          | ({"charts/normalized_score": scores[i]} if scores[i] is not None else {}))
                self.scalars({f"seed_{self.labels[i]['seed']}/{k.split('/')[-1]}": v for k, v in result.items()}
                             if stacked else result, step, writer)
                self.evaluation({"step": step} | self.labels[i] | {"wall_s": time.perf_counter() - self.start,
                                                                   "return_std": returns[i].std()}
                                | result | per_seed_scalars[i])
            if stacked:
                group_scores = [scores[i] for i in rows]
                self.scalars({"charts/episodic_return": returns[rows].mean()}
                             | ({"charts/normalized_score": np.mean(group_scores),
                                 "charts/normalized_score_std": np.std(group_scores)} if scores[0] is not None else {}),
                             step, writer)
        return "\n".join(eval_lines(self.labels, step, returns, scores))

    def evaluation(self, row: dict):
        """Append one evaluation (with the metrics of the chunk before it) to evaluations.csv."""
        path = self.dir / "evaluations.csv"
        with path.open("a") as f:
            if f.tell() == 0:
                f.write(",".join(row) + "\n")
            f.write(",".join(f"{float(v):.6g}" for v in row.values()) + "\n")

    def save(self, name: str, state, step: int) -> Path:
        path = self.dir / name
        save_checkpoint(path, state, {**self.meta, "step": step, "wall_s": round(time.perf_counter() - self.start, 1)})
        return path

    def finish(self, state, step: int, interrupted: bool):
        path = self.save("final.msgpack", state, step)
        print(f"{'interrupted' if interrupted else 'done'} at update {step}; checkpoint {path}")
        for writer in {self.writer, *(writer for _, writer in self.groups.values())}:
            writer.close()  # each once: without a sweep the one group writes through the run's own writer

    def _drop_evaluations_after(self, step: int):
        path = self.dir / "evaluations.csv"
        lines = path.read_text().splitlines() if path.is_file() else []
        if lines:
            kept = [lines[0], *(row for row in lines[1:] if float(row.split(",")[0]) <= step)]
            path.write_text("\n".join(kept) + "\n")

    def json(self, name: str, content: dict):
        (self.dir / name).write_text(json.dumps(content, indent=2) + "\n")


def start_run(args, algorithm: str, state, data):
    """(run, state, step): a new run directory, or, with args.checkpoint, the stopped run it goes on with."""
    step, wall_before = 0, 0.0
    if args.checkpoint is not None:  # go on training a run that was stopped: in its own directory
        state, step, wall_before = resume(args, state, algorithm)
    meta = {"algorithm": algorithm, "env_id": args.env_id, "dataset_id": data.dataset_id,
            "seeds": list(range(args.seed, args.seed + args.num_seeds)), "args": settings(args),
            # what --eval-only needs, so that it needs no dataset: where to act, on which bounds, against which scores
            "eval_env_spec": data.env_spec.to_json(), "action_low": data.action_low.tolist(),
            "action_high": data.action_high.tolist(), "ref_min_score": data.ref_min_score,
            "ref_max_score": data.ref_max_score}
    run = Run(args, meta, step, wall_before)
    run.writer.add_text("data", f"{data.dataset_id} from {data.source}. " + " ".join(data.notes))
    run.json("dataset.json", {"dataset_id": data.dataset_id, "source": data.source, "notes": data.notes,
                              "episodes": len(data.episode_returns), "transitions": len(data.obs),
                              "mean_return": float(data.episode_returns.mean()),
                              "mean_normalized_return": data.normalized_score(float(data.episode_returns.mean()))})
    return run, state, step


def combination_name(label: dict) -> str:
    """The name of a state's combination of swept values ('alpha_2.5', 'expectile_0.9__beta_3.0'); '' if none."""
    return "__".join(f"{k}_{v!r}" for k, v in label.items() if k != "seed")


def eval_line(step, episode_returns, score, seed=None, prefix="") -> str:
    score_text = f"normalized {score:6.1f}" if score is not None else "(no reference scores)"
    prefix += f"seed {seed:>3d} | " if seed is not None else ""
    return f"{prefix}step {step:>8d} | return {episode_returns.mean():8.1f} ± {episode_returns.std():6.1f} | {score_text}"


def eval_lines(labels: list[dict], step, returns, scores) -> list[str]:
    """A line per trained state (`run_labels`), and for several seeds their mean ± std, per combination of values."""
    if len(labels) == 1:
        return [eval_line(step, returns[0], scores[0])]
    lines = []
    for name in dict.fromkeys(map(combination_name, labels)):
        rows = [i for i, label in enumerate(labels) if combination_name(label) == name]
        prefix = "".join(f"{k.replace('_', '-')} {v:g} | " for k, v in labels[rows[0]].items() if k != "seed")
        lines += [eval_line(step, returns[i], scores[i], labels[i]["seed"], prefix) for i in rows]
        if scores[0] is not None and len(rows) > 1:
            group = [scores[i] for i in rows]
            lines.append(f"{prefix}{len(rows)} seeds   | step {step:>8d} | normalized {np.mean(group):6.1f} ± "
                         f"{np.std(group):.1f}")
    return lines
