"""What --capture-video adds to one evaluation: wall time with and without recording, on hopper.

    python -m benchmarks.video_cost    # writes benchmarks/video_cost.md

The policy is hopper's committed expert acting deterministically (its tanh-squashed mean), so every episode runs
the full 1000 steps: the longest an evaluation can be, and the most frames a recording can have. One evaluation is
what a script runs at each --eval-every: 10 episodes stepped together. With --capture-video the first of them is
also rendered (common/video.py), then written as an mp4 and as TensorBoard's GIF, as a script does.
"""

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import tyro
from tensorboardX import SummaryWriter

from benchmarks.make_datasets import load_behavior_actor
from benchmarks.speed import machine
from common.evaluation import make_evaluator
from common.video import choose_gl_backend, log_videos


@dataclass
class Args:
    repeats: int = 3
    """evaluations of each kind, alternating; the table reports their median"""
    episodes: int = 10
    out: Path = Path(__file__).parent / "video_cost.md"


def cpu_seconds() -> float:
    t = os.times()  # children: ffmpeg, which imageio runs to encode the mp4
    return t.user + t.system + t.children_user + t.children_system


def main(args: Args):
    backend = choose_gl_backend()
    actor, params = load_behavior_actor("hopper", "expert")
    policy = jax.jit(lambda state, obs: jnp.tanh(actor.apply(state, obs)[0]))
    evaluate = make_evaluator(policy, "Hopper-v5", (15.2, 3227.1), num_seeds=1, num_episodes=args.episodes)
    evaluate(params)  # compile and warm up outside the timings
    times = {k: [] for k in ("without", "with", "render", "encode", "cpu_without", "cpu_with")}
    with tempfile.TemporaryDirectory() as tmp:
        run = SimpleNamespace(dir=Path(tmp), writer=SummaryWriter(tmp), seeds=[0])
        for i in range(args.repeats):
            start, cpu = time.perf_counter(), cpu_seconds()
            evaluate(params)
            times["without"].append(time.perf_counter() - start)
            times["cpu_without"].append(cpu_seconds() - cpu)
            start, cpu = time.perf_counter(), cpu_seconds()
            _, _, videos = evaluate(params, record=True)
            rendered = time.perf_counter()
            log_videos(run, i, videos)
            done = time.perf_counter()
            times["with"].append(done - start)
            times["cpu_with"].append(cpu_seconds() - cpu)
            times["render"].append(rendered - start)
            times["encode"].append(done - rendered)
        run.writer.close()
        mp4_kb = np.mean([p.stat().st_size for p in Path(tmp, "videos").iterdir()]) / 1e3
        events_kb = sum(p.stat().st_size for p in Path(tmp).glob("events.*")) / 1e3 / args.repeats
    median = {k: float(np.median(v)) for k, v in times.items()}
    extra = median["with"] - median["without"]
    lines = [
        "# The cost of --capture-video",
        "",
        "Written by `python -m benchmarks.video_cost` (the method is in its docstring): one evaluation of "
        f"{args.episodes} hopper episodes of 1000 steps each, by the expert behaviour policy, median of "
        f"{args.repeats}.",
        "",
        f"Machine: {machine()}; MuJoCo GL backend {backend}; load average {os.getloadavg()[0]:.1f} (1 min) when it "
        "ended.",
        "",
        "CPU seconds count this process's threads (MuJoCo, JAX, Mesa's llvmpipe) and ffmpeg's: on a machine shared "
        "with other jobs they say what the work costs, where the wall time also says how much CPU was left to it.",
        "",
        "| | wall seconds per evaluation | CPU seconds |",
        "|---|---|---|",
        f"| without --capture-video | {median['without']:.2f} | {median['cpu_without']:.2f} |",
        f"| with --capture-video | {median['with']:.2f} | {median['cpu_with']:.2f} |",
        f"| extra | {extra:.2f} ({100 * extra / median['without']:.0f}% of an evaluation) | "
        f"{median['cpu_with'] - median['cpu_without']:.2f} |",
        f"| of which rendering {len(videos[0].frames)} frames ({videos[0].frames.shape[1]}x"
        f"{videos[0].frames.shape[2]}) | {median['render'] - median['without']:.2f} | |",
        f"| of which writing the mp4 and the GIF | {median['encode']:.2f} | |",
        "",
        f"Each recording adds an mp4 of {mp4_kb:.0f} KB to runs/<run>/videos/ and about {events_kb:.0f} KB of GIF to "
        "the TensorBoard event file; `--video-every` records fewer evaluations.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
