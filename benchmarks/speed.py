"""How fast does each algorithm train, and how close is that to what this machine can do?

    python -m benchmarks.speed                  # all algorithms, writes benchmarks/speed.md and speed.json
                                                # (speed_gpu.md and speed_gpu.json where jax sees a GPU)
    python -m benchmarks.speed --algos iql --seconds 10

For each algorithm, with the paper's networks (2 x 256) at batch 256 on Hopper's shapes (obs 11, action 3)
and a synthetic 1M-transition dataset on the device:
  - compile time of the jitted chunk (`--log-every` updates in one lax.scan);
  - updates/s after warm-up (median over chunks);
  - FLOPs per update counted by XLA on the compiled update, split into matrix products (dot) and the rest;
  - achieved GFLOP/s, against this machine's dense-matmul peak measured in the same run;
  - where the time goes: the dot FLOPs at peak speed, batch sampling alone, and the remainder;
  - peak RSS of the process.
Nothing here is asserted: these are measurements, recorded with the machine they came from.
"""

import json
import os
import platform
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from benchmarks.algorithms import load_algorithm

OUT = Path(__file__).parent
OBS_DIM, ACTION_DIM, DATASET_SIZE = 11, 3, 1_000_000


def matmul_peak(seconds: float = 2.0) -> float:
    """Best float32 GFLOP/s of a jitted square matmul on this device."""
    best = 0.0
    sizes = (256, 512, 1024, 2048) + ((4096, 8192) if jax.default_backend() != "cpu" else ())  # a GPU needs big ones
    for n in sizes:
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 4:
            f(a).block_until_ready()
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def dot_flops(hlo_text: str) -> float:
    """FLOPs of the dot (matrix product) instructions in an optimised HLO module: 2 x output size x contraction."""
    shapes = {}
    total = 0.0
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = f32\[([\d,]*)\]", line)
        if m:
            shapes[m[1]] = [int(d) for d in m[2].split(",") if d]
        if " dot(" in line and m:
            operands = re.search(r"dot\(([^)]*)\)", line)[1].split(",")
            lhs = operands[0].strip().split(" ")[-1].lstrip("%")
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)[1]
            k = np.prod([shapes[lhs][int(d)] for d in contracting.split(",") if d]) if lhs in shapes else 0
            total += 2.0 * np.prod(shapes[m[1]]) * k
    return total


def synthetic_data(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"obs": jax.random.normal(k1, (DATASET_SIZE, OBS_DIM)),
            "action": jax.random.uniform(k2, (DATASET_SIZE, ACTION_DIM), minval=-0.99, maxval=0.99),
            "reward": jax.random.normal(k3, (DATASET_SIZE,)),
            "next_obs": jax.random.normal(k4, (DATASET_SIZE, OBS_DIM)),
            "terminal": jnp.zeros((DATASET_SIZE,))}


VARIANTS = {"sac_bc": ("td3_bc", {"variant": "sac_bc"})}  # measured under their own name: script, flags


def build(algo: str, log_every: int):
    """(init, update, train_chunk) of one algorithm file (or variant) with its default hyperparameters."""
    script, flags = VARIANTS.get(algo, (algo, {}))
    module, make_agent = load_algorithm(script)
    agent = make_agent(module.Args(log_every=log_every, **flags), OBS_DIM, ACTION_DIM)
    return agent.init, agent.update, agent.train_chunk


