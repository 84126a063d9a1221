"""Turn the runs recorded by `benchmarks/run.py` into `benchmarks/results.md` and learning-curve PNGs.

    python -m benchmarks.report

For each dataset and each algorithm (or named variant): the normalized score at the last evaluation
(mean ± std over seeds), the best point of the seed-averaged learning curve, the dataset's own mean
normalized return beside them, the wall time per run and the machine. One figure per dataset shows the
score curves (mean over seeds, shaded ± one std); another shows each method's mean Q estimate, on a log
scale, which is where plain offline TD3's divergence shows (mean over seeds, shaded from the lowest seed to
the highest). A hand-written `results/{env_id}/NOTES.md`
(what the numbers mean, with evidence) is copied under its dataset's table.

Sweep cells (`benchmarks.run --sweep alpha 0.5 1 2.5`) get a sensitivity figure per method and swept flag: the
final normalized score against the value, mean ± std over seeds, a line per dataset, the script's default marked.
A hand-written `results/SENSITIVITY.md` (what the curves say) stands above them, as `results/IMITATION.md` does
above the imitation figure.
"""

import csv
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import tyro

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


@dataclass
class Args:
    results: Path = HERE / "results"
    out: Path = HERE / "results.md"
    readme: Path = HERE.parent / "README.md"
    """its tables between the results markers are rewritten too"""


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]} if rows else {}


def load_records(results: Path) -> list[dict]:
    """Every run's record, with its evaluations under "curve"."""
    records = []
    for record_path in sorted(results.glob("*/*.json")):
        record = json.loads(record_path.read_text())
        curve_path = record_path.with_suffix(".csv")
        records.append(record | {"curve": read_csv(curve_path) if curve_path.is_file() else {}})
    return records


def load_cells(results: Path) -> dict[tuple[str, str], list[dict]]:
    """(env_id, name) -> one record per seed, each with its evaluations under "curve" (sweep cells apart)."""
    cells = defaultdict(list)
    for record in load_records(results):
        if "sweep" not in record:
            cells[record["env_id"], record["name"]].append(record)
    return cells


def load_sweeps(results: Path) -> dict[tuple[str, str], dict[str, dict[float, list[dict]]]]:
    """(name, swept flag) -> env_id -> value -> one record per seed, from the sweep cells."""
    sweeps = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for record in load_records(results):
        if "sweep" in record:
            sweeps[record["name"], record["sweep"]["flag"]][record["env_id"]][record["sweep"]["value"]].append(record)
    return sweeps


def sensitivity(by_value: dict[float, list[dict]]) -> list[tuple[float, tuple[float, float | None], int]]:
    """(value, final score (mean, std over seeds), seeds) for each value with evaluations, in increasing value."""
    rows = [(value, summarize(records), len(records)) for value, records in sorted(by_value.items())]
    return [(value, row["final"], seeds) for value, row, seeds in rows if "final" in row]


def plot_sensitivity(name: str, flag: str, by_env: dict, path: Path):
    """Final normalized score against the swept value, a line per dataset (± std over seeds), the default marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for env_id, by_value in sorted(by_env.items()):
        points = sensitivity(by_value)
        seeds = sorted({n for _, _, n in points})
        seeds_text = f"{'/'.join(map(str, seeds))} seed{'' if seeds == [1] else 's'}"
        ax.errorbar([v for v, _, _ in points], [f[0] for _, f, _ in points], yerr=[f[1] or 0.0 for _, f, _ in points],
                    marker="o", capsize=3, label=f"{env_id} ({seeds_text})")
    values = sorted({v for by_value in by_env.values() for v in by_value})
    defaults = {r["sweep"].get("default") for by_value in by_env.values() for rs in by_value.values() for r in rs}
    for default in sorted(d for d in defaults if d is not None):
        ax.axvline(default, color="gray", linestyle="--", zorder=0, label=f"default {flag} = {default:g}")
    if values[0] > 0 and values[-1] / values[0] >= 10:  # a sweep over orders of magnitude
        ax.set_xscale("log")
    ax.set(xlabel=f"--{flag.replace('_', '-')}", ylabel="final normalized score (mean ± std over seeds)",
           title=f"{name}: sensitivity to --{flag.replace('_', '-')}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sensitivity_section(sweeps: dict, figures: str = "", with_commands: bool = True) -> list[str]:
    """The sweeps' section: per method and flag, its figure (in the folder `figures`) and its final scores by value."""
    lines = []
    for (name, flag), by_env in sorted(sweeps.items()):
        lines += [f"### {name}: --{flag.replace('_', '-')}", "",
                  f"![sensitivity]({figures}sensitivity_{name}_{flag}.png)", "",
                  f"| dataset | --{flag.replace('_', '-')} | seeds | final |", "|---|---|---|---|"]
        for env_id, by_value in sorted(by_env.items()):
            default = next(iter(next(iter(by_value.values()))))["sweep"].get("default")
            lines += [f"| {env_id} | {value:g}{' (default)' if value == default else ''} | {seeds} | {fmt(final)} |"
                      for value, final, seeds in sensitivity(by_value)]
        lines += [""]
        if with_commands:
            lines += ["Commands:", "", "```", *commands(rs for by_value in by_env.values() for rs in by_value.values()),
                      "```", ""]
    return lines


