"""Train the behaviour policies that the stand-in datasets are collected with.

Online SAC (Haarnoja et al., 2018) with automatic entropy tuning, on the `common/`
networks. Every `--save-every` environment steps the actor is saved, and its return
over `--eval-episodes` deterministic episodes is appended to `history.csv`, so that
`benchmarks/select_behavior.py` can later pick the expert and medium checkpoints.

    python -m benchmarks.train_behavior --env hopper            # about an hour on 2 cores
    python -m benchmarks.train_behavior --env hopper            # again: resumes where it stopped

The replay buffer holds every transition the run collected, in order, with its episode boundaries.
`--stop-at` ends a run early and saves that buffer in full: `benchmarks/make_datasets.py` reruns the
committed config up to the medium checkpoint this way and stores the buffer as the medium-replay dataset.

Deviation from the paper, for speed on a CPU: instead of one gradient step after each
environment step, the agent takes `--update-every` environment steps and then the same
number of gradient steps in one compiled call. The update-to-data ratio stays 1.
"""

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import flax.serialization
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro
from tqdm import tqdm

from common.datasets import ENVS
from common.evaluation import EVAL_SEED, run_episodes
from common.guards import GracefulInterrupt
from common.networks import TanhGaussianActor, TwinCritic, sample_tanh_gaussian

BEHAVIOR_DIR = Path(__file__).parent / "behavior"


@dataclass
class Args:
    env: str = "hopper"
    """one of hopper, halfcheetah, walker2d"""
    seed: int = 0
    total_steps: int = 1_000_000
    """environment steps (and gradient steps)"""
    learning_starts: int = 10_000
    """uniformly random actions before the first update"""
    update_every: int = 50
    """environment steps between two compiled blocks of as many gradient steps"""
    batch_size: int = 256
    learning_rate: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    """polyak rate of the target critic"""
    save_every: int = 10_000
    """save the actor and evaluate it every this many environment steps"""
    eval_episodes: int = 10
    resume_every: int = 50_000
    """write the full training state (replay buffer included) every this many steps"""
    out_dir: Path = BEHAVIOR_DIR
    stop_at: int | None = None
    """stop after this many environment steps (a multiple of --update-every) and save the whole replay buffer"""


class SACState(NamedTuple):
    actor: dict
    critic: dict
    target_critic: dict
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    key: jax.Array


def make_agent(args: Args, obs_dim: int, action_dim: int):
    actor = TanhGaussianActor(action_dim)
    critic = TwinCritic()
    opt = optax.adam(args.learning_rate)
    target_entropy = -float(action_dim)

    def init(key):
        k_actor, k_critic, key = jax.random.split(key, 3)
        obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        actor_params = actor.init(k_actor, obs)
        critic_params = critic.init(k_critic, obs, act)
        log_alpha = jnp.zeros(())
        return SACState(actor_params, critic_params, critic_params, log_alpha,
                        opt.init(actor_params), opt.init(critic_params), opt.init(log_alpha), key)

    def critic_loss(critic_params, state, batch, key):
        next_action, next_log_prob = sample_tanh_gaussian(*actor.apply(state.actor, batch["next_obs"]), key)
        next_q = critic.apply(state.target_critic, batch["next_obs"], next_action).min(0)
        next_v = next_q - jnp.exp(state.log_alpha) * next_log_prob
        target = batch["reward"] + args.discount * (1.0 - batch["terminal"]) * next_v
        q = critic.apply(critic_params, batch["obs"], batch["action"])
        return ((q - jax.lax.stop_gradient(target)) ** 2).mean(), q.mean()

    def actor_loss(actor_params, state, batch, key):
        action, log_prob = sample_tanh_gaussian(*actor.apply(actor_params, batch["obs"]), key)
        q = critic.apply(state.critic, batch["obs"], action).min(0)
        return (jnp.exp(state.log_alpha) * log_prob - q).mean(), log_prob

    def update(state: SACState, batch):
        key, k_critic, k_actor = jax.random.split(state.key, 3)
        (c_loss, q_mean), c_grads = jax.value_and_grad(critic_loss, has_aux=True)(state.critic, state, batch, k_critic)
        c_updates, critic_opt = opt.update(c_grads, state.critic_opt)
        critic_params = optax.apply_updates(state.critic, c_updates)
        state = state._replace(critic=critic_params, critic_opt=critic_opt)

        (a_loss, log_prob), a_grads = jax.value_and_grad(actor_loss, has_aux=True)(state.actor, state, batch, k_actor)
        a_updates, actor_opt = opt.update(a_grads, state.actor_opt)
        actor_params = optax.apply_updates(state.actor, a_updates)

        entropy_gap = jax.lax.stop_gradient(-log_prob.mean() - target_entropy)
        alpha_grad = entropy_gap  # d/dlog_alpha of log_alpha * (entropy - target)
        alpha_updates, alpha_opt = opt.update(alpha_grad, state.alpha_opt)
        log_alpha = optax.apply_updates(state.log_alpha, alpha_updates)

        target = optax.incremental_update(critic_params, state.target_critic, args.tau)
        state = SACState(actor_params, critic_params, target, log_alpha, actor_opt, critic_opt, alpha_opt, key)
        return state, {"critic_loss": c_loss, "actor_loss": a_loss, "q": q_mean, "alpha": jnp.exp(log_alpha)}

    @jax.jit
    def train_block(state, batches):
        state, metrics = jax.lax.scan(update, state, batches)
        return state, jax.tree.map(jnp.mean, metrics)

    @jax.jit
    def act(actor_params, obs, key):
        return sample_tanh_gaussian(*actor.apply(actor_params, obs), key)[0]

    @jax.jit
    def act_deterministic(actor_params, obs):
        return jnp.tanh(actor.apply(actor_params, obs)[0])

    return init, train_block, act, act_deterministic


