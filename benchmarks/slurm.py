"""`python -m benchmarks.run ... --launcher slurm`: each cell of the grid as one SLURM job, through submitit.

A cell is one algorithm on one dataset, with all its seeds. Its job trains them exactly as `--launcher local` does
(`run.run_program`: the same scripts, checkpoints, CSVs and JSON records under benchmarks/results/), one vmapped
program when the job has a GPU, else one seed after another. So a job that is stopped goes on from the cell's own
checkpoint on disk, update for update: when SLURM warns it (preemption, or its time limit is near), submitit calls
its checkpoint hook, which stops the script (it saves), and requeues the same call.

Which job trains which cell is kept in `{jobs_dir}/cells/{env_id}__{name}.json` (plain JSON: the job id). A rerun
asks submitit whether that job is done (its result file, else `sacct`), and resubmits only cells whose jobs ended
without recording every seed. Datasets are fetched or built once, by the submit command, before any job starts.
"""

import json
import os
import signal
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import submitit

from benchmarks import run

ACTIVE_LABELS = {"RUNNING": "running", "COMPLETING": "running"}  # any other unfinished state is "queued"
SUBMITTED: dict[str, submitit.Job] = {}  # this process's jobs: a local job's state is known only to its submitter


class MissingDataset(Exception):
    """A job found its dataset missing from the Minari store (the submit command prepares it)."""


class StoppedEarly(Exception):
    """A job's script stopped before its last update, by a signal from outside the job."""


def check_args(args):
    problems = [
        (args.jobs != 1, "--jobs is for --launcher local; SLURM runs the jobs side by side"),
        (args.time_min <= 0 or args.cpus_per_job <= 0 or args.gpus_per_job < 0,
         "--time-min and --cpus-per-job must be positive and --gpus-per-job at least 0"),
        (args.max_array_size <= 0 or args.array_parallelism <= 0 or args.max_timeouts < 0,
         "--max-array-size and --array-parallelism must be positive and --max-timeouts at least 0"),
    ]
    for failed, message in problems:
        if failed:
            raise SystemExit(f"error: {message}")


def jobs_dir(args) -> Path:
    return (args.jobs_dir or args.work_dir / "runs" / "benchmark_jobs").resolve()


def cell_key(settings: dict) -> str:
    return f"{settings['env_id']}__{settings['name']}"


def by_cell(todo: list[tuple[dict, Path]]) -> dict[str, list[tuple[dict, Path]]]:
    cells = defaultdict(list)
    for settings, out in todo:
        cells[cell_key(settings)].append((settings, out))
    return dict(cells)


class CellJob(submitit.helpers.Checkpointable):
    """One cell's unrecorded seeds, trained in one job as `--launcher local` trains them.

    submitit stores this object with (cloud)pickle in its job folder, as it stores every job: those files are
    written and read only by the user's own submissions and jobs, never downloaded.
    """

    def __init__(self, cells: list[tuple[dict, Path]], dataset_id: str, work_dir: Path, vmap_seeds: bool):
        self.cells, self.dataset_id, self.work_dir, self.vmap_seeds = cells, dataset_id, work_dir, vmap_seeds

    def __call__(self) -> list[str]:
        import minari

        if self.dataset_id not in minari.list_local_datasets():
            env_id = self.cells[0][0]["env_id"]
            raise MissingDataset(f"dataset {self.dataset_id} (for {env_id}) is not in the Minari store "
                                 f"{os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')}; build it with "
                                 f"`python -m benchmarks.make_datasets {env_id}` and resubmit")
        os.environ["HF_HUB_OFFLINE"] = "1"  # the scripts read that store only: the data the submit command checked
        run.IGNORED_BY_SCRIPTS = (submitit.JobEnvironment._usr_sig(),)
        todo = [(settings, out) for settings, out in self.cells if not out.with_suffix(".json").is_file()]
        with small_gpu_share():
            from benchmarks.speed import machine

            this_machine = machine()
        outcomes = []
        for group in run.programs(todo, self.vmap_seeds):  # a requeued job skips the seeds it recorded before
            print(f"{group[0][0]['command']} (seeds {[settings['seed'] for settings, _ in group]})", flush=True)
            for _, out in group:
                out.parent.mkdir(parents=True, exist_ok=True)
            try:
                outcomes.append(run.run_program(group, this_machine, self.work_dir))
            except KeyboardInterrupt:
                raise StoppedEarly(f"{group[0][0]['command']} was stopped before its last update; resubmit the grid "
                                   f"to go on from its checkpoint") from None
            print(outcomes[-1], flush=True)
        return outcomes

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """submitit calls this on SLURM's warning signal: stop the script, which saves a checkpoint, and have the
        same call requeued; it resumes from that checkpoint."""
        run.stop_running_scripts()
        return super().checkpoint(*args, **kwargs)


