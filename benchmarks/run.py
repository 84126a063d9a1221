"""Train a grid of (algorithm, dataset, seed) runs and keep every evaluation under benchmarks/results/.

    python -m benchmarks.run --algos iql td3_bc awr cql --env-ids hopper-medium --seeds 0 1 2 \\
        --total-steps 300000 --cql-total-steps 100000
    python -m benchmarks.run --algos td3_bc --name plain_td3 --script-args="--bc-weight 0" --seeds 0
    python -m benchmarks.run --algos td3_bc --sweep alpha 0.5 1 2.5 5 10 --seeds 0 1 2   # a sweep cell
    python -m benchmarks.report     # benchmarks/results.md and the learning curves

Each run is the algorithm's own script, started as a subprocess with the same flags a user would type.
On a GPU, the consecutive seeds of one algorithm and dataset share one process (`--num-seeds`, one vmapped
program, which gives each seed what its own run would); --vmap-seeds / --no-vmap-seeds choose.
A finished run leaves `results/{env_id}/{name}__seed{seed}.csv` (every evaluation, with the losses and
values of the chunk before it) and a `.json` beside it (the seed's own command, the command launched, wall
time, machine, outcome). A sweep cell (`--sweep alpha 0.5 1 2.5`) records each value and seed as a run of its
own, `{name}__alpha2p5__seed{seed}` for 2.5, its record holding the value and the script's default; all its
values train in one program (the scripts' sweeps), with its seeds too where seeds are vmapped.
Rerunning the command skips every finished cell. A cell that was stopped (Ctrl-C,
`kill`, even a power cut) goes on from its latest checkpoint, saved every --eval-every updates,
and takes the updates it would have taken unstopped. A run that stops on a NaN is recorded as failed, not retried. `--jobs N` runs N programs at once, each
writing its output to runs/benchmark_logs/: on a GPU they share it (a program's small updates leave it mostly
idle, `benchmarks/speed_gpu.md`), and their evaluations spread over the host's cores.

`--launcher slurm` submits each cell (one algorithm on one dataset, with all its seeds) as one SLURM job through
submitit instead (benchmarks/slurm.py); the jobs run the same programs and write the same files. `--status` lists
each cell's state.
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
from typing import Literal

import tyro

from benchmarks.algorithms import ALGORITHMS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Args:
    algos: tuple[str, ...] = ALGORITHMS
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
    sweep: tuple[str, ...] = ()
    """a sweep cell: one of the scripts' sweepable flags, then its values (--sweep alpha 0.5 1 2.5 5 10); every value
    trains with every seed, all values in one program"""
    results: Path = RESULTS
    vmap_seeds: bool | None = None
    """train a cell's consecutive seeds as one vmapped program (the scripts' --num-seeds); unset: only on an
    accelerator, since on a CPU benchmarks/speed.md measures N vmapped seeds slower than N runs in a row"""
    work_dir: Path = ROOT
    """where the scripts run (and write their runs/ directories)"""
    jobs: int = 1
    """programs run at once, each in its own process (on a GPU: all on the one GPU)"""
    launcher: Literal["local", "slurm"] = "local"
    """local: train the cells here; slurm: submit each cell (one algorithm on one dataset, all its seeds) as one
    SLURM job through submitit, and return"""
    status: bool = False
    """list each cell's state (done, running or queued, failed with the last line of its log, not started) and exit"""

    # --launcher slurm: what each job asks SLURM for (README: what each flag maps to in sbatch)
    partition: str | None = None
    """SLURM partition (sbatch --partition); unset: the cluster's default"""
    time_min: int = 240
    """time limit of one job in minutes (sbatch --time); a job that reaches it saves and is requeued"""
    gpus_per_job: int = 1
    """GPUs per job (sbatch --gpus-per-node); a job with a GPU trains its seeds as one vmapped program"""
    cpus_per_job: int = 4
    """CPU cores per job (sbatch --cpus-per-task); the evaluation episodes run on them"""
    max_array_size: int = 1000
    """at most this many jobs per job array (SLURM's MaxArraySize is 1001 unless the cluster changed it)"""
    array_parallelism: int = 256
    """at most this many jobs of one array running at once (the %N of sbatch --array)"""
    max_timeouts: int = 10
    """times one job may reach --time-min and be requeued to go on (preemptions do not count)"""
    jobs_dir: Path | None = None
    """submitit's job files and logs, and which job trains which cell; on a filesystem every node shares
    (default: WORK_DIR/runs/benchmark_jobs)"""
    submitit_cluster: Literal["slurm", "local"] = "slurm"
    """local: run the same jobs on this machine through submitit's LocalExecutor, to try the path without a
    cluster; the command then waits for them"""


