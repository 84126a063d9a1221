"""The loop every script shares — train a chunk, log, evaluate, checkpoint — and the checks on its flags.

Nothing here touches the maths: an algorithm hands over `agent.train_chunk(state, data)` (its updates,
compiled) and `agent.policy(state, obs)` (its deterministic action, in [-1, 1]), and this file runs them.
`evaluate_checkpoint` is --eval-only: a checkpoint records where and how to act, so it needs no dataset.
"""

import dataclasses
import time
from pathlib import Path

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from common.datasets import DatasetError, load_dataset, normalized_score, resolve_name
from common.evaluation import run_episodes
from common.logger import (GracefulInterrupt, Run, check_algorithm, first_nonfinite, load_checkpoint, read_checkpoint,
                           save_checkpoint, settings)

DEFAULT_ENV_ID = "hopper-medium"  # the dataset of a run started without --env-id
EVAL_SEED = 10_000  # evaluation episode i starts from reset(seed=10000 + i), in every script and every run
# Flags that may differ when a run is resumed: none of them changes the updates.
RESUMABLE_CHANGES = {"checkpoint", "eval_only", "exp_name", "eval_every", "eval_episodes", "save_every"}


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


def resume(args, state, algorithm: str):
    """Load args.checkpoint to go on training it: (state, its update, its training seconds so far).

    The state holds everything an update reads (parameters, optimiser moments, the random key), so a resumed run
    takes the very updates the uninterrupted one would have taken, provided the flags are the same.
    """
    try:
        state, meta = load_checkpoint(args.checkpoint, state, algorithm)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if "args" not in meta:
        raise SystemExit(f"error: {args.checkpoint} does not record its flags, so it cannot be resumed safely; "
                         f"--eval-only evaluates it")
    now = settings(args)
    changed = [k for k in now if k not in RESUMABLE_CHANGES and meta["args"].get(k) != now[k]]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {meta['args'].get(k)} (now {now[k]})" for k in changed)
        raise SystemExit(f"error: {args.checkpoint} was trained with {was}; resuming needs the same flags "
                         f"(only {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE_CHANGES))} may change)")
    print(f"resuming {args.checkpoint} at update {meta['step']}")
    return state, meta["step"], meta.get("wall_s", 0.0)


def eval_line(step, episode_returns, score, seed=None) -> str:
    score_text = f"normalized {score:6.1f}" if score is not None else "(no reference scores)"
    prefix = f"seed {seed:>3d} | " if seed is not None else ""
    return f"{prefix}step {step:>8d} | return {episode_returns.mean():8.1f} ± {episode_returns.std():6.1f} | {score_text}"


def eval_lines(seeds, step, returns, scores) -> list[str]:
    if len(seeds) == 1:
        return [eval_line(step, returns[0], scores[0])]
    lines = [eval_line(step, r, score, seed) for seed, r, score in zip(seeds, returns, scores)]
    if scores[0] is not None:
        lines.append(f"{len(seeds)} seeds   | step {step:>8d} | normalized {np.mean(scores):6.1f} ± "
                     f"{np.std(scores):.1f}")
    return lines


def make_evaluator(args, agent, env_spec, ref_scores: tuple, rescale_actions: bool = True):
    """evaluate(state) -> (returns of shape (seeds, episodes), each seed's normalized score): all episodes step
    together, in `env_spec`'s environment with the policy's [-1, 1] mapped onto its action bounds."""
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    policy = jax.jit(jax.vmap(agent.policy)) if len(seeds) > 1 else agent.policy

    def evaluate(state):
        def act(obs):  # (seeds x episodes, obs_dim) -> one forward pass of every seed's policy
            if len(seeds) == 1:
                return policy(state, obs)
            return policy(state, obs.reshape(len(seeds), args.eval_episodes, -1)).reshape(len(obs), -1)
        returns = run_episodes(act, env_spec, args.eval_episodes, EVAL_SEED, repeat=len(seeds),
                               rescale_actions=rescale_actions)
        returns = returns.reshape(len(seeds), args.eval_episodes)
        return returns, [normalized_score(r.mean(), *ref_scores) for r in returns]
    return evaluate


def evaluate_checkpoint(args, algorithm: str, make_agent):
    """--eval-only: evaluate args.checkpoint where it was trained, without its dataset.

    The checkpoint records the evaluation environment, the action bounds and the reference scores; its state holds
    the rest of what the policy reads (TD3+BC's observation statistics). One written before checkpoints recorded
    these is evaluated as it was then: its dataset is loaded for them, and its actions are not rescaled.
    `make_agent(args, obs_dim, action_dim)` builds the networks, as each script's make_<algo> does.
    """
    try:
        meta, _ = read_checkpoint(args.checkpoint)
        check_algorithm(args.checkpoint, meta, algorithm)
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
        data = load_training_data(dataclasses.replace(args, env_id=args.env_id or meta.get("env_id")))
        env_spec, ref_scores, rescale = data.env_spec, (data.ref_min_score, data.ref_max_score), False
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
    agent = make_agent(args, obs_dim, space.shape[0])
    try:
        state, meta = load_checkpoint(args.checkpoint, init_states(agent.init, args), algorithm)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(f"evaluating {args.checkpoint} (update {meta['step']}, trained on {meta.get('dataset_id')}) in {env_spec.id}")
    returns, scores = make_evaluator(args, agent, env_spec, ref_scores, rescale)(state)
    print("\n".join(eval_lines(list(range(args.seed, args.seed + args.num_seeds)), meta["step"], returns, scores)))
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


