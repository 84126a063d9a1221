"""Record the first N updates of a stopped, longer grid run as a finished N-update cell.

    python -m benchmarks.first_updates --algo cql --env-ids hopper-medium-replay --updates 100000 \\
        --work-dir /path/where/the/grid/ran

CQL's grid protocol on a CPU is 100k updates (`benchmarks.run --cql-total-steps 100000`). A CQL cell that was
launched for 300k updates on a GPU and stopped past 100k, when the GPU time ran out, has already made every
update a 100k-update run makes, and evaluated at update 100k as that run would:
- the script's updates do not depend on --total-steps (no learning-rate schedule: see SCHEDULE_FREE);
- the seeds, data order and evaluations depend only on --seed and the update count.
So its evaluations up to update N are recorded as the N-update cell, under that cell's own command, which
reproduces them. The record keeps the command that was launched and where it stopped (`first_updates_of`), and
benchmarks.report says so beside the row.
"""

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

from benchmarks import run

# Scripts whose --total-steps only bounds the loop. iql.py is not one: its actor's learning rate decays over
# --total-steps, so its first N updates of a longer run differ from an N-update run's.
SCHEDULE_FREE = ("td3_bc", "awr", "cql")


@dataclass
class Args:
    algo: str = "cql"
    env_ids: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    """the seeds the stopped program trained (vmapped in one program, or the one seed of a single run)"""
    updates: int = 100_000
    """N: record the cell of N updates"""
    eval_every: int = 10_000
    work_dir: Path = run.ROOT
    """where the stopped grid ran: its runs/ directory holds the attempt and the run's evaluations"""
    results: Path = run.RESULTS


def record_first_updates(args: Args, env_id: str) -> list[Path]:
    """Write each seed's evaluations up to update N and its record; return the records' paths."""
    grid = run.Args(algos=(args.algo,), env_ids=(env_id,), seeds=args.seeds, total_steps=args.updates,
                    eval_every=args.eval_every, results=args.results)
    cells = [(settings, run.record_path(grid, settings))
             for settings in (run.cell_settings(grid, args.algo, env_id, seed) for seed in args.seeds)]
    cells = run.unfinished(grid, [settings for settings, _ in cells])  # refuses a record made by another command
    if not cells:
        return []
    attempt_file = args.work_dir / "runs" / "benchmark_attempts" / f"{env_id}__{args.algo}__{args.seeds[0]}.json"
    if not attempt_file.is_file():
        raise SystemExit(f"error: no stopped run of {args.algo} on {env_id} in {args.work_dir} ({attempt_file} is missing)")
    attempt = json.loads(attempt_file.read_text())
    launched = attempt["launched"]
    stopped_total = int(re.search(r"--total-steps (\d+)", launched).group(1))
    # the command run_program launches for the N-update cell, which must be the stopped one's but for its length
    flags = ["--num-seeds", str(len(args.seeds))] if len(args.seeds) > 1 else []
    expected = " ".join([cells[0][0]["command"], *flags, "--save-every", str(args.eval_every)])
    if launched.replace(f"--total-steps {stopped_total} ", f"--total-steps {args.updates} ") != expected:
        raise SystemExit(f"error: the stopped run launched `{launched}`; the first {args.updates} updates of "
                         f"`{expected.replace(str(args.updates), str(stopped_total), 1)}` are needed")
    run_dir = run.newest_run_dir(args.work_dir, attempt["exp_name"])
    by_run = run.split_by_run(run_dir / "evaluations.csv" if run_dir else None)
    written = []
    for settings, out in cells:
        header, *rows = by_run.get(run.run_key(settings), ["step"])
        steps = [int(float(row.split(",")[0])) for row in rows]
        if args.updates not in steps:
            raise SystemExit(f"error: seed {settings['seed']} of {run_dir} was evaluated at "
                             f"{steps[-1] if steps else 'no'} update(s), not at update {args.updates}")
        kept = [row for row, step in zip(rows, steps) if step <= args.updates]
        wall = float(kept[-1].split(",")[header.split(",").index("wall_s")])
        machines = [m for m in attempt["machines"] if m["from_update"] < args.updates]
        dataset = run_dir / "dataset.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".csv").write_text("\n".join([header, *kept]) + "\n")
        record = settings | {
            "outcome": "finished", "wall_s": round(wall, 1), "seeds_in_program": len(cells), "launched": launched,
            "machine": run.machines_text(machines, args.updates), "date": time.strftime("%Y-%m-%d"),
            "dataset": json.loads(dataset.read_text()) if dataset.is_file() else None,
            "first_updates_of": {"total_steps": stopped_total, "stopped_at": steps[-1]}}
        run.write_atomically(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
        written.append(out.with_suffix(".json"))
    return written


def main(args: Args):
    if args.algo not in SCHEDULE_FREE:
        raise SystemExit(f"error: {args.algo}.py's updates depend on --total-steps (a learning-rate schedule): the "
                         f"first {args.updates} updates of a longer run are not a {args.updates}-update run")
    for env_id in args.env_ids:
        for path in record_first_updates(args, env_id):
            print(f"recorded {path}")


if __name__ == "__main__":
    main(tyro.cli(Args))