class ReplayBuffer:
    """Preallocated numpy arrays; batches are drawn on the host by a seeded generator."""

    # `truncated` marks an episode cut short (time limit, or a resume that restarted it); the update ignores it
    FIELDS = ("obs", "action", "reward", "next_obs", "terminal", "truncated")

    def __init__(self, capacity: int, obs_dim: int, action_dim: int):
        dims = {"obs": obs_dim, "action": action_dim, "next_obs": obs_dim}
        self.data = {k: np.zeros((capacity, dims[k]) if k in dims else (capacity,), np.float32) for k in self.FIELDS}
        self.size = 0

    def add(self, **transition):
        for k, v in transition.items():
            self.data[k][self.size] = v
        self.size += 1

    def sample(self, rng: np.random.Generator, num_batches: int, batch_size: int):
        idx = rng.integers(0, self.size, size=(num_batches, batch_size))
        return {k: v[idx] for k, v in self.data.items()}


def save_resume(out: Path, buffer_file: Path, state, buffer: ReplayBuffer, step: int, episodes: int, rng,
                wall_time: float):
    """Networks and optimisers go to out/resume.* (a few MB: small enough to commit when a session must end
    mid-run); the replay buffer, hundreds of MB, to an ignored folder. Each file is replaced atomically."""
    buffer_file.parent.mkdir(parents=True, exist_ok=True)
    with open(buffer_file.with_suffix(".tmp"), "wb") as f:
        np.savez(f, **{k: v[: buffer.size] for k, v in buffer.data.items()})
    buffer_file.with_suffix(".tmp").replace(buffer_file)
    (out / "resume.tmp").write_bytes(flax.serialization.to_bytes(state))
    (out / "resume.tmp").replace(out / "resume.msgpack")
    meta = {"step": step, "episodes": episodes, "rng": rng.bit_generator.state, "wall_time": wall_time}
    (out / "resume.json").write_text(json.dumps(meta) + "\n")