@contextmanager
def small_gpu_share():
    """Asking JAX which device the job has would otherwise reserve 75% of its GPU for this process, not the script."""
    before = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XLA_PYTHON_CLIENT_PREALLOCATE")
        else:
            os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = before


def make_executor(args) -> submitit.AutoExecutor:
    try:
        executor = submitit.AutoExecutor(folder=jobs_dir(args) / "%j", cluster=args.submitit_cluster,
                                         slurm_max_num_timeout=args.max_timeouts)
    except RuntimeError as e:  # submitit found no srun
        raise SystemExit(f"error: --launcher slurm submits from a machine with SLURM's commands ({e}); "
                         f"--submitit-cluster local runs the same jobs on this one")
    executor.update_parameters(name="offrl-grid", timeout_min=args.time_min, gpus_per_node=args.gpus_per_job,
                               cpus_per_task=args.cpus_per_job, slurm_partition=args.partition,
                               slurm_array_parallelism=args.array_parallelism)
    return executor


def submitted_job(entry: dict) -> submitit.Job:
    """The submitit job a cell file names, to ask its state."""
    if entry["job_id"] in SUBMITTED:
        return SUBMITTED[entry["job_id"]]
    job_class = submitit.SlurmJob if entry["cluster"] == "slurm" else submitit.LocalJob
    return job_class(folder=entry["folder"], job_id=entry["job_id"])


def cell_jobs(args) -> dict[str, tuple[dict, submitit.Job]]:
    """Each cell's latest job, by cell key; all constructed before any is asked, so one sacct call answers them."""
    entries = [json.loads(path.read_text()) for path in sorted((jobs_dir(args) / "cells").glob("*.json"))]
    return {entry["cell"]: (entry, submitted_job(entry)) for entry in entries}


def prepare_datasets(env_ids) -> dict[str, str]:
    """Fetch or build each dataset into the Minari store here, once, before any job starts; the jobs only read it.
    A build step rather than a lock: no job waits on a GPU while another builds, a failure shows at submission,
    and it needs no file locking, which shared filesystems do not all honour."""
    from common.datasets import DatasetError, load_dataset

    dataset_ids = {}
    for env_id in dict.fromkeys(env_ids):
        try:
            dataset_ids[env_id] = load_dataset(env_id).dataset_id
        except DatasetError as e:
            raise SystemExit(f"error: {e}")
    return dataset_ids