def cell_settings(args: Args, algo: str, env_id: str, seed: int) -> dict:
    steps = args.cql_total_steps if algo == "cql" and args.cql_total_steps else args.total_steps
    command = [f"{algo}.py", "--env-id", env_id, "--seed", str(seed), "--total-steps", str(steps),
               "--eval-every", str(args.eval_every), *args.script_args.split()]
    return {"algo": algo, "name": args.name or algo, "env_id": env_id, "seed": seed, "total_steps": steps,
            "eval_every": args.eval_every, "command": "python " + " ".join(command)}


def with_value(settings: dict, flag: str, value: str) -> dict:
    """A sweep cell's run for one value: the seed's own command with `--flag value` last, and the value recorded."""
    name = flag.replace("-", "_")  # the scripts' field, and its column in evaluations.csv
    return settings | {"command": f"{settings['command']} --{name.replace('_', '-')} {value}",
                       "sweep": {"flag": name, "value": float(value)}}


def run_key(settings: dict) -> tuple:
    """(swept value or None, seed): which rows of a program's evaluations.csv are this run's."""
    value = settings.get("sweep", {}).get("value")
    return None if value is None else float(f"{value:.6g}"), settings["seed"]  # as evaluations.csv writes it


def split_by_run(evaluations: Path | None, flag: str | None = None,
                 only_value: float | None = None) -> dict[tuple, list[str]]:
    """Header plus rows of each (swept value, seed), from a run's evaluations.csv (one row per seed and value per
    evaluation; the value is None without a sweep). A one-value sweep is a plain flag to the script, so its rows
    name no value: they are only_value's."""
    if not evaluations or not evaluations.is_file():
        return {}
    header, *rows = evaluations.read_text().splitlines()
    columns = header.split(",")
    by_run = defaultdict(list)
    for row in rows:
        cells = row.split(",")
        value = only_value if only_value is not None else float(cells[columns.index(flag)]) if flag else None
        by_run[value, int(float(cells[columns.index("seed")]))].append(row)
    return {key: [header, *run_rows] for key, run_rows in by_run.items()}


RUNNING: set[subprocess.Popen] = set()  # the scripts running now, to stop them all at once under --jobs
STOPPING = threading.Event()  # set once they are being stopped: no script starts after that
# Signals the scripts ignore. A SLURM job sets its warning signal here: SLURM may send it to every process of
# the job, and by default it would kill a script before it saved; the job's own handler stops the script instead.
IGNORED_BY_SCRIPTS: tuple[int, ...] = ()


