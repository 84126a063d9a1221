"""--capture-video: render an evaluation episode offscreen; write it as an mp4 file and as a TensorBoard GIF.

Without a display MuJoCo renders through EGL or OSMesa (on a machine without a GPU both are Mesa's llvmpipe, in
software). Which one works depends on the system's libraries, and a process can no longer switch once it has
imported OpenGL, so `choose_gl_backend` tries each in a subprocess before the run starts.
"""

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import imageio.v3 as iio
import mujoco
import numpy as np
from gymnasium.envs.mujoco import MujocoEnv
from PIL import Image
from tensorboardX.proto.summary_pb2 import Summary

GL_BACKENDS = {"egl": "libegl1 libgl1-mesa-dri", "osmesa": "libosmesa6"}  # MUJOCO_GL -> its Debian/Ubuntu packages
VIDEO_SIZE = 256  # width and height of a frame, in pixels
VIDEO_FPS = 30  # about: a frame every round(render_fps / 30) steps (hopper: every 4th of 125 per second)
GIF_SIZE, GIF_EVERY = 128, 2  # TensorBoard's copy: half the size, every other frame (it lives in the event file)
_PROBE = ("import mujoco; r = mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8); r.render(); "
          "r.close()")


class Video(NamedTuple):
    frames: np.ndarray  # (frames, height, width, 3) uint8
    fps: float


