"""Where one update's time goes, line by line of the algorithm's file.

    python -m benchmarks.profile_update                 # iql td3_bc awr: writes benchmarks/profile.md and .json
    python -m benchmarks.profile_update --algos iql --top 20
    python -m benchmarks.profile_update --algos iql --num-seeds 1 8 32     # on a GPU: writes profile_gpu.md

The jitted training chunk (the scripts' own `train_chunk`, default hyperparameters, Hopper's shapes, the
synthetic 1M-transition dataset of benchmarks/speed.py) runs under `jax.profiler.trace`. On the CPU, XLA
records every operation it executes (a "thunk": a fused elementwise loop, a matrix product, a copy) with its
start and duration. The compiled module says which source lines produced each operation, so its time is
charged to the innermost line of the algorithm's own file on that stack: a Dense layer's forward and backward
both count towards the `critic.apply(...)` line that called it, an Adam step towards the `opt.update` line.

Reported per line: time per update (the operation's own time, nested operations subtracted), its share of all
operation time, and how much of that is matrix products. Operation times add up to more than the wall time
when XLA runs independent operations side by side on several cores; both are shown.
On a GPU the trace holds kernels rather than XLA operations, so there it answers another question: for 1, 8, 32
vmapped seeds (`--num-seeds`), how long an update takes and how much of that the device spends running kernels
(the union of its streams' kernel intervals), into profile_gpu.md. An idle device waits on the host.
"""

import gzip
import json
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import jax
import tyro

from benchmarks.algorithms import load_algorithm
from benchmarks.speed import VARIANTS, build, machine, synthetic_data, vmapped_chunk

OUT = Path(__file__).parent


def source_lines(hlo_text: str) -> dict[int, list[tuple[str, int]]]:
    """stack frame id -> its call stack as (file, line), innermost first, from a compiled module's tables."""
    tables, current = defaultdict(dict), None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = line
        elif current and (m := re.match(r"(\d+) (.*)", line)):
            tables[current][int(m[1])] = m[2]
        else:
            current = None
    files = {i: name.strip('"') for i, name in tables["FileNames"].items()}
    locations = {i: (files[int(re.search(r"file_name_id=(\d+)", s)[1])], int(re.search(r"\bline=(\d+)", s)[1]))
                 for i, s in tables["FileLocations"].items()}
    stacks = {}
    for frame in sorted(tables["StackFrames"]):
        s = tables["StackFrames"][frame]
        parent = int(re.search(r"parent_frame_id=(\d+)", s)[1]) - 1  # printed one higher; 0 means none
        stacks[frame] = [locations[int(re.search(r"file_location_id=(\d+)", s)[1])]] + stacks.get(parent, [])
    return stacks


def operations(hlo_text: str) -> dict[str, tuple[int | None, bool]]:
    """instruction name -> (its stack frame id, whether it is or contains a matrix product)."""
    with_dot, ops, computation = set(), {}, None
    for line in hlo_text.splitlines():
        if m := re.match(r"%?([\w.\-]+) .*\{$", line):  # a computation's header
            computation = m[1]
        if " dot(" in line and computation:
            with_dot.add(computation)
    for line in hlo_text.splitlines():
        if m := re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\(", line):
            frame = re.search(r"stack_frame_id=(\d+)", line)
            calls = re.search(r"calls=%([\w.\-]+)", line)
            is_dot = m[2] == "dot" or (calls is not None and calls[1] in with_dot)
            ops.setdefault(m[1], (int(frame[1]) if frame else None, is_dot))
    return ops


def self_times(events: list[dict], names) -> dict[str, float]:
    """Total own time (µs) of each named operation: its duration less that of operations nested inside it."""
    totals = defaultdict(float)
    by_thread = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e["name"] in names:
            by_thread[(e["pid"], e["tid"])].append(e)
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # enclosing operations, outermost first
        for e in thread:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            totals[e["name"]] += e["dur"]
            if stack:
                totals[stack[-1]["name"]] -= e["dur"]
            stack.append(e)
    return totals


def traced(chunk, state, data, chunks: int) -> tuple[list[dict], float]:
    """(the trace's events, wall seconds) of `chunks` calls of `chunk`, after one untraced warm-up call."""
    state, metrics = chunk(state, data)
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(chunks):
                state, metrics = chunk(state, data)
                jax.block_until_ready(metrics)
            wall = time.perf_counter() - start
        events = json.loads(gzip.decompress(next(Path(trace_dir).rglob("*.trace.json.gz")).read_bytes()))
    return (events["traceEvents"] if isinstance(events, dict) else events), wall


def profile(algo: str, log_every: int, chunks: int) -> dict:
    script = VARIANTS.get(algo, (algo, {}))[0]
    path = str(Path(load_algorithm(script)[0].__file__).resolve())
    init, _, train_chunk = build(algo, log_every)
    data = synthetic_data(jax.random.PRNGKey(1))
    state = init(jax.random.PRNGKey(0))
    compiled = train_chunk.lower(state, data).compile()
    hlo = compiled.as_text()
    events, wall = traced(compiled, state, data, chunks)
    updates = log_every * chunks
    ops, stacks = operations(hlo), source_lines(hlo)
    times = self_times(events, ops)
    if not times:
        raise SystemExit("error: the trace holds no XLA:CPU operations (run with JAX_PLATFORMS=cpu)")
    code = Path(path).read_text().splitlines()
    per_line = defaultdict(lambda: {"us": 0.0, "matmul_us": 0.0, "operations": 0})
    for name, us in times.items():
        frame, is_dot = ops[name]
        line = next((n for f, n in stacks.get(frame, []) if f == path), None)
        row = per_line[line]
        row["us"] += us / updates
        row["matmul_us"] += us / updates if is_dot else 0.0
        row["operations"] += 1
    total = sum(r["us"] for r in per_line.values())
    rows = [{"line": line, "source": code[line - 1].strip() if line else "(no line of the script)",
             "us_per_update": round(r["us"], 1), "share": round(r["us"] / total, 4),
             "matmul_us_per_update": round(r["matmul_us"], 1), "operations": r["operations"]}
            for line, r in sorted(per_line.items(), key=lambda kv: -kv[1]["us"])]
    return {"algorithm": algo, "file": Path(path).name, "wall_ms_per_update": round(wall / updates * 1e3, 3),
            "operation_ms_per_update": round(total / 1e3, 3),
            "matmul_share": round(sum(r["matmul_us"] for r in per_line.values()) / total, 3),
            "operations_per_update": len(times), "lines": rows}


def device_profile(algo: str, log_every: int, chunks: int, num_seeds: int) -> dict:
    """Per update of `num_seeds` vmapped seeds on an accelerator: wall time, and the time the device ran kernels."""
    events, wall = traced(*vmapped_chunk(algo, log_every, num_seeds), chunks)
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    streams = {key for key, name in threads.items() if name.startswith("Stream")}  # not the derived "XLA Ops" lines
    kernels = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("ph") == "X" and (e["pid"], e["tid"]) in streams)
    if not kernels:
        raise SystemExit(f"error: the trace has no device stream lanes (its lanes: {sorted(set(threads.values()))})")
    busy, end = 0.0, -float("inf")  # the union of the kernel intervals, over all streams
    for begin, finish in kernels:
        busy += max(0.0, finish - max(begin, end))
        end = max(end, finish)
    updates = log_every * chunks
    return {"algorithm": algo, "num_seeds": num_seeds, "wall_us_per_update": round(wall / updates * 1e6, 1),
            "busy_us_per_update": round(busy / updates, 1), "busy_share": round(busy / (wall * 1e6), 3),
            "kernels_per_update": round(len(kernels) / updates, 1),
            "seed_updates_per_s": round(num_seeds * updates / wall, 1)}


