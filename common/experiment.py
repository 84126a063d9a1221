"""The experiment flags every script shares, their checks, the dataset they name, and the stacked states of
their seeds and swept values, with the one program that trains them all.

Nothing here touches the maths: each script's `main` runs its own loop with these and the other helpers.
"""

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import jax
import jax.numpy as jnp
import tyro

from common.datasets import DatasetError, load_dataset
from common.video import choose_gl_backend

DEFAULT_ENV_ID = "hopper-medium"  # the dataset of a run started without --env-id

# A flag that enters only the losses: one value, or several (`--alpha 1 2.5 5`), which are then all trained in one
# program, each with --num-seeds seeds (a sweep). Several such flags each given several values sweep their grid.
Sweepable = Annotated[float | tuple[float, ...], tyro.conf.arg(metavar="FLOAT [FLOAT ...]")]


@dataclass
class ExperimentArgs:
    """The flags of the run, not of the algorithm: each script's `Args` extends this (and sets its --exp-name)."""
    env_id: str | None = None
    """dataset: D4RL-style name (hopper-medium, walker2d-medium-expert, ...) or a Minari id; unset: hopper-medium
    (with --eval-only: the checkpoint's own)"""
    exp_name: str = "run"
    """the middle of the run directory's name"""
    seed: int = 0
    num_seeds: int = 1
    """train seeds seed, seed + 1, ..., seed + N − 1 at once, as one vmapped program; a flag shown as
    FLOAT [FLOAT ...] takes several values, a sweep: every value (of several such flags: every combination) trains
    these N seeds, all in the same program, each logged and evaluated on its own"""
    total_steps: int = 1_000_000
    """gradient updates"""
    log_every: int = 1_000
    """updates per compiled chunk; losses are logged once per chunk"""
    eval_every: int = 10_000
    """updates between two evaluations (a multiple of --log-every)"""
    eval_episodes: int = 10
    """deterministic evaluation episodes; episode i starts from reset(seed=10000 + i)"""
    eval_workers: int | None = None
    """processes that step the evaluation episodes side by side, with the same returns (default: one per 16 of
    the seeds' episodes, at most one per core; 1: all in this process)"""
    save_every: int = 0
    """updates between two checkpoints (0: only the final one); a multiple of --log-every"""
    eval_only: bool = False
    """evaluate --checkpoint instead of training"""
    checkpoint: Path | None = None
    """with --eval-only, the checkpoint to evaluate; without, a stopped run's checkpoint to go on training"""
    capture_video: bool = False
    """render each evaluation's first episode (one per seed): runs/<run>/videos/update_<N>.mp4 and TensorBoard"""
    video_every: int = 100_000
    """with --capture-video, record the first evaluation, the first at or after every K updates, and the last; 0:
    every evaluation (each recording costs about 7 CPU seconds: benchmarks/video_cost.md)"""


def check_experiment_args(args, algorithm_problems=lambda args: ()):
    """Stop with one clear line on the first bad flag: the shared experiment flags, then the algorithm's.

    `algorithm_problems(args)` -> (failed, message) pairs, checked for every combination of swept values.
    Without --eval-only, an unset --env-id becomes DEFAULT_ENV_ID (with it, the checkpoint's own is used); a swept
    flag given one value in a tuple becomes that value. The comparisons are written so that a NaN fails them too.
    """
    if args.env_id is None and not args.eval_only:
        args.env_id = DEFAULT_ENV_ID
    for name, values in sweep(args).items():
        if len(values) == 1:
            setattr(args, name, values[0])
    steps_ok = args.log_every > 0 and args.total_steps > 0
    widths = " ".join(map(str, args.hidden_dims)) or "none"
    learning_rates = [(f"--{f.name.replace('_', '-')}", getattr(args, f.name)) for f in dataclasses.fields(args)
                      if f.name.endswith(("learning_rate", "_lr"))]
    problems = [
        (not args.exp_name or "/" in args.exp_name, f"--exp-name must be a name without '/', got '{args.exp_name}'"),
        (args.batch_size <= 0, f"--batch-size must be positive, got {args.batch_size}"),
        (not steps_ok, "--total-steps and --log-every must be positive"),
        (args.save_every < 0, f"--save-every must be >= 0 (0: only the final checkpoint), got {args.save_every}"),
        (steps_ok and (args.total_steps % args.log_every or args.eval_every % args.log_every
                       or args.save_every % args.log_every),
         f"--total-steps, --eval-every and --save-every must be multiples of --log-every ({args.log_every})"),
        (args.eval_every <= 0 or args.eval_episodes <= 0, "--eval-every and --eval-episodes must be positive"),
        (args.eval_workers is not None and args.eval_workers < 1,
         f"--eval-workers must be >= 1 (1: step every episode in this process), got {args.eval_workers}"),
        (args.eval_only and args.checkpoint is None, "--eval-only needs --checkpoint PATH"),
        (args.video_every < 0, f"--video-every must be >= 0 (0: every evaluation), got {args.video_every}"),
        (args.num_seeds <= 0, f"--num-seeds must be positive, got {args.num_seeds}"),
        (args.checkpoint is not None and not Path(args.checkpoint).is_file(), f"no checkpoint at {args.checkpoint}"),
        (not args.hidden_dims or min(args.hidden_dims) <= 0,
         f"--hidden-dims must be one or more positive layer widths (e.g. --hidden-dims 256 256), got {widths}"),
        (not 0 <= args.discount <= 1, f"--discount must be in [0, 1], got {args.discount}"),
        (not 0 < args.polyak <= 1, f"--polyak must be in (0, 1], got {args.polyak}"),
        *((not rate > 0, f"{flag} must be > 0, got {rate}") for flag, rate in learning_rates),
        *((len(set(values)) < len(values) or not values, f"--{name.replace('_', '-')} takes one value, or several "
           f"different ones to sweep them, got {' '.join(map(str, values)) or 'none'}")
          for name, values in sweep(args).items()),
        *(problem for one in single_valued(args) for problem in algorithm_problems(one)),
    ]
    for failed, message in problems:
        if failed:
            raise SystemExit(f"error: {message}")
    if args.capture_video:
        choose_gl_backend()  # before any data or training: stops with one sentence where MuJoCo cannot render


