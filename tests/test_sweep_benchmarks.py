"""Sweep cells: benchmarks/run.py --sweep (one program for a cell's values) and report.py's sensitivity figure."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report, run, slurm
from common.checkpoints import save_checkpoint
from tests.helpers import small_grid, write_cell


def fake_sweep_script(launched: list):
    """Stands in for `run.launch`: a script sweeping --expectile, its evaluations.csv a row per value, seed and step;
    each row's score is 100 x value + seed, so every record can be checked to hold its own rows. As the real
    scripts do, it names the value in a column only when there are several (one value is a plain flag)."""
    def fake_launch(command, cwd, log=None):
        launched.append(command)
        at = command.index("--expectile") + 1
        values = []
        while at < len(command) and not command[at].startswith("--"):
            values.append(float(command[at]))
            at += 1
        seed = int(command[command.index("--seed") + 1])
        num_seeds = int(command[command.index("--num-seeds") + 1]) if "--num-seeds" in command else 1
        run_dir = cwd / "runs" / f"env__{command[command.index('--exp-name') + 1]}__0__1"
        run_dir.mkdir(parents=True, exist_ok=True)
        named = len(values) > 1
        rows = "".join(f"{step},{f'{v:.6g},' if named else ''}{s},1,0,10,{100 * v + s},1\n" for step in (100, 200)
                       for v in values for s in range(seed, seed + num_seeds))
        (run_dir / "evaluations.csv").write_text(f"step,{'expectile,' if named else ''}seed,wall_s,return_std,"
                                                 "charts/episodic_return,charts/normalized_score,values/q\n" + rows)
        save_checkpoint(run_dir / "final.msgpack", {}, {"step": 200})
        return 0
    return fake_launch


@pytest.mark.parametrize("vmap_seeds, programs", [(False, [["--seed", "0"], ["--seed", "1"]]),
                                                  (True, [["--seed", "0", "--num-seeds", "2"]])])
def test_a_sweep_cell_trains_its_values_in_one_program_and_records_each(vmap_seeds, programs, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    launched = []
    monkeypatch.setattr(run, "launch", fake_sweep_script(launched))
    grid = small_grid("hopper-medium", tmp_path, seeds=(0, 1), sweep=("expectile", "0.6", "0.9"), vmap_seeds=vmap_seeds)
    run.main(grid)
    assert len(launched) == len(programs)
    for command, seeds in zip(launched, programs):
        assert command[command.index("--expectile"):command.index("--expectile") + 3] == ["--expectile", "0.6", "0.9"]
        assert command[command.index("--seed"):command.index("--seed") + 2] == seeds[:2]
        assert ("--num-seeds" in command) == (len(seeds) > 2)
    folder = tmp_path / "results" / "hopper-medium"
    assert sorted(p.name for p in folder.glob("*.json")) == [f"small_iql__expectile{v}__seed{s}.json"
                                                              for v in ("0p6", "0p9") for s in (0, 1)]
    for value in (0.6, 0.9):
        for seed in (0, 1):
            stem = folder / f"small_iql__expectile{str(value).replace('.', 'p')}__seed{seed}"
            record = json.loads(stem.with_suffix(".json").read_text())
            assert record["sweep"] == {"flag": "expectile", "value": value, "default": 0.7}  # iql.py's default
            assert record["command"].endswith(f"--expectile {value}") and f"--seed {seed} " in record["command"]
            curve = report.read_csv(stem.with_suffix(".csv"))
            np.testing.assert_allclose(curve["charts/normalized_score"], [100 * value + seed] * 2)
            assert curve["step"].tolist() == [100, 200]

    run.main(grid)  # all recorded: nothing is launched again
    assert len(launched) == len(programs) and "4 of 4 runs already done; 0 to go" in capsys.readouterr().out
    run.main(dataclasses.replace(grid, status=True))
    assert capsys.readouterr().out.splitlines() == ["hopper-medium__small_iql: done (expectile 0.6, 0.9 x seeds 0, 1)"]


def test_a_sweep_of_one_value_records_it_though_the_scripts_csv_names_no_value(tmp_path, monkeypatch):
    monkeypatch.setattr("benchmarks.speed.machine", lambda: "test machine")
    monkeypatch.setattr(run, "launch", fake_sweep_script([]))
    run.main(small_grid("hopper-medium", tmp_path, seeds=(1,), sweep=("expectile", "0.9"), vmap_seeds=False))
    stem = tmp_path / "results" / "hopper-medium" / "small_iql__expectile0p9__seed1"
    assert json.loads(stem.with_suffix(".json").read_text())["outcome"] == "finished"
    np.testing.assert_allclose(report.read_csv(stem.with_suffix(".csv"))["charts/normalized_score"], [91, 91])


def test_status_names_a_sweep_cells_runs_one_by_one_where_they_are_not_a_full_grid():
    runs = [run.with_value({"seed": seed, "command": "python td3_bc.py"}, "alpha", value)
            for seed, value in ((0, "1"), (0, "2.5"), (1, "2.5"))]
    assert slurm.which_runs(runs) == "alpha 1 seed 0, alpha 2.5 seed 0, alpha 2.5 seed 1"
    assert slurm.which_runs(runs[1:]) == "alpha 2.5 x seeds 0, 1"
    assert slurm.which_runs([{"seed": 3}]) == "seed 3"


def test_only_seeds_with_the_same_values_to_go_share_a_program():
    def cell(seed, value):
        settings = {"name": "iql", "env_id": "hopper-medium", "seed": seed, "command": "python iql.py"}
        return run.with_value(settings, "expectile", value), Path(f"{seed}_{value}")
    todo = [cell(0, "0.6"), cell(0, "0.9"), cell(1, "0.9"), cell(2, "0.9")]  # seed 1's 0.6 was recorded already
    groups = run.programs(todo, vmap_seeds=True)
    assert [[(s["seed"], s["sweep"]["value"]) for s, _ in group] for group in groups] == [
        [(0, 0.6), (0, 0.9)], [(1, 0.9), (2, 0.9)]]
    assert [len(group) for group in run.programs(todo, vmap_seeds=False)] == [2, 1, 1]


def test_a_sweep_needs_a_flag_and_different_values(tmp_path):
    with pytest.raises(SystemExit, match="--sweep takes a flag and its different values"):
        run.main(small_grid("hopper-medium", tmp_path, sweep=("alpha", "1", "1")))


def write_sweep_run(results: Path, env_id: str, value: float, seed: int, final: float, name="td3_bc", default=2.5):
    folder = results / env_id
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{name}__alpha{value:g}__seed{seed}".replace(".", "p")
    stem.with_suffix(".csv").write_text("step,alpha,seed,wall_s,return_std,charts/episodic_return,"
                                        f"charts/normalized_score,values/q\n100,{value},{seed},1,0,0,3,1\n"
                                        f"200,{value},{seed},1,0,0,{final},1\n")
    record = {"algo": "td3_bc", "name": name, "env_id": env_id, "seed": seed, "total_steps": 200,
              "command": f"python td3_bc.py --env-id {env_id} --seed {seed} --total-steps 200 --alpha {value:g}",
              "sweep": {"flag": "alpha", "value": value, "default": default}, "outcome": "finished",
              "wall_s": 60.0, "machine": "test machine", "date": "2026-12-02", "dataset": None}
    stem.with_suffix(".json").write_text(json.dumps(record))


SCORES = {"hopper-medium": {0.25: (10, 20), 2.5: (40, 60), 25.0: (5, 5)},  # value -> the seeds' final scores
          "hopper-medium-replay": {0.25: (1, 3), 2.5: (30, 50)}}


def synthetic_sweep(results: Path):
    for env_id, by_value in SCORES.items():
        for value, finals in by_value.items():
            for seed, final in enumerate(finals):
                write_sweep_run(results, env_id, value, seed, final)


def test_sensitivity_figure_draws_final_score_against_value_per_dataset_with_the_default(tmp_path, monkeypatch):
    synthetic_sweep(tmp_path)
    sweeps = report.load_sweeps(tmp_path)
    assert list(sweeps) == [("td3_bc", "alpha")] and not report.load_cells(tmp_path)  # apart from the grid's cells
    figures = []
    real_subplots = report.plt.subplots
    monkeypatch.setattr(report.plt, "subplots", lambda *a, **k: figures.append(real_subplots(*a, **k)) or figures[-1])
    monkeypatch.setattr(report.plt, "close", lambda fig: None)
    report.plot_sensitivity("td3_bc", "alpha", sweeps["td3_bc", "alpha"], tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0
    (ax,) = figures[0][0].axes
    assert ax.get_xscale() == "log"  # 0.25 to 25: a hundredfold
    curves = {line.get_label(): line for line in ax.get_lines()}
    default = curves["default alpha = 2.5"]
    assert list(default.get_xdata()) == [2.5, 2.5]
    errorbars = {c.get_label().split(" (")[0]: c for c in ax.containers}  # a line per dataset, with its bars
    assert sorted(errorbars) == ["hopper-medium", "hopper-medium-replay"]
    medium_line, _, (medium_bars,) = errorbars["hopper-medium"].lines
    np.testing.assert_allclose(np.asarray(medium_line.get_xdata(), float), [0.25, 2.5, 25.0])
    np.testing.assert_allclose(np.asarray(medium_line.get_ydata(), float), [15.0, 50.0, 5.0])  # mean over the seeds
    bar_ends = [segment[:, 1] for segment in medium_bars.get_segments()]
    np.testing.assert_allclose(bar_ends, [[10, 20], [40, 60], [5, 5]])  # mean ± std
    np.testing.assert_allclose(np.asarray(errorbars["hopper-medium-replay"].lines[0].get_ydata(), float), [2.0, 40.0])


def test_report_writes_a_sensitivity_section_and_keeps_sweeps_out_of_the_grid_tables(tmp_path):
    synthetic_sweep(tmp_path / "results")
    write_cell(tmp_path / "results", "td3_bc", 0, [10, 30])  # the plain cell of the same name
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results: written by python -m benchmarks.report -->\n<!-- results end -->\n")
    (tmp_path / "results" / "SENSITIVITY.md").write_text("Lower α helps on the mixed data.\n")
    report.main(report.Args(results=tmp_path / "results", out=tmp_path / "results.md", readme=readme))
    text = (tmp_path / "results.md").read_text()
    assert "regularisation strength\n\nLower α helps on the mixed data.\n\n### td3_bc: --alpha" in text
    assert "Lower α helps on the mixed data." in readme.read_text()
    assert "| td3_bc | 200 | 1 | 30.0 | 30.0 (200) |" in text  # its one seed, not the sweep's
    assert "## Sensitivity to the regularisation strength" in text and "### td3_bc: --alpha" in text
    assert "| hopper-medium | 2.5 (default) | 2 | 50.0 ± 10.0 |" in text
    assert "| hopper-medium-replay | 0.25 | 2 | 2.0 ± 1.0 |" in text
    assert "python td3_bc.py --env-id hopper-medium --seed {0,1} --total-steps 200 --alpha 25" in text
    assert (tmp_path / "sensitivity_td3_bc_alpha.png").stat().st_size > 0
    assert f"![sensitivity]({tmp_path.name}/sensitivity_td3_bc_alpha.png)" in readme.read_text()