def median_chunk_seconds(chunk, state, data, seconds: float) -> float:
    """Median wall time of one call of `chunk`, after a warm-up call, over about `seconds` of calls."""
    state, _ = chunk(state, data)
    jax.block_until_ready(state)
    times = []
    while sum(times) < seconds:
        start = time.perf_counter()
        state, metrics = chunk(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(algo: str, log_every: int, seconds: float, peak: float) -> dict:
    init, update, train_chunk = build(algo, log_every)
    data = synthetic_data(jax.random.PRNGKey(1))
    state = init(jax.random.PRNGKey(0))

    start = time.perf_counter()
    compiled = train_chunk.lower(state, data).compile()
    compile_s = time.perf_counter() - start

    batch = jax.tree.map(lambda x: x[:256], data)
    one_update = jax.jit(update).lower(state, batch).compile()
    flops = float(one_update.cost_analysis()["flops"])
    dots = dot_flops(one_update.as_text())

    updates_per_s = log_every / median_chunk_seconds(compiled, state, data, seconds)

    @jax.jit
    def sampling_only(key):  # the same gathers as a chunk, with no learning
        def step(key, _):
            key, k = jax.random.split(key)
            idx = jax.random.randint(k, (256,), 0, DATASET_SIZE)
            return key, sum(jnp.sum(x[idx]) for x in data.values())
        return jax.lax.scan(step, key, length=log_every)[1]

    sampling_only(jax.random.PRNGKey(0)).block_until_ready()
    start = time.perf_counter()
    sampling_only(jax.random.PRNGKey(1)).block_until_ready()
    sampling_s = (time.perf_counter() - start) / log_every

    per_update = 1.0 / updates_per_s
    dot_at_peak = dots / (peak * 1e9)
    return {
        "algorithm": algo, "updates_per_s": round(updates_per_s, 1), "compile_s": round(compile_s, 2),
        "mflop_per_update": round(flops / 1e6, 1), "dot_mflop_per_update": round(dots / 1e6, 1),
        "gflop_per_s": round(flops * updates_per_s / 1e9, 1),
        "fraction_of_peak": round(flops * updates_per_s / 1e9 / peak, 3),
        "time_split_ms": {"total": round(per_update * 1e3, 3), "dots_at_peak": round(dot_at_peak * 1e3, 3),
                          "sampling": round(sampling_s * 1e3, 3),
                          "rest": round((per_update - dot_at_peak - sampling_s) * 1e3, 3)},
    }


def vmapped_chunk(algo: str, log_every: int, num_seeds: int):
    """(the jitted chunk that trains `num_seeds` stacked states at once as --num-seeds does, the states, the data)."""
    init, _, train_chunk = build(algo, log_every)
    state = jax.vmap(init)(jax.random.split(jax.random.PRNGKey(0), num_seeds))
    return jax.jit(jax.vmap(train_chunk, in_axes=(0, None))), state, synthetic_data(jax.random.PRNGKey(1))


def measure_seeds(algo: str, log_every: int, seconds: float, num_seeds: int) -> float:
    """Seed-updates/s of `num_seeds` states trained by one vmapped chunk (the scripts' --num-seeds)."""
    return num_seeds * log_every / median_chunk_seconds(*vmapped_chunk(algo, log_every, num_seeds), seconds)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    accelerator = "" if device.platform == "cpu" else f"{device.device_kind} with "
    return f"{accelerator}{cpu} ({os.cpu_count()} cores), jax {jax.__version__}"


@dataclass
class Args:
    algos: tuple[str, ...] = ("iql", "td3_bc", "sac_bc", "awr", "cql")
    seconds: float = 20.0
    """timed seconds per algorithm, after warm-up"""
    log_every: int = 1000
    """updates per compiled chunk, as in the scripts (CQL, about 40x costlier per update, uses a tenth)"""
    num_seeds: tuple[int, ...] = (1, 4, 8)
    """seed counts of the vmapped (--num-seeds) measurement; 1 is the single run measured above"""
    out: Path = OUT


def main(args: Args):
    peak = matmul_peak()
    print(f"dense-matmul peak: {peak:.1f} GFLOP/s on {machine()}")
    rows = []
    for algo in args.algos:
        log_every = args.log_every // 10 if algo == "cql" else args.log_every
        row = measure(algo, log_every, args.seconds, peak)
        row["seed_updates_per_s"] = {n: row["updates_per_s"] if n == 1 else
                                     round(measure_seeds(algo, log_every, args.seconds, n), 1) for n in args.num_seeds}
        rows.append(row)
        print(json.dumps(row))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"machine": machine(), "matmul_peak_gflop_per_s": round(peak, 1), "peak_rss_mb": round(rss_mb),
              "command": f"python -m benchmarks.speed --seconds {args.seconds:g} --algos " + " ".join(args.algos)
                         + " --num-seeds " + " ".join(map(str, args.num_seeds)),
              "date": time.strftime("%Y-%m-%d"), "results": rows}
    on_cpu = jax.default_backend() == "cpu"
    stem = "speed" if on_cpu else "speed_gpu"  # keep the CPU's figures beside the GPU's
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"| {r['algorithm']} | {r['updates_per_s']} | {r['compile_s']} | {r['mflop_per_update']} "
             f"({r['dot_mflop_per_update']} in dots) | {r['gflop_per_s']} | {100 * r['fraction_of_peak']:.0f}% | "
             f"{r['time_split_ms']['total']} = {r['time_split_ms']['dots_at_peak']} dots at peak + "
             f"{r['time_split_ms']['sampling']} sampling + {r['time_split_ms']['rest']} rest |" for r in rows]
    seed_lines = [f"| {r['algorithm']} | " + " | ".join(
        f"{v} ({v / r['updates_per_s']:.2f}x)" for v in r["seed_updates_per_s"].values()) + " |" for r in rows]
    (args.out / f"{stem}.md").write_text(
        f"# Training speed\n\n`{result['command']}` on {result['machine']}, {result['date']}.\n"
        f"Networks 2 x 256, batch 256, Hopper shapes, {args.log_every} updates per compiled chunk "
        f"({args.log_every // 10} for CQL). "
        f"Dense-matmul peak measured in the same run: {peak:.1f} GFLOP/s. "
        f"Peak RSS of the whole run: {rss_mb:.0f} MB.\n\n"
        "XLA counts both branches of a `lax.cond` as executed, so TD3+BC's FLOPs include its delayed actor step on "
        "every update (it runs on every second): its MFLOP/update, GFLOP/s and share of peak are overstated by "
        "about a fifth.\n\n" + ("" if on_cpu else
        "On NVIDIA GPUs since Ampere, JAX's default precision lets XLA run float32 matrix products on TF32 tensor "
        "cores, in the peak and in training alike.\n\n") +
        "| algorithm | updates/s | compile (s) | MFLOP/update | GFLOP/s | of peak | ms per update |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        "## Many seeds in one program (`--num-seeds N`)\n\n"
        "Seed-updates/s: N x the updates/s of one vmapped program that trains N seeds, and in brackets its ratio to "
        "one single-seed run, which is also what N separate runs one after another achieve.\n\n"
        "| algorithm | " + " | ".join(f"N = {n}" for n in args.num_seeds) + " |\n"
        "|---|" + "---|" * len(args.num_seeds) + "\n" + "\n".join(seed_lines) + "\n")
    print((args.out / f"{stem}.md").read_text())


if __name__ == "__main__":
    main(tyro.cli(Args))
