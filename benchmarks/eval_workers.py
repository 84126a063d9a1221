"""What --eval-workers buys: the wall time of one evaluation with its episodes stepped by 1, 2, 4, ... processes.

    python -m benchmarks.eval_workers                   # writes benchmarks/eval_workers.md
    python -m benchmarks.eval_workers --episodes 150    # a sweep's evaluation: 5 values x 3 seeds x 10 episodes

The policy is hopper's committed expert acting deterministically, so every episode runs the full 1000 steps. Each
count of workers evaluates the same episodes (and checks that the returns are identical to those stepped in this
process); the workers are started before the timing, as a run starts them once for all its evaluations.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from benchmarks.make_datasets import load_behavior_actor
from benchmarks.speed import machine
from common.evaluation import make_evaluator


@dataclass
class Args:
    episodes: int = 150
    """episodes of one evaluation, stepped together"""
    workers: tuple[int, ...] = (1, 2, 4, 8, 15)
    """worker-process counts to time (those above the cores this process may use are skipped)"""
    repeats: int = 3
    """evaluations per count; the table reports their median"""
    out: Path = Path(__file__).parent / "eval_workers.md"


def main(args: Args):
    actor, params = load_behavior_actor("hopper", "expert")
    policy = jax.jit(lambda state, obs: jnp.tanh(actor.apply(state, obs)[0]))
    cores = len(os.sched_getaffinity(0))
    rows, expected = [], None
    for count in [n for n in args.workers if n <= cores]:
        evaluate = make_evaluator(policy, "Hopper-v5", (15.2, 3227.1), num_seeds=1, num_episodes=args.episodes,
                                  workers=count)
        returns, _, _ = evaluate(params)  # starts the workers and compiles the policy, outside the timings
        expected = returns if expected is None else expected
        if not np.array_equal(returns, expected):
            raise SystemExit(f"error: {count} workers returned other returns than 1 did")
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            evaluate(params)
            times.append(time.perf_counter() - start)
        evaluate.close()
        rows.append((count, float(np.median(times))))
        print(f"{count:3d} workers: {rows[-1][1]:.2f} s per evaluation")
    single = rows[0][1]
    text = "\n".join([
        "# Evaluation episodes stepped in worker processes (`--eval-workers`)",
        "",
        f"`python -m benchmarks.eval_workers --episodes {args.episodes} --workers {' '.join(map(str, args.workers))} "
        f"--repeats {args.repeats}` on {machine()}, {time.strftime('%Y-%m-%d')}; "
        f"load average {os.getloadavg()[0]:.1f} (1 min) when it ended. One evaluation: {args.episodes} hopper "
        f"episodes of 1000 steps by the expert behaviour policy, median of {args.repeats}; every count gave the "
        "same returns to the bit.",
        "",
        "| workers | seconds per evaluation | speed-up |",
        "|---|---|---|",
        *(f"| {n} | {t:.2f} | {single / t:.1f}x |" for n, t in rows),
        "",
    ])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(tyro.cli(Args))
