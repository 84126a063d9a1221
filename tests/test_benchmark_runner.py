"""benchmarks/run.py (the grid of training runs) and benchmarks/report.py (results.md and figures)."""

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report, run
from common.checkpoints import save_checkpoint
from tests.helpers import small_grid, write_cell


def test_grid_records_each_run_and_a_second_call_does_no_work(tiny_hopper, tmp_path, monkeypatch, capsys):
    run.main(small_grid(tiny_hopper, tmp_path))
    record = json.loads((tmp_path / "results" / tiny_hopper / "small_iql__seed0.json").read_text())
    assert record["outcome"] == "finished" and record["total_steps"] == 200
    assert record["dataset"]["dataset_id"] == "offrl-standin/hopper/random-v0"
    curve = report.read_csv(tmp_path / "results" / tiny_hopper / "small_iql__seed0.csv")
    assert curve["step"].tolist() == [100, 200] and curve["seed"].tolist() == [0, 0]
    assert {"charts/normalized_score", "values/q", "losses/critic"} <= set(curve)
    (run_dir,) = (tmp_path / "runs").glob("*__bench-*")
    assert (run_dir / "final.msgpack").is_file() and not list(run_dir.glob("checkpoint_*"))  # kept only to resume

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(run, "run_program", no_training)
    run.main(small_grid(tiny_hopper, tmp_path))
    assert "1 of 1 runs already done; 0 to go" in capsys.readouterr().out


def fake_script(steps_reached: int, code: int = 0, launched=None, ctrl_c=False, seconds_per_update=0.0):
    """Stands in for `run.launch`: a script whose evaluations.csv and final checkpoint stop at `steps_reached`,
    counting `seconds_per_update` of training time in its wall_s column."""
    def fake_launch(command, cwd, log=None):
        if launched is not None:
            launched.append(command)
        exp_name = command[command.index("--exp-name") + 1]
        seed = int(command[command.index("--seed") + 1])
        num_seeds = int(command[command.index("--num-seeds") + 1]) if "--num-seeds" in command else 1
        resumed = Path(command[command.index("--checkpoint") + 1]) if "--checkpoint" in command else None
        run_dir = resumed.parent if resumed else cwd / "runs" / f"env__{exp_name}__0__1"
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{step},{s},{step * seconds_per_update},0,10,0.5,1\n"
                       for step in range(100, steps_reached + 1, 100) for s in range(seed, seed + num_seeds))
        (run_dir / "evaluations.csv").write_text("step,seed,wall_s,return_std,charts/episodic_return,"
                                                 "charts/normalized_score,values/q\n" + rows)
        save_checkpoint(run_dir / "final.msgpack", {}, {"step": steps_reached})
        if ctrl_c:
            raise KeyboardInterrupt
        return code
    return fake_launch


def test_consecutive_seeds_share_one_vmapped_program_and_keep_their_own_records(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    launched = []
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=200, launched=launched))
    run.main(small_grid("hopper-medium", tmp_path, seeds=(0, 1, 2, 5), vmap_seeds=True))
    seeds_flags = [c[c.index("--seed"):c.index("--seed") + 2] + c[c.index("--num-seeds"):c.index("--num-seeds") + 2]
                   if "--num-seeds" in c else c[c.index("--seed"):c.index("--seed") + 2] for c in launched]
    assert seeds_flags == [["--seed", "0", "--num-seeds", "3"], ["--seed", "5"]]
    for seed in (0, 1, 2, 5):
        curve = report.read_csv(tmp_path / "results" / "hopper-medium" / f"small_iql__seed{seed}.csv")
        assert curve["seed"].tolist() == [seed, seed] and curve["step"].tolist() == [100, 200]
    record = json.loads((tmp_path / "results" / "hopper-medium" / "small_iql__seed1.json").read_text())
    assert "--seed 1 " in record["command"] and "--num-seeds" not in record["command"]
    assert "--seed 0 " in record["launched"] and "--num-seeds 3" in record["launched"]
    assert record["seeds_in_program"] == 3


