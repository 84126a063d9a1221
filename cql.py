"""Conservative Q-Learning (Kumar et al., 2020): SAC whose critics are pushed down at actions the data never took.

Objective, for (s, a, r, s', d) from the dataset, a tanh-Gaussian actor π, twin critics Q_i, polyak targets Q̄_i:

    critic  L_Q = Σ_i E[ (Q_i(s, a) − r − γ (1 − d) min_j Q̄_j(s', a'))² ] + α_c Σ_i gap_i,  a' ~ π(· | s')
    CQL(H)  gap_i = E_s[ log Σ_{b ∈ S} exp(Q_i(s, b) − log p(b)) ] − E_{s,a}[ Q_i(s, a) ]         (--cql-form h)
              S: N actions each from Uniform[−1, 1]^|A| (p = 0.5^|A|), π(· | s) and π(· | s') (p = π's density)
    basic   gap_i = E_s[ mean_{b ~ Uniform} Q_i(s, b) ] − E_{s,a}[ Q_i(s, a) ]                    (--cql-form basic)
    actor   L_π = E[ α log π(ã | s) − min_j Q_j(s, ã) ],  ã ~ π(· | s) reparameterised
    entropy L_α = −E[ log α · (log π(ã | s) − |A|) ]                                      (target entropy −|A|)
    target  Q̄ ← (1 − ρ) Q̄ + ρ Q

α is the entropy temperature, α_c the conservative weight. Minimising the gap lowers Q off the data (logsumexp:
a soft maximum over actions) and raises it on the data, so the actor, which maximises Q, stays near the data.
--lagrange-threshold τ learns α_c by minimising −α_c (mean_i gap_i − τ): it grows while the gap exceeds τ.

Settings (the paper's, locomotion): N = 10, α_c = 5, lr 3e-4 (critic) and 1e-4 (actor, α), batch 256, no entropy
in the backup, rewards not scaled. Deliberate deviations: 2 x 256 networks (paper: 3 x 256, --hidden-dims 256 256
256); under --lagrange-threshold α_c replaces --cql-alpha, as in the paper's equation (the authors' code multiplies
the two); all losses read the networks from before the step. The authors' code warm-starts the actor by behaviour
cloning (40k updates in which log π(a | s) of the data's action stands in for min_j Q_j in L_π); here that is
--bc-steps, off by default, which the paper does not mention.
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
from common.networks import TanhGaussianActor, TwinCritic, sample_tanh_gaussian, tanh_gaussian_log_prob
from common.video import log_videos, video_due


@dataclass
class Args(ExperimentArgs):  # the experiment flags (--env-id, --seed, --total-steps, ...), then these
    exp_name: str = "cql"
    """the middle of the run directory's name"""
    # algorithm
    cql_form: Literal["h", "basic"] = "h"
    """h: importance-sampled logsumexp over uniform and policy actions; basic: mean Q over uniform actions"""
    cql_alpha: Sweepable = 5.0
    """α_c, the weight of the conservative gap (the authors use 5 or 10 on locomotion; 0: plain offline SAC)"""
    lagrange_threshold: float | None = None
    """τ: learn α_c so that the gap stays near τ (overrides --cql-alpha); unset: α_c fixed"""
    bc_steps: int = 0
    """warm start: for this many updates the actor maximises the data's log-likelihood instead of Q (authors' code:
    40000)"""
    num_sampled_actions: int = 10
    """N, actions drawn per state from each of the uniform, π(· | s) and π(· | s') proposals"""
    discount: float = 0.99
    polyak: float = 0.005
    """ρ of the target critic update"""
    batch_size: int = 256
    critic_lr: float = 3e-4
    """Adam's, for the critics and the Lagrange multiplier α_c"""
    actor_lr: float = 1e-4
    """Adam's, for the actor and the entropy temperature α"""
    hidden_dims: tuple[int, ...] = (256, 256)


class TrainState(NamedTuple):
    critic: dict
    target_critic: dict
    actor: dict
    log_alpha: jax.Array  # entropy temperature
    log_cql_alpha: jax.Array  # Lagrange multiplier α_c (used only with --lagrange-threshold)
    critic_opt: optax.OptState
    actor_opt: optax.OptState
    alpha_opt: optax.OptState
    cql_alpha_opt: optax.OptState
    key: jax.Array


# ---- the objective: each loss on plain arrays, so it can be read (and tested) on its own ---------------
def critic_loss(q, reward, terminal, next_q, discount):
    target = reward + discount * (1 - terminal) * next_q
    return ((q - target) ** 2).mean(-1).sum()  # mean over the batch, summed over the twin critics


def cql_h_gap(q_sampled, log_density, q_data):
    """Per critic: E_s logsumexp_b (Q(s, b) − log p(b)) − E Q(s, a). Sampled actions on axis −2, states on −1."""
    return (jax.nn.logsumexp(q_sampled - log_density, axis=-2) - q_data).mean(-1)


