"""benchmarks/slurm.py: the grid through submitit (`--launcher slurm`), tested with submitit's LocalExecutor; no SLURM."""

import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import flax.serialization
import numpy as np
import pytest
import submitit

from benchmarks import report, run, slurm
from tests.helpers import small_grid


def local_jobs(tiny_hopper, tmp_path, **overrides) -> run.Args:
    """A grid whose jobs go through submitit's LocalExecutor, on the CPU, with their files under tmp_path."""
    settings = dict(launcher="slurm", submitit_cluster="local", gpus_per_job=0, cpus_per_job=1, vmap_seeds=False)
    return small_grid(tiny_hopper, tmp_path, **(settings | overrides))


def evaluations_without_time(path: Path) -> list[dict]:
    curve = report.read_csv(path)
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in
            (dict(zip(curve, values)) for values in zip(*curve.values()))]


def record_without_time(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("wall_s", "date")}


def wait_for(condition, what: str, seconds: float = 600):
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def test_local_executor_jobs_record_what_the_local_launcher_records_and_a_rerun_submits_nothing(
        tiny_hopper, tmp_path, monkeypatch, capsys):
    grid = dict(algos=("iql",), seeds=(0, 1), name=None, script_args="")
    small = " ".join(["--hidden-dims", "32", "32", "--batch-size", "32", "--log-every", "100", "--eval-episodes", "2"])
    monkeypatch.setattr(run, "cell_settings", with_small_networks(run.cell_settings, small))
    run.main(small_grid(tiny_hopper, tmp_path / "here", vmap_seeds=False, **grid))
    jobs = run.main(local_jobs(tiny_hopper, tmp_path / "jobs", **grid))
    assert len(jobs) == 1 and jobs[0].state == "FINISHED"  # one job per cell, both seeds in it

    here, there = tmp_path / "here" / "results" / tiny_hopper, tmp_path / "jobs" / "results" / tiny_hopper
    names = sorted(path.name for path in here.iterdir())
    assert names == sorted(path.name for path in there.iterdir()) and len(names) == 4
    for name in names:
        if name.endswith(".csv"):
            assert evaluations_without_time(here / name) == evaluations_without_time(there / name)
        else:
            assert record_without_time(here / name) == record_without_time(there / name)
    assert report.load_cells(tmp_path / "jobs" / "results").keys() == {(tiny_hopper, "iql")}

    def no_submission(*args, **kwargs):
        raise AssertionError("a finished grid submitted a job")

    monkeypatch.setattr(submitit, "AutoExecutor", no_submission)
    capsys.readouterr()
    assert run.main(local_jobs(tiny_hopper, tmp_path / "jobs", **grid)) == []
    assert "2 of 2 runs already done; 0 to go" in capsys.readouterr().out
    run.main(local_jobs(tiny_hopper, tmp_path / "jobs", status=True, **grid))
    assert capsys.readouterr().out.splitlines() == [f"{tiny_hopper}__iql: done (seeds 0, 1)"]


def with_small_networks(cell_settings, flags: str):
    """The grid's cells under their plain algorithm names, trained with tiny networks (a --script-args would need --name)."""
    def small(args, algo, env_id, seed):
        settings = cell_settings(args, algo, env_id, seed)
        return settings | {"command": f"{settings['command']} {flags}"}
    return small


