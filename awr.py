"""Advantage-Weighted Regression (Peng et al., 2019), offline with a Q-function critic as in AWAC (Nair et al., 2020).

Objective, for (s, a, r, s', d) from the dataset, a Gaussian actor π, twin critics Q1, Q2 and their polyak
targets Q̄1, Q̄2:

    critic     L_Q = Σ_i E[ (Q_i(s, a) − r − γ (1 − d) min_j Q̄_j(s', a'))² ],  a' ~ π(· | s')     (evaluates π)
    advantage  A(s, a) = min_j Q_j(s, a) − (1/k) Σ_m min_j Q_j(s, a_m),          a_1..a_k ~ π(· | s)
    actor      L_π = −E[ min(exp(A(s, a) / λ), w_max) · log π(a | s) ]              (weighted behavioural cloning)
    target     Q̄ ← (1 − ρ) Q̄ + ρ Q

The actor is the closed-form solution of "maximise Q within a KL ball around the behaviour policy",
projected onto π by weighted maximum likelihood on dataset actions only: it never follows ∇_a Q.
Unlike iql.py, whose value is an in-sample expectile of Q over the dataset's own actions (so no unseen action
is ever evaluated), this critic evaluates the current policy: its target and its baseline query Q at actions
sampled from π, which stay close to the data only because π is itself trained by weighted cloning.

Settings: λ = 1 and w_max = 100 (as CORL's AWAC, Tarasov et al., 2022), k = 1, 2 x 256 networks, Adam 3e-4,
no entropy term in the target, rewards not scaled. Sampled actions are clipped to [−1, 1] (the loader's range).
Deliberate deviations: the weights are clipped rather than normalised over the batch by a softmax (AWAC's
code; Peng et al. clip too, at 20); the actor's log-std is state-independent (iql.py's actor); all losses
read the networks from before the step, so the advantage reuses the critic's own forward pass.
"""

import time
from dataclasses import dataclass
from typing import NamedTuple

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
from common.networks import GaussianActor, TwinCritic, gaussian_log_prob
from common.video import log_videos, video_due


@dataclass
class Args(ExperimentArgs):  # the experiment flags (--env-id, --seed, --total-steps, ...), then these
    exp_name: str = "awr"
    """the middle of the run directory's name"""
    # algorithm
    temperature: Sweepable = 1.0
    """λ of the weights exp(A / λ): smaller is greedier, larger is closer to behavioural cloning
    (iql.py's --beta is the inverse, β = 1 / λ)"""
    max_weight: float = 100.0
    """w_max, the clip of the weights"""
    baseline_actions: int = 1
    """k, the actions sampled from π(· | s) to estimate E_a'~π Q(s, a')"""
    discount: float = 0.99
    polyak: float = 0.005
    """ρ of the target critic update"""
    batch_size: int = 256
    learning_rate: float = 3e-4
    """Adam's, for the actor and the critics"""
    hidden_dims: tuple[int, ...] = (256, 256)


class TrainState(NamedTuple):
    critic: dict
    target_critic: dict
    actor: dict
    critic_opt: optax.OptState
    actor_opt: optax.OptState
    key: jax.Array


# ---- the objective: each loss on plain arrays, so it can be read (and tested) on its own ---------------
def sample_actions(mean, log_std, key, num=None):
    """Actions from the Gaussian policy, clipped to the action bounds; `num` stacks that many per state."""
    shape = mean.shape if num is None else (num, *mean.shape)
    return jnp.clip(mean + jnp.exp(log_std) * jax.random.normal(key, shape), -1.0, 1.0)


def critic_loss(q, reward, terminal, next_q, discount):
    target = reward + discount * (1 - terminal) * next_q
    return ((q - target) ** 2).mean(-1).sum()  # mean over the batch, summed over the twin critics


def advantage(q_data, q_sampled):
    """Q at the dataset action minus the mean Q of actions sampled from π (axis 0 of q_sampled)."""
    return q_data - q_sampled.mean(0)


def awr_weights(advantage, temperature, max_weight):
    return jnp.minimum(jnp.exp(advantage / temperature), max_weight)


def awr_actor_loss(log_prob, advantage, temperature, max_weight):
    return -(jax.lax.stop_gradient(awr_weights(advantage, temperature, max_weight)) * log_prob).mean()


class AWR(NamedTuple):
    init: callable  # key -> TrainState
    update: callable  # (state, batch) -> (state, metrics): one gradient step of every network
    train_chunk: callable  # (state, data) -> (state, per-update metrics): args.log_every updates, jitted
    policy: callable  # (state, obs) -> deterministic action, jitted