@pytest.mark.parametrize("ctrl_c", [True, False], ids=["ctrl-c to the grid", "script stopped alone"])
def test_an_interrupted_run_is_not_recorded_and_the_rerun_resumes_it(ctrl_c, tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    args = small_grid("hopper-medium", tmp_path, seeds=(0, 1))
    launched = []
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=100, launched=launched, ctrl_c=ctrl_c))
    with pytest.raises(SystemExit, match="interrupted during .*--seed 0"):
        run.main(args)
    assert not list((tmp_path / "results").glob("*/*.json"))

    monkeypatch.setattr(run, "launch", fake_script(steps_reached=200, launched=launched))
    run.main(args)
    records = sorted((tmp_path / "results" / "hopper-medium").glob("*.json"))
    assert [r.name for r in records] == ["small_iql__seed0.json", "small_iql__seed1.json"]
    stopped, resumed, seed1 = launched
    (run_dir,) = (tmp_path / "runs").glob(f"*__{stopped[stopped.index('--exp-name') + 1]}__*")
    assert resumed[-2:] == ["--checkpoint", str(run_dir / "final.msgpack")]
    assert resumed[:-2] == stopped and "--checkpoint" not in seed1
    assert "--save-every 100" in json.loads(records[0].read_text())["launched"]
    assert not list((tmp_path / "runs" / "benchmark_attempts").iterdir())


def test_the_record_takes_the_scripts_own_training_time_where_the_runner_counted_less(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    args = small_grid("hopper-medium", tmp_path, seeds=(0,))
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=200, seconds_per_update=3.0))
    run.main(args)  # the fake returns at once: the runner counts almost nothing, the script counted 600 s
    record = json.loads((tmp_path / "results" / "hopper-medium" / "small_iql__seed0.json").read_text())
    assert record["wall_s"] == 600.0


def test_a_run_resumed_on_another_machine_records_each_machine_and_its_updates(tmp_path, monkeypatch):
    args = small_grid("hopper-medium", tmp_path, seeds=(0, 1))
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "H200 with Xeon (16 cores), jax 1")
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=100, ctrl_c=True))
    with pytest.raises(SystemExit, match="interrupted"):
        run.main(args)
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "EPYC (2 cores), jax 1")
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=200))
    run.main(args)
    moved, fresh = (json.loads((tmp_path / "results" / "hopper-medium" / f"small_iql__seed{seed}.json").read_text())
                    for seed in (0, 1))
    assert moved["machine"] == "H200 with Xeon (16 cores), jax 1 (updates 0 to 100); EPYC (2 cores), jax 1 (updates 100 to 200)"
    assert fresh["machine"] == "EPYC (2 cores), jax 1"
    assert report.short_machine(moved["machine"]) == "H200 to update 100 then EPYC (2 cores)"


def test_jobs_run_programs_at_once_each_with_its_own_log(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    running, most, logs, lock = [0], [0], [], threading.Lock()
    finish = fake_script(steps_reached=200)

    def overlapping_launch(command, cwd, log=None):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.3)  # long enough for the other programs to start
        logs.append(log)
        with lock:
            running[0] -= 1
        return finish(command, cwd)

    monkeypatch.setattr(run, "launch", overlapping_launch)
    run.main(small_grid("hopper-medium", tmp_path, seeds=(0, 1, 2), vmap_seeds=False, jobs=2))
    assert most[0] == 2
    assert len(list((tmp_path / "results" / "hopper-medium").glob("*.json"))) == 3
    assert sorted(log.name for log in logs) == [f"hopper-medium__small_iql__{seed}.log" for seed in (0, 1, 2)]
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # the programs share one GPU


def test_a_stopped_program_under_jobs_stops_the_grid_and_the_rerun_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    args = small_grid("hopper-medium", tmp_path, seeds=(0, 1), vmap_seeds=False, jobs=2)
    half_way, both_started = fake_script(steps_reached=100), threading.Barrier(2, timeout=10)

    def stops_half_way(command, cwd, log=None):  # both scripts run, and each stops half way
        both_started.wait()
        return half_way(command, cwd)

    monkeypatch.setattr(run, "launch", stops_half_way)
    with pytest.raises(SystemExit, match="interrupted; rerun the same command"):
        run.main(args)
    assert not list((tmp_path / "results").glob("*/*.json"))
    launched = []
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=200, launched=launched))
    run.main(args)
    assert len(list((tmp_path / "results" / "hopper-medium").glob("*.json"))) == 2
    assert all("--checkpoint" in command for command in launched)  # both went on from where they stopped


def test_a_program_the_stop_ends_before_it_saved_is_not_recorded_as_failed(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    args = small_grid("hopper-medium", tmp_path, seeds=(0, 1), vmap_seeds=False, jobs=2)
    half_way = fake_script(steps_reached=100)

    def one_stops_and_one_is_killed_starting(command, cwd, log=None):
        if "--seed 0" in " ".join(command):
            return half_way(command, cwd)  # stops alone, which stops the grid
        run.STOPPING.wait(timeout=10)
        return -signal.SIGTERM  # the grid's SIGTERM, before the script had set up its handler

    monkeypatch.setattr(run, "launch", one_stops_and_one_is_killed_starting)
    with pytest.raises(SystemExit, match="interrupted; rerun the same command"):
        run.main(args)
    assert not list((tmp_path / "results").glob("*/*.json"))  # no "failed" record to block the rerun
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=200))
    run.main(args)
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "hopper-medium").glob("*.json")]
    assert [r["outcome"] for r in records] == ["finished", "finished"]


