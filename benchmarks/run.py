"""Train a grid of (algorithm, dataset, seed) runs and keep every evaluation under benchmarks/results/.

    python -m benchmarks.run --algos iql td3_bc awr cql --env-ids hopper-medium --seeds 0 1 2 \\
        --total-steps 300000 --cql-total-steps 100000
    python -m benchmarks.run --algos td3_bc --name plain_td3 --script-args="--bc-weight 0" --seeds 0
    python -m benchmarks.report     # benchmarks/results.md and the learning curves

Each run is the algorithm's own script, started as a subprocess with the same flags a user would type.
On a GPU, the consecutive seeds of one algorithm and dataset share one process (`--num-seeds`, one vmapped
program, which gives each seed what its own run would); --vmap-seeds / --no-vmap-seeds choose.
A finished run leaves `results/{env_id}/{name}__seed{seed}.csv` (every evaluation, with the losses and
values of the chunk before it) and a `.json` beside it (the seed's own command, the command launched, wall
time, machine, outcome). Rerunning the command skips every finished cell. A cell that was stopped (Ctrl-C,
`kill`, even a power cut) goes on from its latest checkpoint, saved every --eval-every updates,
and takes the updates it would have taken unstopped. A run that stops on a NaN is recorded as failed, not retried. `--jobs N` runs N programs at once, each
writing its output to runs/benchmark_logs/: on a GPU they share it (a program's small updates leave it mostly
idle, `benchmarks/speed_gpu.md`), and their evaluations spread over the host's cores.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
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
    vmap_seeds: bool | None = None
    """train a cell's consecutive seeds as one vmapped program (the scripts' --num-seeds); unset: only on an
    accelerator, since on a CPU benchmarks/speed.md measures N vmapped seeds slower than N runs in a row"""
    work_dir: Path = ROOT
    """where the scripts run (and write their runs/ directories)"""
    jobs: int = 1
    """programs run at once, each in its own process (on a GPU: all on the one GPU)"""


def cell_settings(args: Args, algo: str, env_id: str, seed: int) -> dict:
    steps = args.cql_total_steps if algo == "cql" and args.cql_total_steps else args.total_steps
    command = [f"{algo}.py", "--env-id", env_id, "--seed", str(seed), "--total-steps", str(steps),
               "--eval-every", str(args.eval_every), *args.script_args.split()]
    return {"algo": algo, "name": args.name or algo, "env_id": env_id, "seed": seed, "total_steps": steps,
            "eval_every": args.eval_every, "command": "python " + " ".join(command)}


def split_by_seed(evaluations: Path | None) -> dict[int, list[str]]:
    """Header plus rows of each seed, from a run's evaluations.csv (one row per seed per evaluation)."""
    if not evaluations or not evaluations.is_file():
        return {}
    header, *rows = evaluations.read_text().splitlines()
    by_seed = defaultdict(list)
    for row in rows:
        by_seed[int(float(row.split(",")[1]))].append(row)
    return {seed: [header, *seed_rows] for seed, seed_rows in by_seed.items()}


RUNNING: set[subprocess.Popen] = set()  # the scripts running now, to stop them all at once under --jobs
STOPPING = threading.Event()  # set once they are being stopped: no script starts after that