def make_awr(args: Args, obs_dim: int, action_dim: int) -> AWR:
    critic, actor = TwinCritic(args.hidden_dims), GaussianActor(action_dim, args.hidden_dims)
    critic_opt, actor_opt = optax.adam(args.learning_rate), optax.adam(args.learning_rate)

    def actor_objective(actor_params, critic_params, batch, q_data, key):
        mean, log_std = actor.apply(actor_params, batch["obs"])  # one forward: the baseline's samples and log π(a|s)
        sampled = jax.lax.stop_gradient(sample_actions(mean, log_std, key, args.baseline_actions))  # (k, B, A)
        obs = jnp.broadcast_to(batch["obs"], (args.baseline_actions, *batch["obs"].shape))
        q_sampled = critic.apply(critic_params, obs.reshape(-1, obs_dim), sampled.reshape(-1, action_dim))  # one call
        adv = advantage(q_data, q_sampled.min(0).reshape(args.baseline_actions, -1))
        log_prob = gaussian_log_prob(mean, log_std, batch["action"])
        return awr_actor_loss(log_prob, adv, args.temperature, args.max_weight), (adv, log_std)

    def update(state: TrainState, batch):
        key, next_key, baseline_key = jax.random.split(state.key, 3)
        next_action = sample_actions(*actor.apply(state.actor, batch["next_obs"]), next_key)
        next_q = critic.apply(state.target_critic, batch["next_obs"], next_action).min(0)

        def critic_objective(critic_params):
            q = critic.apply(critic_params, batch["obs"], batch["action"])
            return critic_loss(q, batch["reward"], batch["terminal"], next_q, args.discount), q

        (c_loss, q), grads = jax.value_and_grad(critic_objective, has_aux=True)(state.critic)
        updates, critic_opt_state = critic_opt.update(grads, state.critic_opt)
        critic_params = optax.apply_updates(state.critic, updates)

        q_data = q.min(0)  # the critic's forward pass above, before its step, reused for the advantage
        (a_loss, (adv, log_std)), grads = jax.value_and_grad(actor_objective, has_aux=True)(
            state.actor, state.critic, batch, q_data, baseline_key)
        updates, actor_opt_state = actor_opt.update(grads, state.actor_opt)
        actor_params = optax.apply_updates(state.actor, updates)

        target_critic = optax.incremental_update(critic_params, state.target_critic, args.polyak)
        state = TrainState(critic_params, target_critic, actor_params, critic_opt_state, actor_opt_state, key)
        metrics = {"losses/critic": c_loss, "losses/actor": a_loss, "values/q": q_data.mean(),
                   "values/target_q": next_q.mean(), "values/advantage": adv.mean(),
                   "values/awr_weight": awr_weights(adv, args.temperature, args.max_weight).mean(),
                   "values/policy_std": jnp.exp(log_std).mean()}
        return state, metrics

    def init(key):
        k_critic, k_actor, key = jax.random.split(key, 3)
        obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        critic_params = critic.init(k_critic, obs, action)
        actor_params = actor.init(k_actor, obs)
        return TrainState(critic_params, critic_params, actor_params, critic_opt.init(critic_params),
                          actor_opt.init(actor_params), key)

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

    return AWR(init, update, train_chunk, policy)


def check_args(args: Args):
    check_experiment_args(args, lambda a: [  # a: args with one value of each swept flag
        (not a.temperature > 0, f"--temperature must be > 0, got {a.temperature}"),
        (not a.max_weight > 0, f"--max-weight must be > 0, got {a.max_weight}"),
        (a.baseline_actions <= 0, f"--baseline-actions must be positive, got {a.baseline_actions}"),
    ])


def main(args: Args):
    check_args(args)
    if args.eval_only:  # the checkpoint records its environment, bounds and scores: no dataset
        return evaluate_checkpoint(args, "awr", make_awr)
    data = load_training_data(args.env_id)
    device_data = {"obs": data.obs, "action": data.action, "reward": data.reward,
                   "next_obs": data.next_obs, "terminal": data.terminal}
    device_data = jax.device_put(device_data)  # the whole dataset lives on the device; batches never leave it

    dims = data.obs.shape[1], data.action.shape[1]
    awr = make_awr(args, *dims)
    state = init_states(awr.init, args)  # with several seeds or swept values: their states, stacked
    train_chunk = compile_chunk(make_awr, args, *dims)  # one program for all: seeds x swept values
    labels = run_labels(args)  # what each trained state is: its seed, and its values of the swept flags
    evaluate = make_evaluator(awr.policy, data.env_spec, data.ref_scores, len(labels), args.eval_episodes,
                              workers=args.eval_workers)
    run, state, step = start_run(args, "awr", state, data)  # a new run directory, or the resumed checkpoint's
    with GracefulInterrupt() as interrupt:  # Ctrl-C means stop-and-save inside, as usual after
        bar = tqdm(total=args.total_steps, initial=step, desc="awr", unit="update", smoothing=0.1)
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