# Stands in for a training script: on SIGTERM it saves and exits, as the scripts do.
SAVES_ON_SIGTERM = ("import pathlib, signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path('saved').write_text('yes'), sys.exit(0)))\n"
                    "pathlib.Path('ready').write_text('yes')\n"
                    "time.sleep(60)\n")


def wait_for(path: Path):
    while not path.exists():
        threading.Event().wait(0.05)


def test_a_stopped_grid_asks_its_script_once_to_stop_and_waits_for_it(tmp_path, ctrl_c_raises):
    def ctrl_c_when_ready():
        wait_for(tmp_path / "ready")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as Ctrl-C in a terminal

    threading.Thread(target=ctrl_c_when_ready, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run.launch([sys.executable, "-c", SAVES_ON_SIGTERM], tmp_path)
    assert (tmp_path / "saved").read_text() == "yes"  # it had saved before launch gave up the wait


def popen_then(stop):
    """subprocess.Popen, with `stop` called after the script is up but before Popen returns to launch."""
    popen = subprocess.Popen

    def starting(*args, **kwargs):
        process = popen(*args, **kwargs)
        wait_for(Path(kwargs["cwd"]) / "ready")
        stop()
        return process
    return starting


def test_a_ctrl_c_while_the_script_starts_stops_it_too(tmp_path, ctrl_c_raises, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", popen_then(lambda: signal.raise_signal(signal.SIGINT)))
    with pytest.raises(KeyboardInterrupt):
        run.launch([sys.executable, "-c", SAVES_ON_SIGTERM], tmp_path)
    assert (tmp_path / "saved").read_text() == "yes"  # not left running on its own


def test_a_script_that_starts_while_jobs_are_stopped_is_stopped_too(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", popen_then(run.STOPPING.set))  # the grid's stop, from its main thread
    try:
        with ThreadPoolExecutor(1) as pool:  # as under --jobs
            assert pool.submit(run.launch, [sys.executable, "-c", SAVES_ON_SIGTERM], tmp_path).result(timeout=30) == 0
    finally:
        run.STOPPING.clear()
    assert (tmp_path / "saved").read_text() == "yes"


def test_a_run_that_stops_on_nan_is_recorded_as_failed(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=100, code=1))
    run.main(small_grid("hopper-medium", tmp_path))
    record = json.loads((tmp_path / "results" / "hopper-medium" / "small_iql__seed0.json").read_text())
    assert record["outcome"] == "failed (exit code 1) at update 100"


def test_a_record_made_by_another_command_is_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    monkeypatch.setattr(run, "launch", fake_script(steps_reached=200))
    run.main(small_grid("hopper-medium", tmp_path))
    with pytest.raises(SystemExit, match="was made by .*--total-steps 200.* pass another --name or delete it"):
        run.main(small_grid("hopper-medium", tmp_path, total_steps=300))


@pytest.mark.parametrize("overrides, message", [
    (dict(algos=("iql", "sac")), r"unknown algorithm\(s\) \['sac'\]"),
    (dict(name=None), "give the cells a --name of their own"),
])
def test_bad_grids_are_refused_before_any_work(overrides, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        run.main(small_grid("hopper-medium", tmp_path, **overrides))


def test_report_takes_final_and_best_over_seeds(tmp_path):
    write_cell(tmp_path, "iql", 0, [10, 50, 30])
    write_cell(tmp_path, "iql", 1, [20, 70, 10])
    row = report.summarize(report.load_cells(tmp_path)["hopper-medium", "iql"])
    np.testing.assert_allclose(row["final"], (20.0, 10.0))
    np.testing.assert_allclose(row["best"], (60.0, 10.0))
    assert row["best_step"] == 200 and row["wall_min"] == 2.0


def test_report_writes_the_table_the_figures_and_the_commands(tmp_path):
    write_cell(tmp_path / "results", "iql", 0, [10, 50, 30])
    write_cell(tmp_path / "results", "iql", 1, [20, 70, 10])
    write_cell(tmp_path / "results", "plain_td3", 0, [5, 1], outcome="failed (exit code 1) at update 200")
    write_cell(tmp_path / "results", "awr", 0, [1, 2, 3])  # with iql, makes 300 updates the grid's budget
    for seed in (0, 1):  # a longer run on a GPU: not the grid's budget, and it must not make the others "shorter"
        write_cell(tmp_path / "results", "iql_long", seed, [10, 20, 30, 40, 50],
                   machine="NVIDIA H100 80GB HBM3 with Intel Xeon (16 cores), jax 0.11.2")
    (tmp_path / "results" / "hopper-medium" / "NOTES.md").write_text("Why plain TD3 fails: see the Q curve.\n")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results: written by python -m benchmarks.report -->\nold\n<!-- results end -->\nrest\n")
    report.main(report.Args(results=tmp_path / "results", out=tmp_path / "results.md", readme=readme))
    text = (tmp_path / "results.md").read_text()
    assert "| iql | 300 | 2 | 20.0 ± 10.0 | 60.0 ± 10.0 (200) | 2 | test machine |" in text
    assert "| iql_long | 500 | 2 | 50.0 ± 0.0 | 50.0 ± 0.0 (500) | 2 | NVIDIA H100 80GB HBM3 |" in text
    assert "| awr | 300 | 1 | 3.0 | 3.0 (300) |" in text  # one seed: no spread to report
    assert "- plain_td3: seed 0: failed (exit code 1) at update 200" in text
    assert "- plain_td3: 200 updates where the others have 300, to fit the machine's time" in text
    for name in ("iql", "awr", "iql_long"):
        assert f"- {name}: " not in text
    assert "mean normalized return is **39.4**" in text
    assert "Why plain TD3 fails: see the Q curve." in text
    assert "python iql.py --env-id hopper-medium --seed {0,1} --total-steps 300" in text
    assert "python awr.py --env-id hopper-medium --seed 0 --total-steps 300" in text  # a lone seed, unbraced
    readme_text = readme.read_text()
    assert "| iql | 300 | 2 | 20.0 ± 10.0 | 60.0 ± 10.0 (200) | 2 |" in readme_text and "old" not in readme_text
    assert "**hopper-medium**. Data: `d`, from s: 3 episodes, 30 transitions; its mean normalized return is **39.4**." \
        in readme_text
    assert readme_text.startswith("# x\n<!--") and readme_text.endswith("<!-- results end -->\nrest\n")
    assert (tmp_path / "results_hopper-medium.png").stat().st_size > 0
    assert (tmp_path / "results_hopper-medium_q.png").stat().st_size > 0
    assert not (tmp_path / "imitation.png").exists()  # no BC control, nothing to compare with


def test_a_dataset_rebuilt_between_rows_names_each_build_with_its_rows(tmp_path):
    for name in ("iql", "awr", "sac_bc"):
        write_cell(tmp_path, name, 0, [10, 20])
    record_path = tmp_path / "hopper-medium" / "sac_bc__seed0.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(record | {"dataset": record["dataset"] | {"episodes": 4,
                                                                                "mean_normalized_return": 40.04}}))
    rows = {name: report.summarize(records) for (_, name), records in report.load_cells(tmp_path).items()}
    assert report.data_line(report.dataset_builds(rows)) == (
        "Data: `d`, from s, in 2 builds: 3 episodes, 30 transitions, mean normalized return **39.4** (awr, iql); "
        "4 episodes, 30 transitions, mean normalized return **40.0** (sac_bc).")
    same_print = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(same_print | {"dataset": record["dataset"] | {"mean_normalized_return": 39.43}}))
    rows = {name: report.summarize(records) for (_, name), records in report.load_cells(tmp_path).items()}
    assert report.data_line(report.dataset_builds(rows)) == (
        "Data: `d`, from s: 3 episodes, 30 transitions; its mean normalized return is **39.4**.")


def test_report_compares_each_method_with_the_bc_control_and_the_data(tmp_path):
    write_cell(tmp_path / "results", "bc", 0, [30, 40])
    write_cell(tmp_path / "results", "bc", 1, [30, 20])
    write_cell(tmp_path / "results", "iql", 0, [50, 60])
    write_cell(tmp_path / "results", "plain_td3", 0, [1, 0])  # a variant, not one of the compared methods
    comparison = report.imitation_comparison(report.load_cells(tmp_path / "results"))
    assert comparison == {"hopper-medium": {"data": (39.4, None), "bc": (30.0, 10.0), "iql": (60.0, None)}}  # one seed: no spread

    (tmp_path / "results" / "IMITATION.md").write_text("IQL beats the clone here.\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results: written by python -m benchmarks.report -->\n<!-- results end -->\n")
    report.main(report.Args(results=tmp_path / "results", out=tmp_path / "results.md", readme=readme))
    assert (tmp_path / "imitation.png").stat().st_size > 0
    for text in ((tmp_path / "results.md").read_text(), readme.read_text()):
        assert "imitation.png)" in text and "IQL beats the clone here." in text