def choose_gl_backend() -> str:
    """Set MUJOCO_GL to a backend that renders here: the user's MUJOCO_GL if set, else EGL, else OSMesa, else glfw.

    Where none renders, stop with one sentence that says what to install and how to run without video."""
    requested = os.environ.get("MUJOCO_GL")
    reason = ""
    for backend in [requested] if requested else [*GL_BACKENDS, "glfw"]:  # glfw: a display's (macOS, Windows)
        try:
            probe = subprocess.run([sys.executable, "-c", _PROBE], env={**os.environ, "MUJOCO_GL": backend},
                                   capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            reason = reason or f"MUJOCO_GL={backend}: no frame within 120 s"  # the first failure says most
            continue
        if probe.returncode == 0:
            os.environ["MUJOCO_GL"] = backend
            return backend
        said = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        reason = reason or f"MUJOCO_GL={backend}: {said}"
    said = f" ({reason if len(reason) <= 200 else reason[:200] + '...'})"
    if requested in GL_BACKENDS:
        raise SystemExit(f"error: --capture-video cannot render with MUJOCO_GL={requested}: install its libraries "
                         f"(Debian/Ubuntu: apt-get install {GL_BACKENDS[requested]}), or unset "
                         f"MUJOCO_GL to let EGL or OSMesa be chosen, or run without --capture-video{said}")
    if requested:
        raise SystemExit(f"error: --capture-video cannot render with MUJOCO_GL={requested} here: set MUJOCO_GL to egl "
                         f"or osmesa (or unset it) to render without a display, or run without --capture-video{said}")
    raise SystemExit(f"error: --capture-video needs MuJoCo to render without a display, and neither EGL nor OSMesa "
                     f"loads here: install EGL (Debian/Ubuntu: apt-get install {GL_BACKENDS['egl']}) or OSMesa "
                     f"(apt-get install {GL_BACKENDS['osmesa']}), or run without --capture-video{said}")


class EpisodeFrames(gym.Wrapper):
    """Renders the episodes it steps: a frame at reset and after every `every`-th step (about VIDEO_FPS frames per
    second of simulated time), so an episode of T steps gives 1 + T // every frames."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if isinstance(env.unwrapped, MujocoEnv):
            model = env.unwrapped.model  # looks only: shadows and reflections cost most of a software render
            model.light_castshadow[:] = 0
            model.mat_reflectance[:] = 0
            track = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
            if track >= 0:  # the camera that follows the body (hopper, walker2d, halfcheetah); the default stays put
                env.unwrapped.mujoco_renderer.camera_id = track
        render_fps = env.metadata.get("render_fps", VIDEO_FPS)
        self.every = max(1, round(render_fps / VIDEO_FPS))
        self.fps = render_fps / self.every
        self.frames, self.t = [], 0

    def reset(self, **kwargs):
        result = self.env.reset(**kwargs)
        self.frames, self.t = [self.env.render()], 0
        return result

    def step(self, action):
        result = self.env.step(action)
        self.t += 1
        if self.t % self.every == 0:
            self.frames.append(self.env.render())
        return result

    def video(self) -> Video:
        return Video(np.stack(self.frames), self.fps)


def make_recording_env(env_id) -> EpisodeFrames:
    try:  # MuJoCo's environments take the frame size; others render at their own
        env = gym.make(env_id, render_mode="rgb_array", width=VIDEO_SIZE, height=VIDEO_SIZE)
    except TypeError:
        env = gym.make(env_id, render_mode="rgb_array")
    return EpisodeFrames(env)


def video_due(args, step: int) -> bool:
    """Does the evaluation after `step` updates record a video? With --capture-video: the first evaluation, the first
    at or after each multiple of --video-every (0: every evaluation), and the last. Thinned by default, since a
    software-rendered episode costs about twice an evaluation (benchmarks/video_cost.md)."""
    every = args.video_every
    crossed = not every or step // every > (step - args.eval_every) // every  # a multiple in (last eval, step]
    return args.capture_video and (crossed or step == args.eval_every or step == args.total_steps)


def gif_bytes(video: Video) -> bytes:
    """TensorBoard's animated GIF of the video: every GIF_EVERY-th frame at GIF_SIZE pixels, on one palette taken from
    a few frames, undithered. A 1000-step hopper episode is then a few hundred KB of the event file (the full
    video, with a dithered palette per frame, would be over 3 MB; the mp4 file keeps every frame at full size)."""
    frames = [Image.fromarray(f).resize((GIF_SIZE, GIF_SIZE), Image.BILINEAR) for f in video.frames[::GIF_EVERY]]
    sample = np.concatenate([np.asarray(frames[i]) for i in np.linspace(0, len(frames) - 1, min(8, len(frames)),
                                                                        dtype=int)])
    palette = Image.fromarray(sample).quantize(256, dither=Image.Dither.NONE)
    frames = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:],
                   duration=round(1000 * GIF_EVERY / video.fps), loop=0)
    return out.getvalue()


def state_name(label: dict) -> str:
    """Which trained state a video shows (a `run_labels` entry): 'seed3', or in a sweep 'alpha2.5_seed3'."""
    return "_".join(f"seed{v}" if k == "seed" else f"{k}{v:g}" for k, v in label.items())


def write_videos(directory: Path, name: str, videos: list[Video], labels: list[dict]) -> list[Path]:
    """Each trained state's video as directory/{name}.mp4 (with several, {name}_seed3.mp4 or {name}_alpha2.5_seed3.mp4),
    by imageio's ffmpeg."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / (f"{name}.mp4" if len(labels) == 1 else f"{name}_{state_name(label)}.mp4") for label in labels]
    with warnings.catch_warnings():  # JAX warns of any fork; imageio's forks only to exec ffmpeg, which is safe
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        for path, video in zip(paths, videos):
            iio.imwrite(path, video.frames, plugin="FFMPEG", fps=video.fps)
    return paths


def log_videos(run, step: int, videos: list[Video] | None):
    """A recorded evaluation, as runs/<run>/videos/update_<step>.mp4 and as an animated GIF on TensorBoard's images
    tab (tag videos/evaluation; with several trained states, videos/seed3 or videos/alpha2.5_seed3)."""
    if not videos:
        return
    write_videos(run.dir / "videos", f"update_{step}", videos, run.labels)
    for label, video in zip(run.labels, videos):
        tag = "videos/evaluation" if len(run.labels) == 1 else f"videos/{state_name(label)}"
        _, height, width, channels = video.frames.shape
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=gif_bytes(video))
        run.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