def main(args: Args):
    last_step = min(args.total_steps, args.stop_at or args.total_steps)
    if last_step % args.update_every:
        raise SystemExit(f"--stop-at must be a multiple of --update-every ({args.update_every}), got {args.stop_at}")
    env_id = ENVS[args.env]
    out = args.out_dir / args.env
    ckpt_dir, buffer_file = out / "checkpoints", args.out_dir / "_resume" / args.env / "buffer.npz"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    env = gym.make(env_id)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    init, train_block, act, act_deterministic = make_agent(args, obs_dim, action_dim)

    state = init(jax.random.PRNGKey(args.seed))
    buffer = ReplayBuffer(args.total_steps, obs_dim, action_dim)
    rng = np.random.default_rng(args.seed)
    obs, _ = env.reset(seed=args.seed)
    step, episodes, refill_until, earlier_wall_time = 0, 0, 0, 0.0
    if (out / "resume.json").exists():
        meta = json.loads((out / "resume.json").read_text())
        state = flax.serialization.from_bytes(state, (out / "resume.msgpack").read_bytes())
        step, episodes, earlier_wall_time = meta["step"], meta["episodes"], meta["wall_time"]
        rng.bit_generator.state = meta["rng"]
        if buffer_file.exists():
            with np.load(buffer_file) as saved:
                for k in buffer.FIELDS:
                    buffer.data[k][: len(saved[k])] = saved[k]
                buffer.size = len(saved["obs"])
        if buffer.size == step and step > 0:  # the episode in progress restarts below: end it here
            buffer.data["truncated"][step - 1] = 1.0 - buffer.data["terminal"][step - 1]
        elif args.stop_at is not None:
            raise SystemExit(f"the replay buffer of this recording ({buffer_file}) is missing or incomplete; "
                             f"delete {out} to record again from step 0")
        if buffer.size != step:  # e.g. a new machine: refill with the current policy before updating again
            print(f"replay buffer not found at {buffer_file}: refilling {args.learning_starts} steps with the policy")
            buffer.size = 0
            refill_until = step + args.learning_starts
        # The simulator's internal state is not saved: the episode in progress restarts.
        obs, _ = env.reset(seed=args.seed + step)
        print(f"resumed {env_id} at step {step}")
    (out / "config.json").write_text(json.dumps({**vars(args), "out_dir": str(args.out_dir), "env_id": env_id,
                                                 "obs_dim": obs_dim, "action_dim": action_dim}, indent=2))

    with GracefulInterrupt() as interrupt:  # Ctrl-C means stop-and-save inside, as usual after
        history = out / "history.csv"
        if not history.exists():
            history.write_text("step,eval_return_mean,eval_return_std,train_episodes,wall_time\n")
        act_key = jax.random.fold_in(jax.random.PRNGKey(args.seed + 1_000_003), step)  # fresh noise after a resume
        bar = tqdm(total=last_step, initial=step, desc=env_id, smoothing=0.05)
        start, metrics, saved_at = time.time(), {}, step
        while step < last_step and not interrupt.requested:
            for _ in range(args.update_every):
                if step < args.learning_starts:
                    action = rng.uniform(-1, 1, action_dim).astype(np.float32)
                else:
                    act_key, k = jax.random.split(act_key)
                    action = np.asarray(act(state.actor, obs, k))
                next_obs, reward, terminated, truncated, _ = env.step(action)
                buffer.add(obs=obs, action=action, reward=reward, next_obs=next_obs, terminal=float(terminated),
                           truncated=float(truncated and not terminated))
                obs, step = next_obs, step + 1
                if terminated or truncated:
                    obs, _ = env.reset(seed=args.seed + step)
                    episodes += 1
            bar.update(args.update_every)
            if step >= max(args.learning_starts, refill_until):
                batches = buffer.sample(rng, args.update_every, args.batch_size)
                state, metrics = train_block(state, batches)
            if step % args.save_every == 0:
                (ckpt_dir / f"actor_{step:07d}.msgpack").write_bytes(flax.serialization.to_bytes(state.actor))
                returns = run_episodes(lambda o: act_deterministic(state.actor, o), env_id, args.eval_episodes,
                                       EVAL_SEED)  # the offline runs' episodes
                with history.open("a") as f:
                    csv.writer(f).writerow([step, f"{returns.mean():.1f}", f"{returns.std():.1f}", episodes,
                                            f"{earlier_wall_time + time.time() - start:.0f}"])
                bar.write(f"step {step}: eval return {returns.mean():.0f} ± {returns.std():.0f}  "
                          + "  ".join(f"{k} {float(v):.3g}" for k, v in metrics.items()))
            if step % args.resume_every == 0 or step == last_step:
                save_resume(out, buffer_file, state, buffer, step, episodes, rng,
                            earlier_wall_time + time.time() - start)
                saved_at = step
        bar.close()
    if saved_at != step:  # stopped between two scheduled saves (Ctrl-C at any moment of the loop)
        save_resume(out, buffer_file, state, buffer, step, episodes, rng, earlier_wall_time + time.time() - start)
    if interrupt.requested:
        print(f"stopped at step {step}; run the same command to resume")


if __name__ == "__main__":
    main(tyro.cli(Args))
