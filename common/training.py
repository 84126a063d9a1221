"""The loop every script shares — train a chunk, log, evaluate, checkpoint — and the checks on its flags.

Nothing here touches the maths: an algorithm hands over `agent.train_chunk(state, data)` (its updates,
compiled) and `agent.policy(state, obs)` (its deterministic action), and this file runs them.
"""

import time
from pathlib import Path

import jax
from tqdm import tqdm

from common.evaluation import run_episodes
from common.logger import GracefulInterrupt, Run, first_nonfinite, load_checkpoint, save_checkpoint

EVAL_SEED = 10_000  # evaluation episode i starts from reset(seed=10000 + i), in every script and every run


def check_experiment_args(args, *algorithm_problems: tuple[bool, str]):
    """Stop with one clear line on the first bad flag: the shared experiment flags, then the algorithm's."""
    steps_ok = args.log_every > 0 and args.total_steps > 0
    problems = [
        (args.batch_size <= 0, f"--batch-size must be positive, got {args.batch_size}"),
        (not steps_ok, "--total-steps and --log-every must be positive"),
        (steps_ok and (args.total_steps % args.log_every or args.eval_every % args.log_every
                       or args.save_every % args.log_every),
         f"--total-steps, --eval-every and --save-every must be multiples of --log-every ({args.log_every})"),
        (args.eval_every <= 0 or args.eval_episodes <= 0, "--eval-every and --eval-episodes must be positive"),
        (args.eval_only and args.checkpoint is None, "--eval-only needs --checkpoint PATH"),
        (args.checkpoint is not None and not Path(args.checkpoint).is_file(), f"no checkpoint at {args.checkpoint}"),
        *algorithm_problems,
    ]
    for failed, message in problems:
        if failed:
            raise SystemExit(f"error: {message}")


def eval_line(step, episode_returns, score) -> str:
    score_text = f"normalized {score:6.1f}" if score is not None else "(no reference scores)"
    return f"step {step:>8d} | return {episode_returns.mean():8.1f} ± {episode_returns.std():6.1f} | {score_text}"


def train_or_evaluate(args, algorithm: str, agent, state, data, device_data, summarize=None):
    """Train `state` for args.total_steps updates (or, with --eval-only, evaluate args.checkpoint).

    `summarize(metrics) -> dict` turns a chunk's per-update metrics into logged scalars (default: means).
    """
    def evaluate(state):
        episode_returns = run_episodes(lambda obs: agent.policy(state, obs), data.env_spec, args.eval_episodes,
                                       EVAL_SEED)
        return episode_returns, data.normalized_score(episode_returns.mean())

    if args.eval_only:
        try:
            state, meta = load_checkpoint(args.checkpoint, state, algorithm)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        print(eval_line(meta["step"], *evaluate(state)))
        return state

    summarize = summarize or (lambda metrics: {k: v.mean() for k, v in metrics.items()})
    run = Run(args)
    run.text("data", f"{data.dataset_id} from {data.source}. " + " ".join(data.notes))
    run.json("dataset.json", {"dataset_id": data.dataset_id, "source": data.source, "notes": data.notes,
                              "episodes": len(data.episode_returns), "transitions": len(data.obs),
                              "mean_return": float(data.episode_returns.mean()),
                              "mean_normalized_return": data.normalized_score(float(data.episode_returns.mean()))})
    interrupt = GracefulInterrupt()
    meta = {"algorithm": algorithm, "env_id": args.env_id, "dataset_id": data.dataset_id}
    bar = tqdm(total=args.total_steps, desc=algorithm, unit="update", smoothing=0.1)
    step, train_start = 0, time.perf_counter()
    while step < args.total_steps and not interrupt.requested:
        start = time.perf_counter()
        state, metrics = agent.train_chunk(state, device_data)
        metrics = jax.device_get(metrics)  # host sync point: once per chunk
        elapsed = time.perf_counter() - start
        bad = first_nonfinite(metrics)
        if bad:
            save_checkpoint(run.dir / "nonfinite.msgpack", state, {**meta, "step": step + args.log_every})
            index, names = bad
            values = ", ".join(f"{name} became {metrics[name][index]}" for name in names)
            raise SystemExit(f"error: {values} at update {step + index + 1}; "
                             f"stopped (state saved to {run.dir / 'nonfinite.msgpack'})")
        step += args.log_every
        bar.update(args.log_every)
        scalars = summarize(metrics) | {"charts/updates_per_sec": args.log_every / elapsed}
        run.scalars(scalars, step)
        if step % args.eval_every == 0 or step == args.total_steps:
            episode_returns, score = evaluate(state)
            result = ({"charts/episodic_return": episode_returns.mean()}
                      | ({"charts/normalized_score": score} if score is not None else {}))
            run.scalars(result, step)
            run.evaluation({"step": step, "wall_s": time.perf_counter() - train_start,
                            "return_std": episode_returns.std()} | result | scalars)
            bar.write(eval_line(step, episode_returns, score))
        if args.save_every and step % args.save_every == 0:
            save_checkpoint(run.dir / f"checkpoint_{step}.msgpack", state, {**meta, "step": step})
    bar.close()
    save_checkpoint(run.dir / "final.msgpack", state, {**meta, "step": step})
    print(f"{'interrupted' if interrupt.requested else 'done'} at update {step}; checkpoint {run.dir / 'final.msgpack'}")
    run.close()
    return state
