"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2022): offline RL that never queries Q at unseen actions.

Objective, for (s, a, r, s', d) from the dataset, twin critics Q1, Q2 and their polyak targets Q̄1, Q̄2:

    value   L_V  = E[ |τ − 1(u < 0)| · u² ],  u = min_i Q̄_i(s, a) − V(s)          (expectile τ of Q over data actions)
    critic  L_Q  = Σ_i E[ (Q_i(s, a) − r − γ (1 − d) V(s'))² ]                    (V replaces max_a' Q(s', a'))
    actor   L_π  = −E[ min(exp(β (min_i Q̄_i(s, a) − V(s))), 100) · log π(a | s) ]  (--actor-loss awr)
         or L_π  = E[ −λ min_i Q̄_i(s, μ(s)) + ‖μ(s) − a‖² ],  λ = α / E|Q̄| held fixed   (--actor-loss ddpg_bc)
    target  Q̄   ← (1 − ρ) Q̄ + ρ Q

With τ → 1 the value approaches the best action *in the data* at each state, so the Bellman target
r + γ V(s') is an in-sample maximum: no out-of-distribution action ever enters it. The actor is then
extracted from the learned advantages; either extraction works on the same critic.

Rewards are scaled by 1000 / (max − min episode return), as the paper does for locomotion.
Deliberate deviation: the paper's code updates V first and gives the *updated* V to the actor and the
critic; here all three losses read V, Q̄ from before the step (as CORL's IQL does, Tarasov et al., 2022).
The fixed point is the same, a whole forward pass of V is saved, and the three gradients are independent.
"""

import time
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
import tyro
from tqdm import tqdm

from common.eval_only import evaluate_checkpoint
from common.evaluation import make_evaluator
from common.experiment import (ExperimentArgs, Sweepable, check_experiment_args, compile_chunk, init_states,
                               load_training_data, per_seed, run_labels)
from common.guards import GracefulInterrupt, stop_if_nonfinite
from common.logger import start_run
from common.networks import GaussianActor, TwinCritic, ValueNet, gaussian_log_prob
from common.video import log_videos, video_due


@dataclass
class Args(ExperimentArgs):  # the experiment flags (--env-id, --seed, --total-steps, ...), then these
    exp_name: str = "iql"
    """the middle of the run directory's name"""
    # algorithm
    expectile: Sweepable = 0.7
    """τ of the value's expectile regression, in [0.5, 1): 0.5 is the mean over data actions, → 1 their max"""
    beta: Sweepable = 3.0
    """β, the inverse temperature of the AWR weights exp(β·A); 0 gives plain behaviour cloning"""
    max_weight: float = 100.0
    """clip of the AWR weights"""
    actor_loss: Literal["awr", "ddpg_bc"] = "awr"
    bc_alpha: Sweepable = 2.5
    """α of the ddpg_bc actor loss"""
    discount: float = 0.99
    polyak: float = 0.005
    """ρ of the target critic update"""
    batch_size: int = 256
    learning_rate: float = 3e-4
    """for all networks; the actor's decays to 0 along a cosine over --total-steps"""
    hidden_dims: tuple[int, ...] = (256, 256)


class TrainState(NamedTuple):
    critic: dict
    target_critic: dict
    value: dict
    actor: dict
    critic_opt: optax.OptState
    value_opt: optax.OptState
    actor_opt: optax.OptState
    key: jax.Array


# ---- the objective: each loss on plain arrays, so it can be read (and tested) on its own ---------------
def expectile_loss(diff, expectile):
    """Asymmetric squared error: residuals where the target is above the estimate weigh `expectile`."""
    return jnp.where(diff > 0, expectile, 1 - expectile) * diff**2


def value_loss(v, target_q, expectile):
    return expectile_loss(target_q - v, expectile).mean()


def critic_loss(q, reward, terminal, next_v, discount):
    target = reward + discount * (1 - terminal) * next_v
    return ((q - target) ** 2).mean(-1).sum()  # mean over the batch, summed over the twin critics


def awr_weights(advantage, beta, max_weight):
    return jnp.minimum(jnp.exp(beta * advantage), max_weight)


def awr_actor_loss(log_prob, advantage, beta, max_weight):
    return -(jax.lax.stop_gradient(awr_weights(advantage, beta, max_weight)) * log_prob).mean()


def ddpg_bc_actor_loss(q, policy_action, data_action, alpha):
    lam = jax.lax.stop_gradient(alpha / jnp.abs(q).mean())  # scale only: no gradient through λ
    return (-lam * q + ((policy_action - data_action) ** 2).sum(-1)).mean()


class IQL(NamedTuple):
    init: callable  # key -> TrainState
    update: callable  # (state, batch) -> (state, metrics): one gradient step of every network
    train_chunk: callable  # (state, data) -> (state, per-update metrics): args.log_every updates, jitted
    policy: callable  # (state, obs) -> deterministic action, jitted


def make_iql(args: Args, obs_dim: int, action_dim: int) -> IQL:
    critic, value, actor = TwinCritic(args.hidden_dims), ValueNet(args.hidden_dims), GaussianActor(action_dim, args.hidden_dims)
    critic_opt, value_opt = optax.adam(args.learning_rate), optax.adam(args.learning_rate)
    actor_opt = optax.adam(optax.cosine_decay_schedule(args.learning_rate, args.total_steps))

    def actor_objective(actor_params, target_critic, batch, advantage):
        mean, log_std = actor.apply(actor_params, batch["obs"])
        if args.actor_loss == "awr":
            log_prob = gaussian_log_prob(mean, log_std, batch["action"])
            return awr_actor_loss(log_prob, advantage, args.beta, args.max_weight)
        q = critic.apply(target_critic, batch["obs"], mean).min(0)
        return ddpg_bc_actor_loss(q, mean, batch["action"], args.bc_alpha)

    def update(state: TrainState, batch):
        # Everything the three losses need from the *current* networks; after this they are independent.
        target_q = critic.apply(state.target_critic, batch["obs"], batch["action"]).min(0)
        next_v = value.apply(state.value, batch["next_obs"])

        def value_objective(value_params):
            v = value.apply(value_params, batch["obs"])
            return value_loss(v, target_q, args.expectile), v

        (v_loss, v), grads = jax.value_and_grad(value_objective, has_aux=True)(state.value)
        updates, value_opt_state = value_opt.update(grads, state.value_opt)
        value_params = optax.apply_updates(state.value, updates)

        advantage = target_q - v
        a_loss, grads = jax.value_and_grad(actor_objective)(state.actor, state.target_critic, batch, advantage)
        updates, actor_opt_state = actor_opt.update(grads, state.actor_opt)
        actor_params = optax.apply_updates(state.actor, updates)

        def critic_objective(critic_params):
            q = critic.apply(critic_params, batch["obs"], batch["action"])
            return critic_loss(q, batch["reward"], batch["terminal"], next_v, args.discount), q

        (c_loss, q), grads = jax.value_and_grad(critic_objective, has_aux=True)(state.critic)
        updates, critic_opt_state = critic_opt.update(grads, state.critic_opt)
        critic_params = optax.apply_updates(state.critic, updates)

        target_critic = optax.incremental_update(critic_params, state.target_critic, args.polyak)
        state = TrainState(critic_params, target_critic, value_params, actor_params,
                           critic_opt_state, value_opt_state, actor_opt_state, state.key)
        metrics = {"losses/value": v_loss, "losses/critic": c_loss, "losses/actor": a_loss,
                   "values/q": q.mean(), "values/v": v.mean(), "values/advantage": advantage.mean(),
                   "values/awr_weight": awr_weights(advantage, args.beta, args.max_weight).mean()}
        return state, metrics

    def init(key):
        k_critic, k_value, k_actor, key = jax.random.split(key, 4)
        obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        critic_params = critic.init(k_critic, obs, action)
        value_params = value.init(k_value, obs)
        actor_params = actor.init(k_actor, obs)
        return TrainState(critic_params, critic_params, value_params, actor_params, critic_opt.init(critic_params),
                          value_opt.init(value_params), actor_opt.init(actor_params), key)

    @jax.jit
    def train_chunk(state: TrainState, data: dict):
        def step(state, _):
            key, sample_key = jax.random.split(state.key)
            idx = jax.random.randint(sample_key, (args.batch_size,), 0, data["obs"].shape[0])
            return update(state._replace(key=key), jax.tree.map(lambda x: x[idx], data))  # sampled on the device
        return jax.lax.scan(step, state, length=args.log_every)

    @jax.jit
    def policy(state: TrainState, obs):
        return actor.apply(state.actor, obs)[0]  # the Gaussian's mean: deterministic evaluation

    return IQL(init, update, train_chunk, policy)


def check_args(args: Args):
    unused = "bc_alpha" if args.actor_loss == "awr" else "beta"  # the other actor's strength
    if isinstance(getattr(args, unused), tuple) and len(set(getattr(args, unused))) > 1:
        raise SystemExit(f"error: --{unused.replace('_', '-')} does not enter --actor-loss {args.actor_loss}'s "
                         f"training, so sweeping it would train the same policy once per value")
    check_experiment_args(args, lambda a: [  # a: args with one value of each swept flag
        (not 0.5 <= a.expectile < 1, f"--expectile must be in [0.5, 1), got {a.expectile}"),
        (not a.beta >= 0, f"--beta must be >= 0, got {a.beta}"),
        (not a.max_weight > 0, f"--max-weight must be > 0, got {a.max_weight}"),
        (not a.bc_alpha >= 0, f"--bc-alpha must be >= 0, got {a.bc_alpha}"),
    ])


def main(args: Args):
    check_args(args)
    if args.eval_only:  # the checkpoint records its environment, bounds and scores: no dataset
        return evaluate_checkpoint(args, "iql", make_iql)
    data = load_training_data(args.env_id)
    returns = data.episode_returns
    reward_scale = 1000.0 / max(returns.max() - returns.min(), 1e-6)
    device_data = {"obs": data.obs, "action": data.action, "reward": data.reward * reward_scale,
                   "next_obs": data.next_obs, "terminal": data.terminal}
    device_data = jax.device_put(device_data)  # the whole dataset lives on the device; batches never leave it

    dims = data.obs.shape[1], data.action.shape[1]
    iql = make_iql(args, *dims)
    state = init_states(iql.init, args)  # with several seeds or swept values: their states, stacked
    train_chunk = compile_chunk(make_iql, args, *dims)  # one program for all: seeds x swept values
    labels = run_labels(args)  # what each trained state is: its seed, and its values of the swept flags
    evaluate = make_evaluator(iql.policy, data.env_spec, data.ref_scores, len(labels), args.eval_episodes,
                              workers=args.eval_workers)
    run, state, step = start_run(args, "iql", state, data)  # a new run directory, or the resumed checkpoint's
    with GracefulInterrupt() as interrupt:  # Ctrl-C means stop-and-save inside, as usual after
        bar = tqdm(total=args.total_steps, initial=step, desc="iql", unit="update", smoothing=0.1)
        while step < args.total_steps and not interrupt.requested:
            start = time.perf_counter()
            state, metrics = train_chunk(state, device_data)
            metrics = per_seed(jax.device_get(metrics), len(labels))  # host sync point: once per chunk
            updates_per_sec = args.log_every / (time.perf_counter() - start)
            stop_if_nonfinite(metrics, step, labels,
                              lambda: run.save("nonfinite.msgpack", state, step + args.log_every))
            step += args.log_every
            bar.update(args.log_every)
            scalars = [{k: v.mean() for k, v in m.items()} for m in metrics]
            run.log_chunk(scalars, step, updates_per_sec)
            if step % args.eval_every == 0 or step == args.total_steps:
                returns, scores, videos = evaluate(state, record=video_due(args, step))
                bar.write(run.log_evaluation(step, returns, scores, scalars))
                log_videos(run, step, videos)  # with --capture-video: runs/<run>/videos/ and TensorBoard
            if args.save_every and step % args.save_every == 0:
                run.save(f"checkpoint_{step}.msgpack", state, step)
        bar.close()
    run.finish(state, step, interrupted=interrupt.requested)


if __name__ == "__main__":
    main(tyro.cli(Args))