def table(result: dict, top: int) -> str:
    shown, rest = result["lines"][:top], result["lines"][top:]
    lines = [f"| {r['line'] or ''} | `{r['source'][:90]}` | {r['us_per_update']} | {100 * r['share']:.1f}% | "
             f"{r['matmul_us_per_update']} |" for r in shown]
    if rest:
        us, share, matmul = (sum(r[k] for r in rest) for k in ("us_per_update", "share", "matmul_us_per_update"))
        lines.append(f"| | {len(rest)} more lines | {us:.1f} | {100 * share:.1f}% | {matmul:.1f} |")
    return (f"## {result['algorithm']} ({result['file']})\n\n"
            f"Wall time {result['wall_ms_per_update']} ms per update; the operations' own times add up to "
            f"{result['operation_ms_per_update']} ms ({result['operations_per_update']} distinct operations, "
            f"{100 * result['matmul_share']:.0f}% of their time in matrix products).\n\n"
            "| line | source | µs/update | share | of it in matmuls |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


@dataclass
class Args:
    algos: tuple[str, ...] = ("iql", "td3_bc", "awr")
    log_every: int = 200
    """updates per compiled chunk; the trace holds every operation of every update, so keep it short"""
    chunks: int = 3
    """traced chunks, after one untraced warm-up"""
    top: int = 15
    """lines shown per algorithm; the rest are summed in one row"""
    num_seeds: tuple[int, ...] = (1, 8, 32)
    """on a GPU: the vmapped seed counts profiled"""
    out: Path = OUT


def main(args: Args):
    algos = " ".join(args.algos)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    if jax.default_backend() != "cpu":
        seeds = " ".join(map(str, args.num_seeds))
        result |= {"command": f"python -m benchmarks.profile_update --algos {algos} --num-seeds {seeds}",
                   "results": [device_profile(a, args.log_every, args.chunks, n) for a in args.algos
                               for n in args.num_seeds]}
        (args.out / "profile_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        rows = [f"| {r['algorithm']} | {r['num_seeds']} | {r['wall_us_per_update']} | {r['busy_us_per_update']} | "
                f"{100 * r['busy_share']:.0f}% | {r['kernels_per_update']} | {r['seed_updates_per_s']} |"
                for r in result["results"]]
        text = (f"# How busy the device is during an update\n\n`{result['command']}` on {result['machine']}, "
                f"{result['date']}; {args.chunks} traced chunks of {args.log_every} updates. Busy: the union of the "
                "device streams' kernel intervals.\n\n| algorithm | seeds | wall µs/update | busy µs/update | busy | "
                "kernels/update | seed-updates/s |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
        (args.out / "profile_gpu.md").write_text(text)
        print(text)
        return
    result |= {"command": f"python -m benchmarks.profile_update --algos {algos}",
               "results": [profile(algo, args.log_every, args.chunks) for algo in args.algos]}
    (args.out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    text = (f"# Where an update's time goes\n\n`{result['command']}` on {result['machine']}, {result['date']}.\n"
            f"Default hyperparameters, batch 256, Hopper shapes, {args.chunks} traced chunks of {args.log_every} "
            "updates. Each XLA operation's own time is charged to the innermost line of the algorithm's file that "
            "produced it, forward and backward together.\n\n"
            + "\n".join(table(r, args.top) for r in result["results"]))
    (args.out / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(tyro.cli(Args))
