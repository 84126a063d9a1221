"""The experiment flags every script shares, their checks, the dataset they name and the states of their seeds.

Nothing here touches the maths: each script's `main` runs its own loop with these and the other helpers.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from common.datasets import DatasetError, load_dataset
from common.video import choose_gl_backend

DEFAULT_ENV_ID = "hopper-medium"  # the dataset of a run started without --env-id


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
    """train seeds seed, seed + 1, ..., seed + N − 1 at once, as one vmapped program"""
    total_steps: int = 1_000_000
    """gradient updates"""
    log_every: int = 1_000
    """updates per compiled chunk; losses are logged once per chunk"""
    eval_every: int = 10_000
    """updates between two evaluations (a multiple of --log-every)"""
    eval_episodes: int = 10
    """deterministic evaluation episodes; episode i starts from reset(seed=10000 + i)"""
    save_every: int = 0
    """updates between two checkpoints (0: only the final one); a multiple of --log-every"""
    eval_only: bool = False
    """evaluate --checkpoint instead of training"""
    checkpoint: Path | None = None
    """with --eval-only, the checkpoint to evaluate; without, a stopped run's checkpoint to go on training"""
    capture_video: bool = False
    """render each evaluation's first episode (one per seed): runs/<run>/videos/update_<N>.mp4 and TensorBoard"""
    video_every: int = 0
    """with --capture-video, updates between two recorded evaluations (a multiple of --eval-every); 0: every one"""


def check_experiment_args(args, *algorithm_problems: tuple[bool, str]):
    """Stop with one clear line on the first bad flag: the shared experiment flags, then the algorithm's.

    Without --eval-only, an unset --env-id becomes DEFAULT_ENV_ID (with it, the checkpoint's own is used).
    The comparisons are written so that a NaN fails them too.
    """
    if args.env_id is None and not args.eval_only:
        args.env_id = DEFAULT_ENV_ID
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
        (args.eval_only and args.checkpoint is None, "--eval-only needs --checkpoint PATH"),
        (args.video_every < 0 or (args.eval_every > 0 and args.video_every % args.eval_every),
         f"--video-every must be 0 (every evaluation) or a multiple of --eval-every ({args.eval_every})"),
        (args.num_seeds <= 0, f"--num-seeds must be positive, got {args.num_seeds}"),
        (args.checkpoint is not None and not Path(args.checkpoint).is_file(), f"no checkpoint at {args.checkpoint}"),
        (not args.hidden_dims or min(args.hidden_dims) <= 0,
         f"--hidden-dims must be one or more positive layer widths (e.g. --hidden-dims 256 256), got {widths}"),
        (not 0 <= args.discount <= 1, f"--discount must be in [0, 1], got {args.discount}"),
        (not 0 < args.polyak <= 1, f"--polyak must be in (0, 1], got {args.polyak}"),
        *((not rate > 0, f"{flag} must be > 0, got {rate}") for flag, rate in learning_rates),
        *algorithm_problems,
    ]
    for failed, message in problems:
        if failed:
            raise SystemExit(f"error: {message}")
    if args.capture_video:
        choose_gl_backend()  # before any data or training: stops with one sentence where MuJoCo cannot render


def load_training_data(args):
    """The dataset --env-id names (common/datasets.py), or a one-line exit saying why it cannot be had."""
    try:
        return load_dataset(args.env_id)
    except DatasetError as e:
        raise SystemExit(f"error: {e}")


def init_states(init, args):
    """`init(PRNGKey(seed))`; with --num-seeds N, the states of seeds seed, ..., seed + N − 1 stacked on a new axis."""
    if args.num_seeds == 1:
        return init(jax.random.PRNGKey(args.seed))
    return jax.vmap(init)(jax.vmap(jax.random.PRNGKey)(args.seed + jnp.arange(args.num_seeds)))




def per_seed(metrics: dict, num_seeds: int) -> list[dict]:
    """A chunk's metrics, one dict per seed: with --num-seeds N > 1 their arrays carry the seeds on axis 0."""
    if num_seeds == 1:
        return [metrics]
    return [{k: v[i] for k, v in metrics.items()} for i in range(num_seeds)]