def children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def test_a_preempted_job_is_requeued_and_ends_as_an_uninterrupted_run(tiny_hopper, tmp_path, capsys):
    steps = dict(total_steps=600, eval_every=100)
    run.main(small_grid(tiny_hopper, tmp_path / "here", **steps))
    args = local_jobs(tiny_hopper, tmp_path / "jobs", **steps)
    (job,) = slurm.submit(args, run.unfinished(args, [run.cell_settings(args, "iql", tiny_hopper, 0)]))
    wait_for(lambda: list((tmp_path / "jobs" / "runs").glob("*__bench-*/checkpoint_100.msgpack")), "update 100")

    (task,) = children(int(job.job_id))  # the process submitit runs the job in, under its local controller
    os.kill(task, signal.SIGUSR2)  # what SLURM sends a job it preempts, or before its time limit
    capsys.readouterr()
    assert run.main(args) == []  # its job is still on (being requeued): the rerun leaves it alone
    assert f"{tiny_hopper}__small_iql: job {job.job_id} is still queued or running (RUNNING)" in capsys.readouterr().out
    job.wait()
    log = job.stdout()
    assert "Requeued job" in log and "resuming from" in log

    (here,) = (tmp_path / "here" / "runs").glob("*__bench-*/final.msgpack")
    (there,) = (tmp_path / "jobs" / "runs").glob("*__bench-*/final.msgpack")
    saved = [flax.serialization.msgpack_restore(path.read_bytes())["state"] for path in (here, there)]
    assert json.loads(flax.serialization.msgpack_restore(there.read_bytes())["meta"])["step"] == 600
    jax_tree_equal(*saved)
    name = "small_iql__seed0.csv"
    assert (evaluations_without_time(tmp_path / "here" / "results" / tiny_hopper / name)
            == evaluations_without_time(tmp_path / "jobs" / "results" / tiny_hopper / name))


def jax_tree_equal(a, b):
    import jax

    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Three cells with SLURM jobs, as a fake `sacct` on the PATH reports them (running, queued, failed), and one
    cell without a job; seed 0 of the last one is recorded as done. No SLURM is installed or called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\nprintf 'JobID|State|NodeList\\n9001|RUNNING|n1\\n"
                                   "9002_1|PENDING|None assigned\\n9003|FAILED|n3\\n'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    args = small_grid("hopper-medium", tmp_path, algos=("iql", "td3_bc", "awr", "cql"), seeds=(0, 1), name=None,
                      script_args="", launcher="slurm")
    folder = slurm.jobs_dir(args) / "%j"
    (slurm.jobs_dir(args) / "cells").mkdir(parents=True)
    for algo, job_id in (("iql", "9001"), ("td3_bc", "9002_1"), ("awr", "9003")):
        entry = {"cell": f"hopper-medium__{algo}", "job_id": job_id, "cluster": "slurm", "folder": str(folder),
                 "seeds": [0, 1]}
        (slurm.jobs_dir(args) / "cells" / f"hopper-medium__{algo}.json").write_text(json.dumps(entry))
    log = Path(str(folder).replace("%j", "9003")) / "9003_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last):\n  ...\nbenchmarks.slurm.MissingDataset: dataset d is missing\n"
                   "submitit ERROR (2026-12-01 10:00:00,000) - Submitted job triggered an exception\n")
    done = run.record_path(args, run.cell_settings(args, "cql", "hopper-medium", 0))
    done.parent.mkdir(parents=True)
    done.with_suffix(".json").write_text(json.dumps(run.cell_settings(args, "cql", "hopper-medium", 0)
                                                    | {"outcome": "finished"}))
    return args


def fake_executor(arrays: list):
    """Stands in for submitit.AutoExecutor: keeps each job array's submissions instead of calling sbatch."""
    class FakeExecutor:
        def __init__(self, folder, cluster=None, **kwargs):
            self.folder = folder

        def update_parameters(self, **kwargs):
            pass

        @contextlib.contextmanager
        def batch(self):
            arrays.append([])
            yield

        def submit(self, cell_job):
            arrays[-1].append(cell_job)
            return submitit.SlurmJob(folder=self.folder, job_id=f"{7000 + len(arrays)}_{len(arrays[-1]) - 1}")
    return FakeExecutor