def cql_basic_gap(q_uniform, q_data):
    """Per critic: E_s mean_b Q(s, b) over uniform actions − E Q(s, a)."""
    return (q_uniform.mean(-2) - q_data).mean(-1)


def actor_loss(log_prob, q, alpha):
    return (alpha * log_prob - q).mean()


def temperature_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy)).mean()


def lagrange_loss(log_cql_alpha, gap, threshold):
    return -(jnp.minimum(jnp.exp(log_cql_alpha), 1e6) * jax.lax.stop_gradient(gap - threshold)).mean()


class CQL(NamedTuple):
    init: callable  # key -> TrainState
    update: callable  # (state, batch) -> (state, metrics): one gradient step of every network
    train_chunk: callable  # (state, data) -> (state, per-update metrics): args.log_every updates, jitted
    policy: callable  # (state, obs) -> deterministic action, jitted


def make_cql(args: Args, obs_dim: int, action_dim: int) -> CQL:
    critic, actor = TwinCritic(args.hidden_dims), TanhGaussianActor(action_dim, args.hidden_dims)
    critic_opt, actor_opt = optax.adam(args.critic_lr), optax.adam(args.actor_lr)  # also α_c's and α's, respectively
    n, lagrange = args.num_sampled_actions, args.lagrange_threshold is not None

    def sample_many(mean, log_std, key, num):  # num actions per state, from one forward pass of the actor
        return sample_tanh_gaussian(*(jnp.broadcast_to(x, (num, *x.shape)) for x in (mean, log_std)), key)

    def actor_objective(actor_params, critic_params, batch, alpha, key, updates_done):
        mean, log_std = actor.apply(actor_params, batch["obs"])  # also gives the critic's π(· | s) samples
        action, log_prob = sample_tanh_gaussian(mean, log_std, key)
        q = critic.apply(critic_params, batch["obs"], action).min(0)
        if args.bc_steps:  # warm start: the data's log-likelihood in place of Q, while the critic learns
            data_log_prob = tanh_gaussian_log_prob(mean, log_std, batch["action"])
            q = jnp.where(updates_done < args.bc_steps, data_log_prob, q)
        return actor_loss(log_prob, q, alpha), (mean, log_std, log_prob)

    def update(state: TrainState, batch):
        key, actor_key, next_key, uniform_key, policy_key = jax.random.split(state.key, 5)
        alpha = jnp.exp(state.log_alpha)
        updates_done = optax.tree_utils.tree_get(state.actor_opt, "count")  # Adam counts the actor's updates
        (a_loss, (mean, log_std, log_prob)), grads = jax.value_and_grad(actor_objective, has_aux=True)(
            state.actor, state.critic, batch, alpha, actor_key, updates_done)
        updates, actor_opt_state = actor_opt.update(grads, state.actor_opt)
        actor_params = optax.apply_updates(state.actor, updates)
        alpha_loss, grads = jax.value_and_grad(temperature_loss)(state.log_alpha, log_prob, -action_dim)
        updates, alpha_opt_state = actor_opt.update(grads, state.alpha_opt)
        log_alpha = optax.apply_updates(state.log_alpha, updates)

        # π(· | s') once: one sample for the Bellman target, N for the CQL term
        next_actions, next_log_probs = sample_many(*actor.apply(state.actor, batch["next_obs"]), next_key, n + 1)
        next_q = critic.apply(state.target_critic, batch["next_obs"], next_actions[0]).min(0)

        # Every action the critic scores, (1 + 3N, B, |A|): the data action first, then the proposals
        uniform = jax.random.uniform(uniform_key, (n, *batch["action"].shape), minval=-1.0, maxval=1.0)
        log_density = [jnp.full((n, batch["action"].shape[0]), action_dim * jnp.log(0.5))]
        proposals = [batch["action"][None], uniform]
        if args.cql_form == "h":  # π(· | s) samples from the actor's forward pass above
            policy_actions, policy_log_probs = sample_many(mean, log_std, policy_key, n)
            proposals += [policy_actions, next_actions[1:]]
            log_density += [policy_log_probs, next_log_probs[1:]]
        actions, log_density = jnp.concatenate(proposals), jnp.concatenate(log_density)
        cql_alpha = jnp.minimum(jnp.exp(state.log_cql_alpha), 1e6) if lagrange else args.cql_alpha

        def critic_objective(critic_params):  # every (s, action) pair through the critics in one call, as rows
            obs = jnp.broadcast_to(batch["obs"], (len(actions), *batch["obs"].shape)).reshape(-1, obs_dim)
            q = critic.apply(critic_params, obs, actions.reshape(-1, action_dim)).reshape(2, len(actions), -1)
            q_data, q_ood = q[:, 0], q[:, 1:]
            td = critic_loss(q_data, batch["reward"], batch["terminal"], next_q, args.discount)
            gap = cql_h_gap(q_ood, log_density, q_data) if args.cql_form == "h" else cql_basic_gap(q_ood, q_data)
            return td + cql_alpha * gap.sum(), (td, gap, q_data, q_ood)

        (c_loss, (td, gap, q_data, q_ood)), grads = jax.value_and_grad(critic_objective, has_aux=True)(state.critic)
        updates, critic_opt_state = critic_opt.update(grads, state.critic_opt)
        critic_params = optax.apply_updates(state.critic, updates)
        log_cql_alpha, cql_alpha_opt_state = state.log_cql_alpha, state.cql_alpha_opt
        if lagrange:
            grads = jax.grad(lagrange_loss)(state.log_cql_alpha, gap.mean(), args.lagrange_threshold)
            updates, cql_alpha_opt_state = critic_opt.update(grads, state.cql_alpha_opt)
            log_cql_alpha = optax.apply_updates(state.log_cql_alpha, updates)

        target_critic = optax.incremental_update(critic_params, state.target_critic, args.polyak)
        state = TrainState(critic_params, target_critic, actor_params, log_alpha, log_cql_alpha, critic_opt_state,
                           actor_opt_state, alpha_opt_state, cql_alpha_opt_state, key)
        metrics = {"losses/critic": c_loss, "losses/td": td, "losses/cql_gap": gap.mean(), "losses/actor": a_loss,
                   "losses/alpha": alpha_loss, "values/alpha": alpha, "values/entropy": -log_prob.mean(),
                   "values/cql_alpha": cql_alpha, "values/q": q_data.mean(), "values/q_uniform": q_ood[:, :n].mean()}
        return state, metrics

    def init(key):
        k_critic, k_actor, key = jax.random.split(key, 3)
        obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        critic_params = critic.init(k_critic, obs, action)
        actor_params = actor.init(k_actor, obs)
        zero = jnp.zeros(())  # log α = log α_c = 0: both start at 1
        return TrainState(critic_params, critic_params, actor_params, zero, zero, critic_opt.init(critic_params),
                          actor_opt.init(actor_params), actor_opt.init(zero), critic_opt.init(zero), key)

    @jax.jit
    def train_chunk(state: TrainState, data: dict):
        def step(state, _):
            key, sample_key = jax.random.split(state.key)
            idx = jax.random.randint(sample_key, (args.batch_size,), 0, data["obs"].shape[0])
            return update(state._replace(key=key), jax.tree.map(lambda x: x[idx], data))  # sampled on the device
        return jax.lax.scan(step, state, length=args.log_every)

    @jax.jit
    def policy(state: TrainState, obs):
        return jnp.tanh(actor.apply(state.actor, obs)[0])  # the squashed mean: deterministic evaluation

    return CQL(init, update, train_chunk, policy)


