"""--capture-video: the recorded episodes decode, show the episode (its length, its motion) and reach TensorBoard."""

import dataclasses
import importlib
import io
import os

import gymnasium as gym
import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageSequence
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import iql
from benchmarks.algorithms import ALGORITHMS
from common.checkpoints import read_checkpoint
from common.evaluation import EVAL_SEED, make_env, make_evaluator, run_episodes
from common.video import GIF_EVERY, GIF_SIZE, VIDEO_SIZE, choose_gl_backend, video_due
from tests.cli import CLI_SMALL, run_script
from tests.helpers import SMALL_RUN


@pytest.fixture
def gl_backend(monkeypatch):
    """MuJoCo's GL backend chosen for this process, and MUJOCO_GL as it was after the test."""
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", ""))
    monkeypatch.delenv("MUJOCO_GL")
    return choose_gl_backend()


def decode(path) -> np.ndarray:
    return iio.imread(path, plugin="FFMPEG", index=None)


def episode_length(policy, env_id, batch: int) -> int:
    """Steps of the episode reset with EVAL_SEED under `policy`, counted without rendering; the policy acts on
    batches of `batch` rows, as it does in an evaluation of that many episodes, so its floats are the same."""
    env = make_env(env_id)
    obs, _ = env.reset(seed=EVAL_SEED)
    for t in range(1, 10_000):
        actions = np.asarray(policy(np.repeat(obs[None].astype(np.float32), batch, axis=0)))
        obs, _, terminated, truncated, _ = env.step(actions[0])
        if terminated or truncated:
            return t


