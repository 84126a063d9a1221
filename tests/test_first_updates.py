"""benchmarks.first_updates: a stopped longer run's first N updates recorded as the N-update cell."""

import json
import re
from pathlib import Path

import pytest

from benchmarks import first_updates, report

LAUNCHED = ("python cql.py --env-id hopper-medium-replay --seed 0 --total-steps 300 --eval-every 100 --num-seeds 2 "
            "--save-every 100")
MACHINE = "NVIDIA H200 with Intel(R) Xeon(R) Processor (16 cores), jax 0.11.2"


def stopped_run(work_dir: Path, launched=LAUNCHED, stopped_at=200):
    """The attempt file and run directory a vmapped 2-seed CQL program leaves when stopped at `stopped_at`."""
    runs = work_dir / "runs"
    (runs / "benchmark_attempts").mkdir(parents=True)
    (runs / "benchmark_attempts" / "hopper-medium-replay__cql__0.json").write_text(json.dumps(
        {"launched": launched, "exp_name": "bench-1234", "wall_s": 50.0,
         "machines": [{"machine": MACHINE, "from_update": 0}]}))
    run_dir = runs / "hopper-medium-replay__bench-1234__0__99"
    run_dir.mkdir()
    rows = [f"{step},{seed},{step / 10},0,0,{step / 10 + seed},1" for step in range(100, stopped_at + 1, 100)
            for seed in (0, 1)]
    header = "step,seed,wall_s,return_std,charts/episodic_return,charts/normalized_score,values/q"
    (run_dir / "evaluations.csv").write_text("\n".join([header, *rows]) + "\n")
    (run_dir / "dataset.json").write_text(json.dumps({"dataset_id": "d", "mean_normalized_return": 9.5}))


def args(tmp_path, **overrides):
    settings = dict(algo="cql", env_ids=("hopper-medium-replay",), seeds=(0, 1), updates=100, eval_every=100,
                    work_dir=tmp_path, results=tmp_path / "results")
    return first_updates.Args(**(settings | overrides))


def test_the_first_updates_of_a_stopped_run_are_recorded_under_the_shorter_cells_command(tmp_path):
    stopped_run(tmp_path)
    first_updates.main(args(tmp_path))
    folder = tmp_path / "results" / "hopper-medium-replay"
    for seed in (0, 1):
        record = json.loads((folder / f"cql__seed{seed}.json").read_text())
        assert record["command"] == (f"python cql.py --env-id hopper-medium-replay --seed {seed} --total-steps 100 "
                                     f"--eval-every 100")
        assert record["total_steps"] == 100 and record["outcome"] == "finished"
        assert record["launched"] == LAUNCHED and record["machine"] == MACHINE and record["wall_s"] == 10.0
        assert record["first_updates_of"] == {"total_steps": 300, "stopped_at": 200}
        assert record["dataset"]["mean_normalized_return"] == 9.5
        rows = (folder / f"cql__seed{seed}.csv").read_text().splitlines()
        assert [row.split(",")[:2] for row in rows[1:]] == [["100", str(seed)]]  # update 200 is past the cell
    row = report.summarize(report.load_cells(tmp_path / "results")["hopper-medium-replay", "cql"])
    assert row["final"][0] == pytest.approx(10.5) and row["final_step"] == 100
    text = "\n".join(report.score_table({"iql": row | {"total_steps": 300, "first_updates_of": None}, "cql": row}))
    assert ("- cql: 100 updates where the others have 300, the first 100 of runs launched for 300 and stopped at "
            "update 200; cql.py has no schedule tied to --total-steps") in text


@pytest.mark.parametrize("overrides, launched, message", [
    ({"algo": "iql"}, LAUNCHED, "iql.py's updates depend on --total-steps"),
    ({"updates": 300}, LAUNCHED, "seed 0 of .* was evaluated at 200 update"),
    ({}, LAUNCHED.replace("--eval-every 100", "--eval-every 100 --cql-alpha 10"), "the stopped run launched"),
    ({"seeds": (0, 1, 2)}, LAUNCHED, "the stopped run launched"),
])
def test_a_run_that_is_not_the_cell_made_longer_is_refused(overrides, launched, message, tmp_path):
    stopped_run(tmp_path, launched=launched.replace("cql", overrides.get("algo", "cql")))
    with pytest.raises(SystemExit, match=message):
        first_updates.main(args(tmp_path, **overrides))
    assert not (tmp_path / "results" / "hopper-medium-replay" / "cql__seed0.json").exists()


@pytest.mark.parametrize("algo", first_updates.SCHEDULE_FREE)
def test_schedule_free_scripts_use_total_steps_only_to_bound_the_loop(algo):
    source = (Path(first_updates.__file__).parent.parent / f"{algo}.py").read_text()
    uses = [line.strip() for line in source.splitlines() if "total_steps" in line]
    loop = re.compile(r"^(bar = tqdm\(total=args\.total_steps|while step < args\.total_steps|"
                      r"if step % args\.eval_every == 0 or step == args\.total_steps)")
    assert uses and all(loop.match(line) for line in uses), uses