def check_args(args: Args):
    check_experiment_args(args, lambda a: [  # a: args with one value of each swept flag
        (not a.cql_alpha >= 0, f"--cql-alpha must be >= 0, got {a.cql_alpha}"),
        (a.bc_steps < 0, f"--bc-steps must be >= 0, got {a.bc_steps}"),
        (a.num_sampled_actions <= 0, f"--num-sampled-actions must be positive, got {a.num_sampled_actions}"),
        (a.lagrange_threshold is not None and not jnp.isfinite(a.lagrange_threshold),
         f"--lagrange-threshold must be a finite number, got {a.lagrange_threshold}"),
    ])


def main(args: Args):
    check_args(args)
    if args.eval_only:  # the checkpoint records its environment, bounds and scores: no dataset
        return evaluate_checkpoint(args, "cql", make_cql)
    data = load_training_data(args.env_id)
    device_data = {"obs": data.obs, "action": data.action, "reward": data.reward,
                   "next_obs": data.next_obs, "terminal": data.terminal}
    device_data = jax.device_put(device_data)  # the whole dataset lives on the device; batches never leave it

    dims = data.obs.shape[1], data.action.shape[1]
    cql = make_cql(args, *dims)
    state = init_states(cql.init, args)  # with several seeds or swept values: their states, stacked
    train_chunk = compile_chunk(make_cql, args, *dims)  # one program for all: seeds x swept values
    labels = run_labels(args)  # what each trained state is: its seed, and its values of the swept flags
    evaluate = make_evaluator(cql.policy, data.env_spec, data.ref_scores, len(labels), args.eval_episodes,
                              workers=args.eval_workers)
    run, state, step = start_run(args, "cql", state, data)  # a new run directory, or the resumed checkpoint's
    with GracefulInterrupt() as interrupt:  # Ctrl-C means stop-and-save inside, as usual after
        bar = tqdm(total=args.total_steps, initial=step, desc="cql", unit="update", smoothing=0.1)
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