def _ignore_signals():
    for signum in IGNORED_BY_SCRIPTS:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def stops_held():
    """Holds back Ctrl-C and SIGTERM (in the main thread, where Python handles them) and lists those that came."""
    held = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {signum: signal.signal(signum, lambda received, _frame: held.append(received))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def launch(command: list[str], cwd: Path, log: Path | None = None) -> int:
    """Run a training script to its end, its output to `log` if given. On Ctrl-C or SIGTERM here, it is asked
    once to stop, and waited for: it finishes its chunk of updates and saves a checkpoint that the next attempt
    resumes from."""
    if STOPPING.is_set():
        raise KeyboardInterrupt
    with open(log, "a") if log else contextlib.nullcontext() as out:
        with stops_held() as held:  # a stop while Popen runs would leave the started script running unowned
            process = subprocess.Popen(command, cwd=cwd, start_new_session=True,  # Ctrl-C reaches it only via us
                                       stdout=out, stderr=subprocess.STDOUT if out else None,
                                       preexec_fn=_ignore_signals if IGNORED_BY_SCRIPTS else None)
            RUNNING.add(process)
        try:
            for signum in held:
                signal.raise_signal(signum)  # now that the script is ours to stop
            if STOPPING.is_set():  # under --jobs, the grid was stopped while this script started
                process.terminate()
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


def stop_running_scripts():
    """Ask every running script to stop (it finishes its chunk of updates and saves a checkpoint), and wait until
    each has exited. Safe in a signal handler that interrupted `launch`: Popen.wait holds a lock there, so this waits
    with waitid(WNOWAIT), which leaves the exited script for that Popen.wait to reap."""
    for process in list(RUNNING):
        process.terminate()
    for process in list(RUNNING):
        try:
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # it had exited and been reaped already


def latest_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The checkpoint of a stopped run with the most updates behind it (final.msgpack is written on a stop), and
    its update count."""
    from common.checkpoints import read_checkpoint  # imports JAX: not needed to check the flags

    steps = {}
    for path in run_dir.glob("*.msgpack"):
        try:
            steps[path] = read_checkpoint(path)[0]["step"]
        except (ValueError, KeyError):
            continue  # half-written or foreign: skip it
    steps.pop(run_dir / "nonfinite.msgpack", None)
    return max(steps.items(), key=lambda item: item[1]) if steps else None


def newest_run_dir(work_dir: Path, exp_name: str) -> Path | None:
    found = sorted((work_dir / "runs").glob(f"*__{exp_name}__*"))
    return found[-1] if found else None


def run_program(cells: list[tuple[dict, Path]], machine: str, work_dir: Path, log: Path | None = None) -> str:
    """Train the cells' consecutive seeds in one process (--num-seeds); write each seed's evaluations and record.

    An earlier attempt at the same program that was stopped is resumed from its latest checkpoint."""
    first = cells[0][0]
    script, *flags = first["command"].split()[1:]
    seeds = list(dict.fromkeys(settings["seed"] for settings, _ in cells))
    flag = first.get("sweep", {}).get("flag")
    if flag:  # each run's own command ends with its value: the program takes all of them
        values = [settings["command"].split()[-1] for settings, _ in cells if settings["seed"] == seeds[0]]
        flags = [*flags[:-1], *values]
    flags = [*flags, "--num-seeds", str(len(seeds))] if len(seeds) > 1 else flags
    keep_checkpoints = "--save-every" in flags
    flags = flags if keep_checkpoints else [*flags, "--save-every", str(first["eval_every"])]
    launched = " ".join(["python", script, *flags])
    attempt_file = work_dir / "runs" / "benchmark_attempts" / f"{first['env_id']}__{first['name']}__{first['seed']}.json"
    attempt = json.loads(attempt_file.read_text()) if attempt_file.is_file() else {}
    resume_from, start_step = None, 0
    if attempt.get("launched") == launched:
        earlier = newest_run_dir(work_dir, attempt["exp_name"])
        resume_from, start_step = (latest_checkpoint(earlier) if earlier else None) or (None, 0)
    if resume_from is None:  # a fresh start; the name finds this run's directory among all the others
        attempt = {"launched": launched, "exp_name": f"bench-{uuid.uuid4().hex[:8]}", "wall_s": 0.0}
    # the machines that trained it, each from the update it started at (attempts older than this list lack it)
    stretches = attempt.setdefault("machines", [{"machine": "not recorded", "from_update": 0}] if resume_from else [])
    if not stretches or stretches[-1]["machine"] != machine:
        stretches.append({"machine": machine, "from_update": start_step})
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
        only_value = run_key(first)[0] if flag and len(values) == 1 else None
        by_run = split_by_run(run_dir / "evaluations.csv" if run_dir else None, flag, only_value)
        steps_done = min((int(float(by_run[run_key(c)][-1].split(",")[0])) if len(by_run.get(run_key(c), [])) > 1
                          else 0) for c, _ in cells)
        if code == 0 and steps_done < first["total_steps"]:
            raise KeyboardInterrupt  # the script alone was stopped (it saved and exited cleanly): not done
        if code != 0 and STOPPING.is_set():
            raise KeyboardInterrupt  # ended by the grid's stop before it could save (still starting): not a failure
    except BaseException:  # a stop, or a SLURM job's exit after its checkpoint: keep the time spent for the record
        attempt_file.write_text(json.dumps(attempt | {"wall_s": attempt["wall_s"] + time.time() - start}) + "\n")
        raise
    outcome = "finished" if code == 0 else f"failed (exit code {code}) at update {steps_done}"
    wall = max(wall, script_wall(by_run))
    dataset = run_dir / "dataset.json" if run_dir else None
    default = sweep_default(first["algo"], flag) if flag else None
    for settings, out in cells:
        if run_key(settings) in by_run:
            out.with_suffix(".csv").write_text("\n".join(by_run[run_key(settings)]) + "\n")
        record = settings | ({"sweep": settings["sweep"] | {"default": default}} if flag else {}) | {
            "outcome": outcome, "wall_s": round(wall, 1), "seeds_in_program": len(cells), "launched": launched,
            "machine": machines_text(stretches, first["total_steps"]), "date": time.strftime("%Y-%m-%d"),
            "dataset": json.loads(dataset.read_text()) if dataset and dataset.is_file() else None}
        write_atomically(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")  # written last: marks it done
    attempt_file.unlink()
    if not keep_checkpoints and run_dir:  # they were only there to resume from; final.msgpack stays
        for path in run_dir.glob("checkpoint_*.msgpack"):
            path.unlink()
    return outcome


def script_wall(by_run: dict[tuple, list[str]]) -> float:
    """The training seconds the script itself counted, carried in its checkpoints across resumes. A stretch
    killed without warning (a machine taken back) is missing from the runner's own count, but not from this."""
    header_and_last = [(rows[0].split(","), rows[-1].split(",")) for rows in by_run.values() if len(rows) > 1]
    return max((float(last[header.index("wall_s")]) for header, last in header_and_last), default=0.0)


def machines_text(stretches: list[dict], total_steps: int) -> str:
    """The machine, or for a run resumed on another one each machine with the updates it trained."""
    if len(stretches) == 1:
        return stretches[0]["machine"]
    ends = [s["from_update"] for s in stretches[1:]] + [total_steps]
    return "; ".join(f"{s['machine']} (updates {s['from_update']} to {end})" for s, end in zip(stretches, ends))


def sweep_default(algo: str, flag: str) -> float:
    """The script's default value of a swept flag, for the record (report.py marks it in the sensitivity figure)."""
    from benchmarks.algorithms import load_algorithm  # imports the script, and so JAX: only where it trains

    return getattr(load_algorithm(algo)[0].Args(), flag)


def write_atomically(path: Path, text: str):
    """A stop in the middle (a SLURM job exits right after its checkpoint) never leaves half a record."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def programs(todo: list[tuple[dict, Path]], vmap_seeds: bool) -> list[list[tuple[dict, Path]]]:
    """Group the cells to run into processes: a sweep's values for one seed share one, and with vmap_seeds so do
    consecutive seeds of one algorithm and dataset (for a sweep: with the same values to go)."""
    def same_cell(a, b):
        return (a["name"], a["env_id"]) == (b["name"], b["env_id"])

    per_seed = []  # a sweep's values of one seed; else one run each
    for cell in todo:
        last = per_seed[-1][-1][0] if per_seed else None
        if last and "sweep" in cell[0] and same_cell(last, cell[0]) and cell[0]["seed"] == last["seed"]:
            per_seed[-1].append(cell)
        else:
            per_seed.append([cell])
    def values(cells):  # of the first seed: every seed of a program trains the same values
        first_seed = cells[0][0]["seed"]
        return [settings.get("sweep", {}).get("value") for settings, _ in cells if settings["seed"] == first_seed]

    groups = []
    for cells in per_seed:
        last = groups[-1] if groups else None
        if (vmap_seeds and last and same_cell(last[-1][0], cells[0][0])
                and cells[0][0]["seed"] == last[-1][0]["seed"] + 1 and values(last) == values(cells)):
            groups[-1] += cells
        else:
            groups.append(cells)
    return groups


def main(args: Args):
    unknown = sorted(set(args.algos) - set(ALGORITHMS))
    if unknown:
        raise SystemExit(f"error: unknown algorithm(s) {unknown}; choose from {list(ALGORITHMS)}")
    if args.script_args and not args.name:
        raise SystemExit("error: --script-args changes the algorithm: give the cells a --name of their own")
    if args.launcher == "slurm" or args.status:
        from benchmarks import slurm  # imports submitit, and never JAX: the submit host may have no GPU

        if args.launcher == "slurm":
            slurm.check_args(args)
    if args.sweep and (len(args.sweep) < 2 or len(set(args.sweep[1:])) < len(args.sweep) - 1):
        raise SystemExit(f"error: --sweep takes a flag and its different values (--sweep alpha 1 2.5 5), "
                         f"got {' '.join(args.sweep) or 'nothing'}")
    cells = [cell_settings(args, algo, env_id, seed)
             for env_id in args.env_ids for algo in args.algos for seed in args.seeds]
    if args.sweep:
        cells = [with_value(settings, args.sweep[0], value) for settings in cells for value in args.sweep[1:]]
    if args.status:
        return slurm.print_status(args, cells)
    todo = unfinished(args, cells)
    print(f"{len(cells) - len(todo)} of {len(cells)} runs already done; {len(todo)} to go")
    if args.launcher == "slurm":
        return slurm.main(args, todo)
    import jax  # imported only once the flags are known to be good

    from benchmarks.speed import machine
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the grid as Ctrl-C does
    this_machine = machine()
    vmap_seeds = args.vmap_seeds if args.vmap_seeds is not None else jax.default_backend() != "cpu"
    groups = programs(todo, vmap_seeds)
    if args.jobs > 1:
        return run_at_once(groups, args.jobs, this_machine, args.work_dir)
    for i, group in enumerate(groups, 1):
        seeds = list(dict.fromkeys(settings["seed"] for settings, _ in group))
        values = [s["sweep"]["value"] for s, _ in group if s["seed"] == seeds[0] and "sweep" in s]
        vmapped = f" (seeds {seeds}" + (f", values {values}" if values else "") + ", vmapped)" if len(group) > 1 else ""
        print(f"[{i}/{len(groups)}] {group[0][0]['command']}{vmapped}", flush=True)
        for _, out in group:
            out.parent.mkdir(parents=True, exist_ok=True)
        try:
            outcome = run_program(group, this_machine, args.work_dir)
        except KeyboardInterrupt:
            raise SystemExit(f"interrupted during `{group[0][0]['command']}`; rerun the same command to go on")
        print(f"[{i}/{len(groups)}] {outcome}", flush=True)


def record_path(args: Args, settings: dict) -> Path:
    """Where a cell's seed keeps its evaluations (.csv) and its record (.json), without the suffix."""
    value = settings["command"].split()[-1].replace(".", "p")  # a sweep's value as typed, 2.5 as 2p5: no dot in a stem
    value = f"__{settings['sweep']['flag']}{value}" if "sweep" in settings else ""
    return args.results / settings["env_id"] / f"{settings['name']}{value}__seed{settings['seed']}"


def unfinished(args: Args, cells: list[dict]) -> list[tuple[dict, Path]]:
    """The (settings, record path) of every seed not recorded yet; stops if a record was made by another command."""
    todo = []
    for settings in cells:
        out = record_path(args, settings)
        record = out.with_suffix(".json")
        if record.is_file():
            previous = json.loads(record.read_text())
            if previous["command"] != settings["command"]:
                raise SystemExit(f"error: {record} was made by `{previous['command']}`, not `{settings['command']}`; "
                                 f"pass another --name or delete it")
            continue
        todo.append((settings, out))
    return todo


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