def launch(command: list[str], cwd: Path, log: Path | None = None) -> int:
    """Run a training script to its end, its output to `log` if given. On Ctrl-C or SIGTERM here, it is asked
    once to stop, and waited for: it finishes its chunk of updates and saves a checkpoint that the next attempt
    resumes from."""
    if STOPPING.is_set():
        raise KeyboardInterrupt
    with open(log, "a") if log else contextlib.nullcontext() as out:
        process = subprocess.Popen(command, cwd=cwd, start_new_session=True,  # terminal Ctrl-C reaches it only via us
                                   stdout=out, stderr=subprocess.STDOUT if out else None)
        RUNNING.add(process)
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.terminate()
            try:
                process.wait()
            except KeyboardInterrupt:  # a second Ctrl-C: stop now
                process.kill()
            raise
        finally:
            RUNNING.discard(process)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of a stopped run with the most updates behind it (final.msgpack is written on a stop)."""
    from common.logger import read_checkpoint  # imports JAX: not needed to check the flags

    steps = {}
    for path in run_dir.glob("*.msgpack"):
        try:
            steps[path] = read_checkpoint(path)[0]["step"]
        except (ValueError, KeyError):
            continue  # half-written or foreign: skip it
    steps.pop(run_dir / "nonfinite.msgpack", None)
    return max(steps, key=steps.get) if steps else None


def newest_run_dir(work_dir: Path, exp_name: str) -> Path | None:
    found = sorted((work_dir / "runs").glob(f"*__{exp_name}__*"))
    return found[-1] if found else None


def run_program(cells: list[tuple[dict, Path]], machine: str, work_dir: Path, log: Path | None = None) -> str:
    """Train the cells' consecutive seeds in one process (--num-seeds); write each seed's evaluations and record.

    An earlier attempt at the same program that was stopped is resumed from its latest checkpoint."""
    first = cells[0][0]
    script, *flags = first["command"].split()[1:]
    flags = [*flags, "--num-seeds", str(len(cells))] if len(cells) > 1 else flags
    keep_checkpoints = "--save-every" in flags
    flags = flags if keep_checkpoints else [*flags, "--save-every", str(first["eval_every"])]
    launched = " ".join(["python", script, *flags])
    attempt_file = work_dir / "runs" / "benchmark_attempts" / f"{first['env_id']}__{first['name']}__{first['seed']}.json"
    attempt = json.loads(attempt_file.read_text()) if attempt_file.is_file() else {}
    resume_from = None
    if attempt.get("launched") == launched:
        earlier = newest_run_dir(work_dir, attempt["exp_name"])
        resume_from = latest_checkpoint(earlier) if earlier else None
    if resume_from is None:  # a fresh start; the name finds this run's directory among all the others
        attempt = {"launched": launched, "exp_name": f"bench-{uuid.uuid4().hex[:8]}", "wall_s": 0.0}
    attempt_file.parent.mkdir(parents=True, exist_ok=True)
    attempt_file.write_text(json.dumps(attempt) + "\n")

    command = [sys.executable, str(ROOT / script), *flags, "--exp-name", attempt["exp_name"]]
    if resume_from:
        print(f"resuming from {resume_from}", flush=True)
        command += ["--checkpoint", str(resume_from)]
    start = time.time()
    try:
        code = launch(command, work_dir, log)
        wall = attempt["wall_s"] + time.time() - start
        run_dir = newest_run_dir(work_dir, attempt["exp_name"])
        by_seed = split_by_seed(run_dir / "evaluations.csv" if run_dir else None)
        steps_done = min((int(float(by_seed[c["seed"]][-1].split(",")[0])) if len(by_seed.get(c["seed"], [])) > 1
                          else 0) for c, _ in cells)
        if code == 0 and steps_done < first["total_steps"]:
            raise KeyboardInterrupt  # the script alone was stopped (it saved and exited cleanly): not done
    except KeyboardInterrupt:
        attempt_file.write_text(json.dumps(attempt | {"wall_s": attempt["wall_s"] + time.time() - start}) + "\n")
        raise
    outcome = "finished" if code == 0 else f"failed (exit code {code}) at update {steps_done}"
    dataset = run_dir / "dataset.json" if run_dir else None
    for settings, out in cells:
        if settings["seed"] in by_seed:
            out.with_suffix(".csv").write_text("\n".join(by_seed[settings["seed"]]) + "\n")
        record = settings | {
            "outcome": outcome, "wall_s": round(wall, 1), "seeds_in_program": len(cells), "launched": launched,
            "machine": machine, "date": time.strftime("%Y-%m-%d"),
            "dataset": json.loads(dataset.read_text()) if dataset and dataset.is_file() else None}
        out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")  # written last: marks it done
    attempt_file.unlink()
    if not keep_checkpoints and run_dir:  # they were only there to resume from; final.msgpack stays
        for path in run_dir.glob("checkpoint_*.msgpack"):
            path.unlink()
    return outcome


def programs(todo: list[tuple[dict, Path]], vmap_seeds: bool) -> list[list[tuple[dict, Path]]]:
    """Group the cells to run into processes: consecutive seeds of one algorithm and dataset share one."""
    groups = []
    for cell in todo:
        last = groups[-1][-1][0] if groups else None
        if (vmap_seeds and last and (last["name"], last["env_id"]) == (cell[0]["name"], cell[0]["env_id"])
                and cell[0]["seed"] == last["seed"] + 1):
            groups[-1].append(cell)
        else:
            groups.append([cell])
    return groups


def main(args: Args):
    unknown = sorted(set(args.algos) - set(ALGOS))
    if unknown:
        raise SystemExit(f"error: unknown algorithm(s) {unknown}; choose from {list(ALGOS)}")
    if args.script_args and not args.name:
        raise SystemExit("error: --script-args changes the algorithm: give the cells a --name of their own")
    import jax  # imported only once the flags are known to be good

    from benchmarks.speed import machine
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
    vmap_seeds = args.vmap_seeds if args.vmap_seeds is not None else jax.default_backend() != "cpu"
    groups = programs(todo, vmap_seeds)
    if args.jobs > 1:
        return run_at_once(groups, args.jobs, this_machine, args.work_dir)
    for i, group in enumerate(groups, 1):
        seeds = [settings["seed"] for settings, _ in group]
        vmapped = f" (seeds {seeds}, vmapped)" if len(seeds) > 1 else ""
        print(f"[{i}/{len(groups)}] {group[0][0]['command']}{vmapped}", flush=True)
        for _, out in group:
            out.parent.mkdir(parents=True, exist_ok=True)
        try:
            outcome = run_program(group, this_machine, args.work_dir)
        except KeyboardInterrupt:
            raise SystemExit(f"interrupted during `{group[0][0]['command']}`; rerun the same command to go on")
        print(f"[{i}/{len(groups)}] {outcome}", flush=True)


def run_at_once(groups: list, jobs: int, machine: str, work_dir: Path):
    """`jobs` programs at a time. A stop (Ctrl-C, or a script that stopped alone) stops every running script
    the way a stop of one does: each saves a checkpoint that the rerun resumes from."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX would give the first program 75% of a GPU
    STOPPING.clear()
    logs = work_dir / "runs" / "benchmark_logs"
    logs.mkdir(parents=True, exist_ok=True)

    def run_one(i: int, group: list):
        first = group[0][0]
        log = logs / f"{first['env_id']}__{first['name']}__{first['seed']}.log"
        print(f"[{i}/{len(groups)}] started: {first['command']} (seeds {[c['seed'] for c, _ in group]}; "
              f"output in {log})", flush=True)
        for _, out in group:
            out.parent.mkdir(parents=True, exist_ok=True)
        outcome = run_program(group, machine, work_dir, log)
        print(f"[{i}/{len(groups)}] {outcome}: {first['command']}", flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(run_one, i, group) for i, group in enumerate(groups, 1)]
        try:
            for future in as_completed(futures):
                future.result()
        except KeyboardInterrupt:
            STOPPING.set()
            for process in list(RUNNING):
                process.terminate()
            pool.shutdown(cancel_futures=True)  # waits for the running scripts to save and exit
            raise SystemExit("interrupted; rerun the same command to go on") from None


if __name__ == "__main__":
    main(tyro.cli(Args))