def train(args, algorithm: str, agent, state, data, device_data, summarize=None):
    """Train `state` for args.total_steps updates: from scratch, or from args.checkpoint where it stopped.

    `summarize(metrics) -> dict` turns a chunk's per-update metrics into logged scalars (default: means).
    With --num-seeds N > 1, `state` holds N stacked states (`init_states`) and every step is vmapped over them.
    """
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    stacked = len(seeds) > 1
    train_chunk = jax.jit(jax.vmap(agent.train_chunk, in_axes=(0, None))) if stacked else agent.train_chunk
    evaluate = make_evaluator(args, agent, data.env_spec, (data.ref_min_score, data.ref_max_score))
    summarize = summarize or (lambda metrics: {k: v.mean() for k, v in metrics.items()})
    step, wall_before = 0, 0.0
    if args.checkpoint is not None:  # go on training a run that was stopped: in its own directory
        state, step, wall_before = resume(args, state, algorithm)
    run = Run(args, resumed_at=step if args.checkpoint is not None else None)
    run.text("data", f"{data.dataset_id} from {data.source}. " + " ".join(data.notes))
    run.json("dataset.json", {"dataset_id": data.dataset_id, "source": data.source, "notes": data.notes,
                              "episodes": len(data.episode_returns), "transitions": len(data.obs),
                              "mean_return": float(data.episode_returns.mean()),
                              "mean_normalized_return": data.normalized_score(float(data.episode_returns.mean()))})
    interrupt = GracefulInterrupt()
    meta = {"algorithm": algorithm, "env_id": args.env_id, "dataset_id": data.dataset_id, "seeds": seeds,
            "args": settings(args),
            # what --eval-only needs, so that it needs no dataset: where to act, on which bounds, against which scores
            "eval_env_spec": data.env_spec.to_json(), "action_low": data.action_low.tolist(),
            "action_high": data.action_high.tolist(), "ref_min_score": data.ref_min_score,
            "ref_max_score": data.ref_max_score}
    bar = tqdm(total=args.total_steps, initial=step, desc=algorithm, unit="update", smoothing=0.1)
    train_start = time.perf_counter() - wall_before

    def checkpoint(name: str, at_step: int):
        save_checkpoint(run.dir / name, state, {**meta, "step": at_step,
                                                "wall_s": round(time.perf_counter() - train_start, 1)})
    while step < args.total_steps and not interrupt.requested:
        start = time.perf_counter()
        state, metrics = train_chunk(state, device_data)
        metrics = jax.device_get(metrics)  # host sync point: once per chunk
        elapsed = time.perf_counter() - start
        per_seed = [{k: v[i] for k, v in metrics.items()} for i in range(len(seeds))] if stacked else [metrics]
        for seed, seed_metrics in zip(seeds, per_seed):
            bad = first_nonfinite(seed_metrics)
            if bad:
                checkpoint("nonfinite.msgpack", step + args.log_every)
                index, names = bad
                values = ", ".join(f"{name} became {seed_metrics[name][index]}" for name in names)
                raise SystemExit(f"error: {f'seed {seed}: ' if stacked else ''}{values} at update {step + index + 1}; "
                                 f"stopped (state saved to {run.dir / 'nonfinite.msgpack'})")
        step += args.log_every
        bar.update(args.log_every)
        per_seed = [summarize(seed_metrics) for seed_metrics in per_seed]
        run.scalars({k: np.mean([m[k] for m in per_seed]) for k in per_seed[0]}  # the mean over seeds
                    | {"charts/updates_per_sec": args.log_every / elapsed}, step)
        if step % args.eval_every == 0 or step == args.total_steps:
            returns, scores = evaluate(state)
            for seed, seed_returns, score, scalars in zip(seeds, returns, scores, per_seed):
                result = ({"charts/episodic_return": seed_returns.mean()}
                          | ({"charts/normalized_score": score} if score is not None else {}))
                run.scalars({f"seed_{seed}/{k.split('/')[-1]}": v for k, v in result.items()} if stacked else result,
                            step)
                run.evaluation({"step": step, "seed": seed, "wall_s": time.perf_counter() - train_start,
                                "return_std": seed_returns.std()} | result | scalars)
            if stacked:
                run.scalars({"charts/episodic_return": returns.mean()}
                            | ({"charts/normalized_score": np.mean(scores),
                                "charts/normalized_score_std": np.std(scores)} if scores[0] is not None else {}), step)
            for line in eval_lines(seeds, step, returns, scores):
                bar.write(line)
        if args.save_every and step % args.save_every == 0:
            checkpoint(f"checkpoint_{step}.msgpack", step)
    bar.close()
    checkpoint("final.msgpack", step)
    print(f"{'interrupted' if interrupt.requested else 'done'} at update {step}; checkpoint {run.dir / 'final.msgpack'}")
    run.close()
    return state