def seed_curves(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps evaluated by every seed, and the (seeds, steps) matrix of `key` at those steps."""
    curves = [r["curve"] for r in records if key in r.get("curve", {})]
    if not curves:
        return np.array([]), np.zeros((0, 0))
    steps = sorted(set.intersection(*(set(c["step"].tolist()) for c in curves)))
    values = np.array([[c[key][list(c["step"]).index(s)] for s in steps] for c in curves])
    return np.array(steps), values


def short_machine(machine: str) -> str:
    """The accelerator if there was one ("NVIDIA H100 80GB HBM3 with <cpu>, jax x"), else the CPU; for a run resumed
    on another machine ("<machine> (updates 0 to N); <machine> (updates N to M)"), each, and where it handed over."""
    stretches = machine.split("; ")
    names = [m.split(" with ")[0] if " with " in m else m.split(", jax")[0] for m in stretches]
    ends = [m.rsplit(" to ", 1)[-1].rstrip(")") for m in stretches[:-1]]
    return " then ".join([f"{name} to update {end}" for name, end in zip(names, ends)] + names[-1:])


def summarize(records: list[dict]) -> dict:
    steps, scores = seed_curves(records, "charts/normalized_score")
    finished = [r for r in records if r["outcome"] == "finished"]
    row = {"algo": records[0]["algo"], "seeds": len(records), "total_steps": records[0]["total_steps"],
           "failed": [f"seed {r['seed']}: {r['outcome']}" for r in records if r["outcome"] != "finished"],
           "wall_min": (np.mean([r["wall_s"] / r.get("seeds_in_program", 1) for r in finished]) / 60
                        if finished else None),
           "machine": ", ".join(sorted({short_machine(r["machine"]) for r in records})),
           "dataset": next((r["dataset"] for r in records if r.get("dataset")), None),
           "first_updates_of": next((r["first_updates_of"] for r in records if r.get("first_updates_of")), None)}
    if scores.size:
        best = int(np.argmax(scores.mean(0)))
        row |= {"final": mean_std(scores[:, -1]), "final_step": int(steps[-1]),
                "best": mean_std(scores[:, best]), "best_step": int(steps[best])}
    return row


def mean_std(values: np.ndarray) -> tuple[float, float | None]:
    """Mean and std over seeds; one seed has no spread to report (None, not a measured 0)."""
    return values.mean(), values.std() if len(values) > 1 else None


def plot(env_id: str, cells: dict, key: str, ylabel: str, path: Path, log: bool = False, data_mean=None):
    fig, ax = plt.subplots(figsize=(6, 4))
    for (env, name), records in sorted(cells.items()):
        steps, values = seed_curves(records, key)
        if env != env_id or not values.size:
            continue
        mean, std = values.mean(0), values.std(0)
        ax.plot(steps, mean, label=f"{name} ({len(values)} seed{'s' if len(values) > 1 else ''})")
        # On the log scale one diverged seed makes mean − std absurdly negative: shade the seeds' range there.
        low, high = (values.min(0), values.max(0)) if log else (mean - std, mean + std)
        ax.fill_between(steps, low, high, alpha=0.2)
    if data_mean is not None:
        ax.axhline(data_mean, color="gray", linestyle="--", label="dataset mean")
    if log:
        ax.set_yscale("symlog")
    ax.set(xlabel="gradient updates", ylabel=ylabel, title=env_id)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# the BC control (td3_bc.py --alpha 0), then the families
IMITATION_METHODS = ("bc", "td3_bc", "sac_bc", "awr", "iql", "cql")


def imitation_comparison(cells: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """For each dataset with a BC control: the data's mean normalized return and each method's final score,
    (mean, std) over seeds."""
    comparison = {}
    for env_id in sorted({env for env, name in cells if name == "bc"}):
        rows = {name: summarize(cells[env_id, name]) for name in IMITATION_METHODS if (env_id, name) in cells}
        dataset = next((row["dataset"] for row in rows.values() if row["dataset"]), None)
        comparison[env_id] = ({"data": (dataset["mean_normalized_return"], None)} if dataset else {}) | {
            name: row["final"] for name, row in rows.items() if "final" in row}
    return comparison


def plot_imitation(comparison: dict, path: Path):
    """Grouped bars: per dataset, the data's mean, the BC control and the offline RL methods."""
    names = ["data", *IMITATION_METHODS]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(comparison)), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        x = [j for j, scores in enumerate(comparison.values()) if name in scores]
        values = [scores[name] for scores in comparison.values() if name in scores]
        ax.bar(np.array(x) + (i - (len(names) - 1) / 2) * width, [v[0] for v in values], width,
               yerr=None if name == "data" else [v[1] or 0.0 for v in values], capsize=2,
               label={"data": "data's mean", "bc": "BC control"}.get(name, name),
               color="lightgray" if name == "data" else None)
    ax.set_xticks(range(len(comparison)), list(comparison), rotation=15, fontsize=8)
    ax.set(ylabel="normalized score (final, mean ± std over seeds)", title="What offline RL buys over imitation")
    ax.legend(fontsize=7, ncols=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dataset_builds(rows: dict) -> list[tuple[dict, list[str]]]:
    """The builds of a dataset that the rows trained on, each with its rows' names, the most used first. A
    rebuilt stand-in can differ from the last build (fresh noise per episode): two builds count as one if
    they agree in what the data line prints."""
    builds = {}
    for name, row in rows.items():
        if row["dataset"]:
            d = row["dataset"]
            key = (d["dataset_id"], d["episodes"], d["transitions"], f"{d['mean_normalized_return']:.1f}")
            builds.setdefault(key, (d, []))[1].append(name)
    return sorted(builds.values(), key=lambda build: -len(build[1]))


def data_line(builds: list[tuple[dict, list[str]]]) -> str:
    if not builds:
        return ""
    first = builds[0][0]
    head = f"Data: `{first['dataset_id']}`, from {first['source']}"
    if len(builds) == 1:
        return (f"{head}: {first['episodes']} episodes, {first['transitions']} transitions; its mean normalized "
                f"return is **{first['mean_normalized_return']:.1f}**.")
    return f"{head}, in {len(builds)} builds: " + "; ".join(
        f"{d['episodes']} episodes, {d['transitions']} transitions, mean normalized return "
        f"**{d['mean_normalized_return']:.1f}** ({', '.join(names)})" for d, names in builds) + "."


def commands(cell_records) -> list[str]:
    """One line per command, the seeds that ran it folded into `--seed {0,1,2}` (a lone seed stays `--seed 1`)."""
    seeds = defaultdict(list)
    for records in cell_records:
        for r in records:
            seeds[r["command"].replace(f"--seed {r['seed']} ", "--seed {} ")].append(r["seed"])
    folded = {c: ",".join(map(str, sorted(s))) for c, s in seeds.items()}
    return [c.replace("{}", s if "," not in s else "{" + s + "}") for c, s in sorted(folded.items())]


def fmt(pair) -> str:
    if not pair:
        return "–"
    return f"{pair[0]:.1f}" if pair[1] is None else f"{pair[0]:.1f} ± {pair[1]:.1f}"


def score_table(rows: dict) -> list[str]:
    lines = ["| method | updates | seeds | final | best (at update) | minutes per seed | machine |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        best = f"{fmt(row.get('best'))} ({row['best_step']})" if row.get("best") else "–"
        wall = f"{row['wall_min']:.0f}" if row["wall_min"] is not None else "–"
        lines.append(f"| {name} | {row['total_steps']} | {row['seeds']} | {fmt(row.get('final'))} | {best} | {wall} "
                     f"| {row['machine']} |")
    # The grid's budget is the update count most rows share (ties: the larger); say why a row has fewer.
    counts = Counter(row["total_steps"] for row in rows.values())
    usual = max(counts, key=lambda steps: (counts[steps], steps))
    shorter = [f"- {name}: {row['total_steps']} updates where the others have {usual}, " + (
               # benchmarks/first_updates.py: the row took the first updates of longer runs that were stopped
               f"the first {row['total_steps']} of runs launched for {longer['total_steps']} and stopped at update "
               f"{longer['stopped_at']}; {row['algo']}.py has no schedule tied to --total-steps, so these are the "
               f"updates a {row['total_steps']}-update run makes" if (longer := row.get("first_updates_of")) else
               "to fit the machine's time (its cost per update: `benchmarks/speed.md`)")
               for name, row in rows.items() if row["total_steps"] < usual]
    return (lines + [f"- {name}: " + "; ".join(row["failed"]) for name, row in rows.items() if row["failed"]]
            + shorter)


def update_readme(readme: Path, block: list[str]):
    """Replace what stands between the README's results markers, if it has them."""
    start, end = "<!-- results: written by python -m benchmarks.report -->", "<!-- results end -->"
    text = readme.read_text() if readme.is_file() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        readme.write_text("\n".join([before + start, *block, end]) + rest.split(end, 1)[1])


def hand_written(paragraph: Path) -> list[str]:
    """A hand-written note's lines for results.md or the README, with a blank line after; none if it is absent."""
    return [paragraph.read_text().strip(), ""] if paragraph.is_file() else []


def main(args: Args):
    cells, sweeps = load_cells(args.results), load_sweeps(args.results)
    if not cells and not sweeps:
        raise SystemExit(f"error: no runs recorded under {args.results}; run `python -m benchmarks.run` first")
    lines = ["# Results", "",
             "Normalized score (0 = random, 100 = expert) of the deterministic policy over 10 evaluation episodes,",
             "mean ± std over seeds. *final*: at the last evaluation; *best*: the best point of the seed-averaged",
             "curve (optimistic: it picks a step after seeing the scores). Minutes per seed: a program's wall time",
             "(evaluations included) divided by the seeds it trained at once. Made by `python -m benchmarks.run`,",
             "written by `python -m benchmarks.report`. Stand-in datasets: not comparable with published D4RL numbers.",
             "In the Q figures (mean over seeds, shaded from the lowest seed to the highest), IQL's values are in its",
             "scaled rewards (x 1000 / the data's return range).", ""]
    readme = []
    comparison = imitation_comparison(cells)
    if comparison:
        plot_imitation(comparison, args.out.parent / "imitation.png")
        summary = hand_written(args.results / "IMITATION.md")  # where each family wins and loses, from the figure
        lines += ["## What offline RL buys over imitation", "", "![what offline RL buys over imitation](imitation.png)",
                  "", *summary]
        readme += [f"![what offline RL buys over imitation]({args.out.parent.name}/imitation.png)", "", *summary]
    for env_id in sorted({env for env, _ in cells}):
        rows = {name: summarize(records) for (env, name), records in sorted(cells.items()) if env == env_id}
        builds = dataset_builds(rows)
        dataset = builds[0][0] if builds else None  # the build most rows trained on draws the figure's line
        stem = env_id.replace("/", "-")
        plot(env_id, cells, "charts/normalized_score", "normalized score", args.out.parent / f"results_{stem}.png",
             data_mean=dataset["mean_normalized_return"] if dataset else None)
        plot(env_id, cells, "values/q", "mean Q(s, a), training batches", args.out.parent / f"results_{stem}_q.png",
             log=True)  # iql.py scales its rewards (x 1000 / return range): its Q is on another scale
        figures = f"![learning curves](results_{stem}.png) ![Q estimates](results_{stem}_q.png)"
        lines += [f"## {env_id}", "", data_line(builds), "", *score_table(rows), "", figures, "", "Commands:", "",
                  "```", *commands(rs for (env, _), rs in cells.items() if env == env_id), "```", ""]
        lines += hand_written(args.results / env_id / "NOTES.md")  # what the numbers mean, with evidence
        readme += [f"**{env_id}**. {data_line(builds)}", "", *score_table(rows), "",
                   figures.replace("(results_", f"({args.out.parent.name}/results_"), ""]
    for (name, flag), by_env in sweeps.items():
        plot_sensitivity(name, flag, by_env, args.out.parent / f"sensitivity_{name}_{flag}.png")
    if sweeps:
        summary = hand_written(args.results / "SENSITIVITY.md")  # what the curves say
        lines += ["## Sensitivity to the regularisation strength", "", *summary, *sensitivity_section(sweeps)]
        readme += [*summary, *sensitivity_section(sweeps, f"{args.out.parent.name}/", with_commands=False)]
    everything = [r for rs in cells.values() for r in rs] + [r for by_env in sweeps.values() for by_value in
                                                             by_env.values() for rs in by_value.values() for r in rs]
    machines = sorted({re.sub(r" \(updates \d+ to \d+\)$", "", m)  # a resumed run's machines, each once
                       for r in everything for m in r["machine"].split("; ")})
    dates = sorted({r["date"] for r in everything})
    lines += [f"Machine: {'; '.join(machines)}. Runs made {dates[0]} to {dates[-1]}.", ""]
    args.out.write_text("\n".join(lines))
    link = f"{args.out.parent.name}/{args.out.name}"
    footer = f"Machine: {'; '.join(machines)}. The commands, and notes on what the numbers mean: [`{link}`]({link})."
    update_readme(args.readme, [*readme, footer])
    print(f"wrote {args.out} and its figures")


if __name__ == "__main__":
    main(tyro.cli(Args))