def test_a_rerun_resubmits_only_cells_whose_jobs_ended_unrecorded(cluster, monkeypatch, capsys):
    arrays = []
    monkeypatch.setattr(submitit, "AutoExecutor", fake_executor(arrays))
    monkeypatch.setattr(slurm, "prepare_datasets", lambda env_ids: {env_id: "offrl-standin/d-v0" for env_id in env_ids})
    run.main(dataclasses.replace(cluster, max_array_size=1))
    out = capsys.readouterr().out
    assert "hopper-medium__iql: job 9001 is still queued or running (RUNNING); not resubmitted" in out
    assert "hopper-medium__td3_bc: job 9002_1 is still queued or running (PENDING); not resubmitted" in out
    submitted = [[(job.cells[0][0]["algo"], [settings["seed"] for settings, _ in job.cells]) for job in array]
                 for array in arrays]
    assert submitted == [[("awr", [0, 1])], [("cql", [1])]]  # one array each (--max-array-size 1); cql's seed 0 is done
    cql = json.loads((slurm.jobs_dir(cluster) / "cells" / "hopper-medium__cql.json").read_text())
    assert cql["job_id"] == "7002_0" and cql["seeds"] == [1] and cql["cluster"] == "slurm"
    assert all(job.vmap_seeds and job.dataset_id == "offrl-standin/d-v0" for array in arrays for job in array)


def test_status_lists_each_cell_state_from_the_records_and_the_job_files(cluster, capsys):
    run.main(dataclasses.replace(cluster, status=True))
    assert capsys.readouterr().out.splitlines() == [
        "hopper-medium__iql: running (job 9001, RUNNING) (seeds 0, 1)",
        "hopper-medium__td3_bc: queued (job 9002_1, PENDING) (seeds 0, 1)",
        "hopper-medium__awr: failed (job 9003): benchmarks.slurm.MissingDataset: dataset d is missing (seeds 0, 1)",
        "hopper-medium__cql: done (seed 0); not started (seed 1)",
    ]


def test_a_job_whose_dataset_is_missing_fails_naming_it(minari_store, tmp_path):
    args = small_grid("hopper-medium", tmp_path)
    settings = run.cell_settings(args, "iql", "hopper-medium", 0)
    job = slurm.CellJob([(settings, run.record_path(args, settings))], "offrl-standin/hopper/medium-v0", tmp_path, False)
    with pytest.raises(slurm.MissingDataset, match=r"^dataset offrl-standin/hopper/medium-v0 \(for hopper-medium\) is "
                                                   r"not in the Minari store .*; build it with `python -m benchmarks"
                                                   r"\.make_datasets hopper-medium` and resubmit$"):
        job()


def test_the_flags_reach_sbatch(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # as if srun were installed
    args = small_grid("hopper-medium", tmp_path, launcher="slurm", partition="gpu", time_min=30, gpus_per_job=2,
                      cpus_per_job=8, array_parallelism=5, max_timeouts=7)
    executor = slurm.make_executor(args)
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid").splitlines()
    for line in ("--partition=gpu", "--time=30", "--gpus-per-node=2", "--cpus-per-task=8", "--signal=USR2@90"):
        assert f"#SBATCH {line}" in sbatch
    assert executor._executor.parameters["array_parallelism"] == 5 and executor._executor.max_num_timeout == 7


@pytest.mark.parametrize("overrides, message", [
    (dict(jobs=2), "--jobs is for --launcher local"),
    (dict(time_min=0), "--time-min and --cpus-per-job must be positive"),
    (dict(max_array_size=0), "--max-array-size and --array-parallelism must be positive"),
])
def test_bad_slurm_flags_are_refused_before_any_work(overrides, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        run.main(small_grid("hopper-medium", tmp_path, launcher="slurm", **overrides))


def test_submitting_without_slurm_says_so_before_preparing_any_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: -1))  # as if srun were missing

    def no_datasets(env_ids):
        raise AssertionError("datasets were prepared for jobs that cannot be submitted")

    monkeypatch.setattr(slurm, "prepare_datasets", no_datasets)
    with pytest.raises(SystemExit, match=r"^error: --launcher slurm submits from a machine with SLURM's commands .*; "
                                         r"--submitit-cluster local runs the same jobs on this one$"):
        run.main(small_grid("hopper-medium", tmp_path, launcher="slurm"))
