"""The README's animation: hopper's expert and medium behaviour policies side by side, from their committed checkpoints.

    python -m benchmarks.behavior_video    # writes benchmarks/hopper_expert_vs_medium.webp

Both act as they did when they collected the stand-in datasets (actions sampled from the tanh-Gaussian, one fixed
key), in the episode every evaluation starts with (reset seed 10000), rendered by common/video.py as
--capture-video renders. Each panel is labelled with its episode's normalized score; a policy whose episode ended
keeps its last frame, marked "fell".
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from PIL import Image, ImageDraw

from benchmarks.make_datasets import load_behavior_actor
from benchmarks.select_behavior import sampling_policy
from common.datasets import ENVS, REFERENCE_SCORES, normalized_score
from common.evaluation import EVAL_SEED, run_episodes
from common.video import choose_gl_backend


@dataclass
class Args:
    env: str = "hopper"
    qualities: tuple[str, ...] = ("expert", "medium")
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


def main(args: Args):
    choose_gl_backend()
    env_id = ENVS[args.env]
    references = json.loads(REFERENCE_SCORES.read_text())[env_id]
    length = int(args.seconds * args.fps) + 1  # frames of the animation
    columns = []
    for quality in args.qualities:
        videos = []
        policy = sampling_policy(*load_behavior_actor(args.env, quality))
        (episode_return,) = run_episodes(policy, env_id, 1, EVAL_SEED, videos=videos)
        score = normalized_score(episode_return, references["random"], references["expert"])
        frames = videos[0].frames[::round(videos[0].fps / args.fps)]  # recorded every 4 steps; thinned to args.fps
        label = f"{quality}, normalized {score:.0f}"
        panels = [panel(frame, args.size, label) for frame in frames[:length]]
        panels += [panel(frames[-1], args.size, label + ", fell")] * (length - len(panels))  # its episode ended
        columns.append(panels)
        print(f"{quality}: return {episode_return:.0f}, normalized {score:.1f}, {len(frames)} frames")
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
