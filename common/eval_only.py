"""--eval-only: evaluate a checkpoint where it was trained; the checkpoint records where and how to act."""

from pathlib import Path

import gymnasium as gym
import numpy as np

from common.checkpoints import RESUMABLE_CHANGES, as_typed, load_checkpoint, read_checkpoint, settings, trained_args
from common.datasets import DatasetError, resolve_name
from common.evaluation import make_evaluator
from common.experiment import init_states, load_training_data, run_labels
from common.logger import eval_lines
from common.video import write_videos


def evaluate_checkpoint(args, algorithm: str, make_agent):
    """--eval-only: evaluate args.checkpoint where it was trained, without its dataset.

    The checkpoint records the evaluation environment, the action bounds and the reference scores, and the flags
    that built its networks (their widths, its seeds, its swept values), so none of them needs passing again; its
    state holds the rest of what the policy reads (TD3+BC's observation statistics). One written before checkpoints recorded
    these is evaluated as it was then: its dataset is loaded for them, and its actions are not rescaled.
    `make_agent(args, obs_dim, action_dim)` builds the networks, as each script's make_<algo> does.
    """
    try:
        meta, _ = read_checkpoint(args.checkpoint, algorithm)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if args.env_id is not None and not names_its_data(args.env_id, meta):
        raise SystemExit(f"error: {args.checkpoint} was trained on --env-id {meta.get('env_id')} (dataset "
                         f"{meta.get('dataset_id')}), not on --env-id {args.env_id}; leave --env-id out to evaluate "
                         f"it where it was trained")
    if "eval_env_spec" in meta:
        env_spec = gym.envs.registration.EnvSpec.from_json(meta["eval_env_spec"])
        ref_scores, rescale = (meta["ref_min_score"], meta["ref_max_score"]), True
    else:
        print(f"note: {args.checkpoint} records no environment (it was written before checkpoints did): evaluating "
              f"it in its dataset's, with its actions passed on unscaled as they were then")
        data = load_training_data(args.env_id or meta.get("env_id"))
        env_spec, ref_scores, rescale = data.env_spec, data.ref_scores, False
    try:
        env = gym.make(env_spec)
    except Exception as e:
        raise SystemExit(f"error: cannot make {env_spec.id}, the environment {args.checkpoint} records "
                         f"({type(e).__name__}: {e})")
    space, obs_dim = env.action_space, env.observation_space.shape[0]
    env.close()
    if rescale and not (np.allclose(space.low, meta["action_low"]) and np.allclose(space.high, meta["action_high"])):
        raise SystemExit(f"error: {args.checkpoint} was trained for actions in [{meta['action_low']}, "
                         f"{meta['action_high']}], but {env_spec.id} has the action space {space}")
    trained = trained_args(type(args), meta) or args
    now, was, default = settings(args), settings(trained), settings(type(args)())
    ignored = [f"--{k.replace('_', '-')} {as_typed(was[k])} (not {as_typed(now[k])})" for k in now
               if k not in RESUMABLE_CHANGES | {"env_id"} and now[k] != was[k] and now[k] != default[k]]
    if ignored:  # flags given on this command line that the checkpoint was not trained with
        print(f"note: {args.checkpoint} is evaluated with the flags it was trained with: {', '.join(ignored)}")
    agent = make_agent(trained, obs_dim, space.shape[0])
    try:
        state, meta = load_checkpoint(args.checkpoint, init_states(agent.init, trained), algorithm)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(f"evaluating {args.checkpoint} (update {meta['step']}, trained on {meta.get('dataset_id')}) in {env_spec.id}")
    labels = run_labels(trained)  # its seeds and swept values
    evaluate = make_evaluator(agent.policy, env_spec, ref_scores, len(labels), args.eval_episodes, rescale,
                              workers=args.eval_workers)
    returns, scores, videos = evaluate(state, record=args.capture_video)
    evaluate.close()
    print("\n".join(eval_lines(labels, meta["step"], returns, scores)))
    if videos:  # beside the checkpoint, named apart from the videos its training run wrote
        paths = write_videos(Path(args.checkpoint).parent / "videos", f"eval_only_update_{meta['step']}", videos, labels)
        print("videos: " + " ".join(map(str, paths)))
    return state


def names_its_data(env_id: str, meta: dict) -> bool:
    """Does --env-id name the data a checkpoint was trained on: the same name, or one resolving to its dataset?"""
    if env_id == meta.get("env_id"):
        return True
    try:
        resolved = resolve_name(env_id)
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
    return meta.get("dataset_id") in (resolved.official_id, resolved.standin_id)