def load_training_data(env_id: str):
    """The dataset --env-id names (common/datasets.py), or a one-line exit saying why it cannot be had."""
    try:
        return load_dataset(env_id)
    except DatasetError as e:
        raise SystemExit(f"error: {e}")


def sweep(args) -> dict[str, tuple[float, ...]]:
    """The swept flags, each with its values: the Sweepable fields given as a tuple ({} when each has one value)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args)
            if f.type is Sweepable and isinstance(getattr(args, f.name), tuple)}


def single_valued(args) -> list:
    """One copy of args per combination of swept values, each flag holding its one value ([args] without a sweep)."""
    grid = sweep(args)
    return [dataclasses.replace(args, **dict(zip(grid, values))) for values in itertools.product(*grid.values())]


def run_labels(args) -> list[dict]:
    """What each trained state is, in the order they are stacked: its swept values (none without a sweep), then
    its seed. The combinations come in the order of the flags' values, each with seeds seed, ..., seed + N − 1."""
    seeds = range(args.seed, args.seed + args.num_seeds)
    return [{k: getattr(one, k) for k in sweep(args)} | {"seed": seed} for one in single_valued(args) for seed in seeds]


def describe(label: dict) -> str:
    """'seed 3', or for a sweep 'alpha 2.5, seed 3'."""
    return ", ".join(f"{k.replace('_', '-')} {v:g}" if k != "seed" else f"seed {v}" for k, v in label.items())


def init_states(init, args):
    """`init(PRNGKey(seed))`; with several seeds or swept values, every state of `run_labels` stacked on a new axis
    (the same seed gives the same initial state whatever its swept values)."""
    labels = run_labels(args)
    if len(labels) == 1:
        return init(jax.random.PRNGKey(args.seed))
    return jax.vmap(init)(jax.vmap(jax.random.PRNGKey)(jnp.array([label["seed"] for label in labels])))


def compile_chunk(make_agent, args, obs_dim: int, action_dim: int):
    """`train_chunk(states, data)` for the states of `init_states`: the agent's own for one state, else one vmapped
    program over all of them. In a sweep each state's agent is built from args holding that state's values of the
    swept flags: there they are traced numbers, inputs of the program, so the losses read them as they read a float.
    A run without a sweep compiles exactly what it did before sweeps existed."""
    labels, grid = run_labels(args), sweep(args)
    if not grid:
        chunk = make_agent(args, obs_dim, action_dim).train_chunk
        return chunk if len(labels) == 1 else jax.jit(jax.vmap(chunk, in_axes=(0, None)))
    values = {name: jnp.array([label[name] for label in labels], jnp.float32) for name in grid}  # one per state

    def chunk(state, data, values):
        return make_agent(dataclasses.replace(args, **values), obs_dim, action_dim).train_chunk(state, data)
    batched = jax.jit(jax.vmap(chunk, in_axes=(0, None, 0)))
    return lambda states, data: batched(states, data, values)


def per_seed(metrics: dict, num_states: int) -> list[dict]:
    """A chunk's metrics, one dict per trained state: with several their arrays carry the states on axis 0."""
    if num_states == 1:
        return [metrics]
    return [{k: v[i] for k, v in metrics.items()} for i in range(num_states)]
