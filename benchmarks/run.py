"""Train a grid of (algorithm, dataset, seed) runs and keep every evaluation under benchmarks/results/.

    python -m benchmarks.run --algos iql td3_bc awr cql --env-ids hopper-medium --seeds 0 1 2 \\
        --total-steps 300000 --cql-total-steps 100000
    python -m benchmarks.run --algos td3_bc --name plain_td3 --script-args="--bc-weight 0" --seeds 0
    python -m benchmarks.report     # benchmarks/results.md and the learning curves

Each run is the algorithm's own script, started as a subprocess with the same flags a user would type.
A finished run leaves `results/{env_id}/{name}__seed{seed}.csv` (every evaluation, with the losses and
values of the chunk before it) and a `.json` beside it (command, wall time, machine, outcome). Rerunning
the command skips every finished cell; a cell that was interrupted is started again from scratch, so a
kill costs at most the run in progress. A run that stops on a NaN is recorded as failed, not retried.
"""

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
ALGOS = ("iql", "td3_bc", "awr", "cql")


@dataclass
class Args:
    algos: tuple[str, ...] = ALGOS
    env_ids: tuple[str, ...] = ("hopper-medium",)
    seeds: tuple[int, ...] = (0, 1, 2)
    total_steps: int = 300_000
    cql_total_steps: int | None = None
    """CQL's updates, if not --total-steps (about 15x costlier per update on a CPU)"""
    eval_every: int = 10_000
    name: str | None = None
    """label of the cells in the results (default: the algorithm); needed with --script-args"""
    script_args: str = ""
    """extra flags for every script, in one string, e.g. --script-args="--bc-weight 0 --policy-delay 1" """
    results: Path = RESULTS
    work_dir: Path = ROOT
    """where the scripts run (and write their runs/ directories)"""


def cell_settings(args: Args, algo: str, env_id: str, seed: int) -> dict:
    steps = args.cql_total_steps if algo == "cql" and args.cql_total_steps else args.total_steps
    command = [f"{algo}.py", "--env-id", env_id, "--seed", str(seed), "--total-steps", str(steps),
               "--eval-every", str(args.eval_every), *args.script_args.split()]
    return {"algo": algo, "name": args.name or algo, "env_id": env_id, "seed": seed, "total_steps": steps,
            "command": "python " + " ".join(command)}


def run_cell(settings: dict, out: Path, machine: str, work_dir: Path) -> str:
    """Run one training script to the end; write its evaluations and a record. Returns the outcome."""
    exp_name = f"bench-{uuid.uuid4().hex[:8]}"  # finds this run's directory among all the others
    script, *flags = settings["command"].split()[1:]
    start = time.time()
    code = subprocess.run([sys.executable, str(ROOT / script), *flags, "--exp-name", exp_name], cwd=work_dir,
                          check=False).returncode
    wall = time.time() - start
    run_dirs = sorted((work_dir / "runs").glob(f"*__{exp_name}__*"))
    evaluations = run_dirs[-1] / "evaluations.csv" if run_dirs else None
    steps_done = 0
    if evaluations and evaluations.is_file():
        rows = evaluations.read_text().splitlines()[1:]
        steps_done = int(float(rows[-1].split(",")[0])) if rows else 0
    if code == 0 and steps_done < settings["total_steps"]:
        raise KeyboardInterrupt  # the script was interrupted (Ctrl-C reaches it first): the cell is not done
    outcome = "finished" if code == 0 else f"failed (exit code {code}) at update {steps_done}"
    if evaluations and evaluations.is_file():
        shutil.copyfile(evaluations, out.with_suffix(".csv"))
    dataset = run_dirs[-1] / "dataset.json" if run_dirs else None
    record = settings | {"outcome": outcome, "wall_s": round(wall, 1), "machine": machine, "date": time.strftime("%Y-%m-%d"),
                         "dataset": json.loads(dataset.read_text()) if dataset and dataset.is_file() else None}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")  # written last: marks the cell done
    return outcome


def main(args: Args):
    unknown = sorted(set(args.algos) - set(ALGOS))
    if unknown:
        raise SystemExit(f"error: unknown algorithm(s) {unknown}; choose from {list(ALGOS)}")
    if args.script_args and not args.name:
        raise SystemExit("error: --script-args changes the algorithm: give the cells a --name of their own")
    from benchmarks.speed import machine  # imports jax: only once the flags are known to be good
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the grid as Ctrl-C does
    cells = [cell_settings(args, algo, env_id, seed)
             for env_id in args.env_ids for algo in args.algos for seed in args.seeds]
    todo = []
    for settings in cells:
        out = args.results / settings["env_id"] / f"{settings['name']}__seed{settings['seed']}"
        record = out.with_suffix(".json")
        if record.is_file():
            previous = json.loads(record.read_text())
            if previous["command"] != settings["command"]:
                raise SystemExit(f"error: {record} was made by `{previous['command']}`, not `{settings['command']}`; "
                                 f"pass another --name or delete it")
            continue
        todo.append((settings, out))
    print(f"{len(cells) - len(todo)} of {len(cells)} runs already done; {len(todo)} to go")
    this_machine = machine()
    for i, (settings, out) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {settings['command']}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            outcome = run_cell(settings, out, this_machine, args.work_dir)
        except KeyboardInterrupt:
            raise SystemExit(f"interrupted during `{settings['command']}`; rerun the same command to go on")
        print(f"[{i}/{len(todo)}] {outcome}", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))