def assert_shows_an_episode(frames: np.ndarray, num_frames: int):
    assert frames.shape == (num_frames, VIDEO_SIZE, VIDEO_SIZE, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # not one blank colour
    changes = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert (changes > 0.5).mean() > 0.5  # the picture moves in most frames: not frozen


def test_a_recorded_episode_has_one_frame_per_4_steps_and_moves(gl_backend, tmp_path):
    push = lambda obs: np.ones((len(obs), 3), np.float32)  # noqa: E731  full torque: falls in a few dozen steps
    videos = []
    returns = run_episodes(push, "Hopper-v5", num_episodes=2, seed=EVAL_SEED, videos=videos)
    steps = episode_length(push, "Hopper-v5", batch=2)
    assert len(videos) == 1 and videos[0].fps == 125 / 4  # hopper: 125 steps a second, every 4th rendered
    assert_shows_an_episode(videos[0].frames, 1 + steps // 4)
    assert np.array_equal(returns, run_episodes(push, "Hopper-v5", num_episodes=2, seed=EVAL_SEED))  # same episodes


def test_several_seeds_record_one_episode_each(gl_backend):
    policy = lambda scale, obs: scale * jnp.ones((len(obs), 3))  # noqa: E731  each seed its own policy
    evaluate = make_evaluator(policy, "Hopper-v5", (0.0, 1.0), num_seeds=2, num_episodes=2)
    returns, _, videos = evaluate(np.array([1.0, -1.0], np.float32), record=True)
    assert returns.shape == (2, 2) and len(videos) == 2
    assert not np.array_equal(videos[0].frames[-1], videos[1].frames[-1])
    assert evaluate(np.array([1.0, -1.0], np.float32))[2] is None  # nothing rendered unless asked


def test_a_tiny_run_records_every_evaluation_as_mp4_and_on_tensorboard(tiny_hopper, tmp_path, monkeypatch):
    out = run_script("iql.py", "--env-id", tiny_hopper, *CLI_SMALL, "--total-steps", "200", "--eval-every", "100",
                     "--capture-video", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "os.fork" not in out.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in (run_dir / "videos").iterdir()) == ["update_100.mp4", "update_200.mp4"]

    # the last video against the episode its checkpoint's policy acts, counted here without rendering
    iql = importlib.import_module("iql")
    monkeypatch.chdir(tmp_path)
    args = iql.Args(eval_only=True, checkpoint=run_dir / "final.msgpack", hidden_dims=(32, 32), eval_episodes=2)
    state = iql.main(args)
    env_spec = gym.envs.registration.EnvSpec.from_json(read_checkpoint(args.checkpoint)[0]["eval_env_spec"])
    agent = iql.make_iql(args, 11, 3)
    steps = episode_length(lambda obs: agent.policy(state, obs), env_spec, batch=2)
    frames = decode(run_dir / "videos" / "update_200.mp4")
    assert_shows_an_episode(frames, 1 + steps // 4)
    assert iio.immeta(run_dir / "videos" / "update_200.mp4", plugin="FFMPEG")["fps"] == pytest.approx(31.25)

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("videos/evaluation")
    assert [image.step for image in images] == [100, 200]
    gif = iio.imread(io.BytesIO(images[-1].encoded_image_string), extension=".gif", index=None)[..., :3]
    halved = np.stack([np.asarray(Image.fromarray(f).resize((GIF_SIZE, GIF_SIZE), Image.BILINEAR))
                       for f in frames[::GIF_EVERY]])
    assert gif.shape == halved.shape  # every other frame, at half size
    assert np.abs(gif.astype(int) - halved).mean() < 10  # the same pictures, palette and codec apart


@pytest.mark.parametrize("script", ALGORITHMS)
def test_every_script_records_with_video_every(script, tiny_hopper, tmp_path, monkeypatch, gl_backend):
    module = importlib.import_module(script)
    monkeypatch.chdir(tmp_path)
    module.main(module.Args(env_id=tiny_hopper, **(SMALL_RUN | {"total_steps": 16, "eval_every": 4}),
                            capture_video=True, video_every=8))
    (run_dir,) = (tmp_path / "runs").iterdir()
    recorded = sorted(int(p.stem.removeprefix("update_")) for p in (run_dir / "videos").iterdir())
    assert recorded == [4, 8, 16]  # the first, each multiple of 8, the last; not 12
    (checkpoint,) = run_dir.glob("final.msgpack")
    module.main(module.Args(eval_only=True, checkpoint=checkpoint, **SMALL_RUN, capture_video=True))
    videos = run_dir / "videos"
    assert len(decode(videos / "eval_only_update_16.mp4")) == len(decode(videos / "update_16.mp4"))


@pytest.mark.parametrize("env, message", [
    ({"PYOPENGL_PLATFORM": "none"}, "neither EGL nor OSMesa loads here: install EGL (Debian/Ubuntu: apt-get install "
                                    "libegl1 libgl1-mesa-dri) or OSMesa (apt-get install libosmesa6), or run without "
                                    "--capture-video"),
    ({"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "egl"}, "cannot render with MUJOCO_GL=osmesa: install its libraries "
                                                          "(Debian/Ubuntu: apt-get install libosmesa6)"),
])
def test_no_gl_backend_is_one_sentence_before_anything_is_written(env, message, minari_store, tmp_path, monkeypatch):
    for name, value in env.items():  # a backend that cannot load: PyOpenGL is told to use another platform
        monkeypatch.setenv(name, value)
    out = run_script("iql.py", "--env-id", "hopper-medium-replay", "--capture-video", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: --capture-video ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_video_every_records_the_first_evaluation_after_each_multiple_and_the_last():
    args = iql.Args(capture_video=True, eval_every=3000, total_steps=31_000, video_every=10_000)
    evaluations = [*range(3000, 31_000, 3000), 31_000]
    assert [s for s in evaluations if video_due(args, s)] == [3000, 12_000, 21_000, 30_000, 31_000]
    assert all(video_due(dataclasses.replace(args, video_every=0), s) for s in evaluations)
    assert not any(video_due(dataclasses.replace(args, capture_video=False), s) for s in evaluations)


def test_a_negative_video_every_is_one_clear_line():
    with pytest.raises(SystemExit, match=r"^error: --video-every must be >= 0 \(0: every evaluation\), got -1$"):
        iql.check_args(iql.Args(capture_video=True, video_every=-1))


def test_the_animation_shows_trained_checkpoints_side_by_side(tiny_hopper, tmp_path, monkeypatch, gl_backend, capsys):
    from benchmarks import behavior_video

    monkeypatch.chdir(tmp_path)
    for seed in (0, 1):
        iql.main(iql.Args(env_id=tiny_hopper, seed=seed, **SMALL_RUN))
    checkpoints = tuple(sorted((tmp_path / "runs").glob("*/final.msgpack")))
    out = tmp_path / "two.webp"
    behavior_video.main(behavior_video.Args(checkpoints=checkpoints, labels=("A", "B"), seconds=1.0, out=out))
    printed = capsys.readouterr().out
    assert "A: return" in printed and "B: return" in printed
    with Image.open(out) as animation:  # WebP merges repeated frames (a fallen policy's), so count their time
        assert animation.size == (320, 160)  # two panels side by side
        durations = []
        for frame in ImageSequence.Iterator(animation):
            frame.load()  # Pillow reads a WebP frame's duration as it decodes it
            durations.append(frame.info["duration"])
    frame_ms = round(1000 / behavior_video.Args.fps)
    assert sum(durations) == (int(1.0 * behavior_video.Args.fps) + 1) * frame_ms  # a simulated second, padded
    with pytest.raises(SystemExit, match="^error: --labels needs one label per checkpoint"):
        behavior_video.main(behavior_video.Args(checkpoints=checkpoints, labels=("A",), out=out))