def submit(args, todo: list[tuple[dict, Path]]) -> list[submitit.Job]:
    """Submit a job for every cell with unrecorded seeds, except cells whose job is still queued or running."""
    cells, jobs_now = by_cell(todo), cell_jobs(args)
    for key in list(cells):
        if key in jobs_now and not jobs_now[key][1].done():
            entry, job = jobs_now[key]
            print(f"{key}: job {entry['job_id']} is still queued or running ({job.state}); not resubmitted")
            del cells[key]
    if not cells:
        return []
    executor = make_executor(args)  # before the datasets: a machine that cannot submit stops here
    dataset_ids = prepare_datasets(cell[0][0]["env_id"] for cell in cells.values())
    vmap_seeds = args.vmap_seeds if args.vmap_seeds is not None else args.gpus_per_job > 0
    keys, jobs = list(cells), []
    for start in range(0, len(keys), args.max_array_size):
        chunk = keys[start:start + args.max_array_size]
        try:
            with executor.batch():  # one job array
                for key in chunk:
                    env_id = cells[key][0][0]["env_id"]
                    jobs.append(executor.submit(CellJob(cells[key], dataset_ids[env_id], args.work_dir.resolve(),
                                                        vmap_seeds)))
        except Exception as e:  # sbatch refused it: say why, in its words
            raise SystemExit(f"error: submitting the jobs failed: {e}")
    (jobs_dir(args) / "cells").mkdir(parents=True, exist_ok=True)
    for key, job in zip(keys, jobs):
        SUBMITTED[job.job_id] = job
        entry = {"cell": key, "job_id": job.job_id, "cluster": args.submitit_cluster,
                 "folder": str(jobs_dir(args) / "%j"), "seeds": [settings["seed"] for settings, _ in cells[key]],
                 "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        run.write_atomically(jobs_dir(args) / "cells" / f"{key}.json", json.dumps(entry, indent=2) + "\n")
        print(f"{key}: submitted job {job.job_id} (seeds {entry['seeds']}; log {job.paths.stdout})")
    return jobs


def main(args, todo: list[tuple[dict, Path]]):
    jobs = submit(args, todo)
    if args.submitit_cluster != "local" or not jobs:
        return jobs
    print(f"waiting for the {len(jobs)} local job(s); Ctrl-C stops them, and the rerun goes on", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for job in jobs:
            job.wait()
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel()
        raise SystemExit("interrupted; rerun the same command to go on") from None
    for job in jobs:
        print(f"job {job.job_id}: {job.state}")
    return jobs


def last_log_line(job: submitit.Job) -> str:
    """The job's last words: the last line of its error log that is not submitit's own bookkeeping."""
    path = job.paths.stderr
    if not path.is_file():
        return f"no log at {path}"
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        text = f.read().decode(errors="replace")
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and not line.startswith("submitit ")]
    return lines[-1] if lines else f"{path} is empty"


def seed_state(settings: dict, out: Path, job_of_cell) -> str:
    record = out.with_suffix(".json")
    entry, job = job_of_cell or (None, None)
    in_job = job is not None and settings["seed"] in entry["seeds"]
    if record.is_file():
        outcome = json.loads(record.read_text())["outcome"]
        if outcome == "finished":
            return "done"
        return outcome + (f"; its log ends: {last_log_line(job)}" if in_job else "")
    if not in_job:
        return "not started"
    if not job.done():
        return f"{ACTIVE_LABELS.get(job.state, 'queued')} (job {entry['job_id']}, {job.state})"
    return f"failed (job {entry['job_id']}): {last_log_line(job)}"


def print_status(args, cells: list[dict]):
    """One line per cell: its seeds grouped by state."""
    jobs_now = cell_jobs(args)
    for key, seeds in by_cell([(settings, run.record_path(args, settings)) for settings in cells]).items():
        states = defaultdict(list)
        for settings, out in seeds:
            states[seed_state(settings, out, jobs_now.get(key))].append(settings)
        print(f"{key}: " + "; ".join(f"{state} ({which_runs(runs)})" for state, runs in states.items()))


def which_runs(runs: list[dict]) -> str:
    """The runs of a status line: "seeds 0, 1", or a sweep cell's "alpha 1, 2.5 x seeds 0, 1" (run by run if the
    values and seeds do not make a full grid)."""
    seeds = sorted({settings["seed"] for settings in runs})
    plural = "s" if len(seeds) > 1 else ""
    if "sweep" not in runs[0]:
        return f"seed{plural} {', '.join(map(str, seeds))}"
    flag = runs[0]["sweep"]["flag"]
    values = sorted({settings["sweep"]["value"] for settings in runs})
    if len(values) * len(seeds) == len(runs):
        return f"{flag} {', '.join(f'{v:g}' for v in values)} x seed{plural} {', '.join(map(str, seeds))}"
    return ", ".join(f"{flag} {settings['sweep']['value']:g} seed {settings['seed']}" for settings in runs)
