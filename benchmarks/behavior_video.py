"""The README's animations: policies side by side in the same episode, as --capture-video renders them.

    python -m benchmarks.behavior_video    # hopper's expert and medium behaviour policies: hopper_expert_vs_medium.webp
    python -m benchmarks.behavior_video --checkpoints runs/A/final.msgpack runs/B/final.msgpack --labels BC IQL \
        --out benchmarks/hopper_medium_replay_bc_vs_iql.webp    # trained policies, from their checkpoints

The behaviour policies act as they did when they collected the stand-in datasets (actions sampled from the
tanh-Gaussian, one fixed key), from their committed checkpoints; a trained checkpoint (any script's, its first seed)
acts as its evaluations do, deterministically, rebuilt from the flags it records. Each plays the episode every
evaluation starts with (reset seed 10000), rendered by common/video.py. Each panel is labelled with its episode's
normalized score; a policy whose episode ended keeps its last frame, marked "fell".
"""

import json
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import jax
import numpy as np
import tyro
from PIL import Image, ImageDraw

from benchmarks.algorithms import load_algorithm
from benchmarks.make_datasets import load_behavior_actor
from benchmarks.select_behavior import sampling_policy
from common.datasets import ENVS, REFERENCE_SCORES, normalized_score
from common.checkpoints import load_checkpoint, read_checkpoint, trained_args
from common.evaluation import EVAL_SEED, run_episodes
from common.experiment import init_states, run_labels
from common.video import choose_gl_backend


@dataclass
class Args:
    env: str = "hopper"
    qualities: tuple[str, ...] = ("expert", "medium")
    checkpoints: tuple[Path, ...] = ()
    """trained checkpoints to show instead of the behaviour policies (their environment is the one they record)"""
    labels: tuple[str, ...] = ()
    """with --checkpoints, a label for each (default: its algorithm)"""
    seconds: float = 5.0
    """length of the animation, in simulated seconds (the policies' first ones)"""
    fps: float = 125 / 8
    """frames per second of the animation: a frame every 8 simulator steps"""
    size: int = 160
    """width and height of a panel, in pixels"""
    quality: int = 50
    """WebP quality, 0-100"""
    out: Path = Path(__file__).parent / "hopper_expert_vs_medium.webp"


def panel(frame: np.ndarray, size: int, text: str) -> Image.Image:
    image = Image.fromarray(frame).resize((size, size), Image.LANCZOS)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size, 16), fill=(20, 20, 20))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return image


def checkpoint_policy(path: Path):
    """(its algorithm, its first state's deterministic policy, the environment it records, its reference scores)."""
    try:
        meta, _ = read_checkpoint(path)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    module, make_agent = load_algorithm(meta["algorithm"])
    trained = trained_args(module.Args, meta)
    if trained is None or "eval_env_spec" not in meta:
        raise SystemExit(f"error: {path} is older than checkpoints that record their flags and environment")
    env_spec = gym.envs.registration.EnvSpec.from_json(meta["eval_env_spec"])
    env = gym.make(env_spec)
    agent = make_agent(trained, env.observation_space.shape[0], env.action_space.shape[0])
    env.close()
    states, _ = load_checkpoint(path, init_states(agent.init, trained), meta["algorithm"])
    state = states if len(run_labels(trained)) == 1 else jax.tree.map(lambda x: x[0], states)
    return (meta["algorithm"], lambda obs: agent.policy(state, obs), env_spec,
            (meta["ref_min_score"], meta["ref_max_score"]))


def policies(args: Args):
    """(label, policy, environment, reference scores) of each panel."""
    if args.checkpoints:
        if args.labels and len(args.labels) != len(args.checkpoints):
            raise SystemExit(f"error: --labels needs one label per checkpoint ({len(args.checkpoints)})")
        for i, path in enumerate(args.checkpoints):
            algorithm, policy, env_spec, references = checkpoint_policy(path)
            yield args.labels[i] if args.labels else algorithm, policy, env_spec, references
        return
    references = json.loads(REFERENCE_SCORES.read_text())[ENVS[args.env]]
    for quality in args.qualities:
        yield (quality, sampling_policy(*load_behavior_actor(args.env, quality)), ENVS[args.env],
               (references["random"], references["expert"]))


def main(args: Args):
    choose_gl_backend()
    length = int(args.seconds * args.fps) + 1  # frames of the animation
    columns = []
    for name, policy, env, references in policies(args):
        videos = []
        (episode_return,) = run_episodes(policy, env, 1, EVAL_SEED, videos=videos)
        score = normalized_score(episode_return, *references)
        frames = videos[0].frames[::round(videos[0].fps / args.fps)]  # recorded every 4 steps; thinned to args.fps
        label = f"{name}, normalized {score:.0f}"
        panels = [panel(frame, args.size, label) for frame in frames[:length]]
        panels += [panel(frames[-1], args.size, label + ", fell")] * (length - len(panels))  # its episode ended
        columns.append(panels)
        print(f"{name}: return {episode_return:.0f}, normalized {score:.1f}, {len(frames)} frames")
    animation = []
    for row in zip(*columns):
        canvas = Image.new("RGB", (args.size * len(row), args.size))
        for i, image in enumerate(row):
            canvas.paste(image, (i * args.size, 0))
        animation.append(canvas)
    animation[0].save(args.out, save_all=True, append_images=animation[1:], duration=round(1000 / args.fps), loop=0,
                      quality=args.quality, method=6)
    print(f"{args.out}: {len(animation)} frames, {args.out.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main(tyro.cli(Args))
