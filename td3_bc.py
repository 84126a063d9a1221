"""AC+BC: an off-policy actor-critic whose actor loss gains a behavioural-cloning term. TD3+BC (Fujimoto & Gu,
2021) by default; DDPG+BC and SAC+BC (Haarnoja et al., 2018, with the same term) by flag.

Objective, for (s, a, r, s', d) from the dataset, twin critics Q1, Q2, a deterministic actor π and polyak
targets Q̄1, Q̄2, π̄ (observations normalized by the dataset's mean and std):

    smoothing  a'  = clip(π̄(s') + clip(σ ε, −c, c), −1, 1),  ε ~ N(0, I)            (target policy smoothing)
    critic     L_Q = Σ_i E[ (Q_i(s, a) − r − γ (1 − d) min_j Q̄_j(s', a'))² ]
    actor      L_π = E[ −λ Q1(s, π(s)) + mean_k (π_k(s) − a_k)² ],  λ = α / E|Q1(s, π(s))| held fixed
    targets    Q̄ ← (1 − ρ) Q̄ + ρ Q,  π̄ ← (1 − ρ) π̄ + ρ π

The critic steps every update; the actor and both targets every --policy-delay updates, reading the
critic just updated (as TD3 does). λ only rescales Q so that α = 2.5 means the same on every dataset.
The observation statistics (std + 1e-3) are fixed before training, stored in the checkpoint and applied
at evaluation too. Rewards are not scaled (the paper scales none).

SAC+BC (`--variant sac_bc`): a tanh-Gaussian actor π(· | s), ã ~ π(· | s) reparameterised, temperature β:

    critic     as above, with a' ~ π(· | s') in place of the smoothed target action (no target actor)
    actor      L_π = E[ β log π(ã | s) − λ min_j Q_j(s, ã) ] − E_(s,a)~D[ log π(a | s) ],  λ = α / E|min_j Q_j|
    entropy    L_β = −E[ log β · (log π(ã | s) − |A|) ]                                (target entropy −|A|)

Dividing the lecture's AC+BC objective, max E_π[Q] + α' E_D[log π(a | s)] (its eq. 9, the forward KL to the
data), by α' gives this actor loss with λ = 1/α', plus SAC's own entropy term. TD3+BC's squared error is the
same data term for a deterministic policy: −log N(a; π(s), σ²) = |a − π(s)|² / 2σ² + const. So at one α the
data term here pulls about |A| / 2σ² times as hard as TD3+BC's mean over dimensions (σ before the tanh: the
data's own spread, or wider where the entropy target binds): the narrower the policy, the nearer a clone.
log π(a | s) is finite at data actions on the bounds (|a| = 1) only because they are clipped to 1 − 1e-6
first. The entropy bonus is left out of the critic's backup, as in cql.py: Q then estimates the policy's
return, comparable with the other methods' Q.
The actor and β step every --policy-delay updates (default 1 here, as SAC does).
Evaluation acts with the mode tanh(mean), as SAC's is usually reported, while Q values the policy that draws;
they can differ: on halfcheetah-medium-replay the mode stands still where the drawn actions run (its notes).

Variants by flag: `--bc-weight 0` is plain offline TD3, whose actor chases Q at actions the data never
tried (the failure that motivated offline RL); `--policy-noise 0 --policy-delay 1` is DDPG+BC, still with
twin critics; `--alpha 0` leaves behavioural cloning alone.
Deliberate deviations: the BC term averages over action dimensions, as the authors' code does (the paper
writes the squared norm, |A| times larger); `--bc-weight` is ours, to switch the BC term off.
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
from common.networks import (Critic, DeterministicActor, TanhGaussianActor, TwinCritic, sample_tanh_gaussian,
                             tanh_gaussian_log_prob)
from common.video import log_videos, video_due


@dataclass
class Args(ExperimentArgs):  # the experiment flags (--env-id, --seed, --total-steps, ...), then these
    exp_name: str = "td3_bc"
    """the middle of the run directory's name"""
    # algorithm
    variant: Literal["td3_bc", "sac_bc"] = "td3_bc"
    """td3_bc: deterministic actor, target smoothing (DDPG+BC: --policy-noise 0 --policy-delay 1);
    sac_bc: tanh-Gaussian actor with a learned entropy temperature"""
    alpha: Sweepable = 2.5
    """α: weight of Q against behavioural cloning in the actor loss (0 gives plain behavioural cloning)"""
    bc_weight: float = 1.0
    """weight of the behavioural-cloning term; 0 gives plain offline TD3"""
    policy_noise: float = 0.2
    """σ of the Gaussian noise added to the target action (0: no smoothing)"""
    noise_clip: float = 0.5
    """c: the target noise is clipped to [−c, c]"""
    policy_delay: int | None = None
    """critic updates per actor (and target) update (default: 2 for td3_bc, as TD3; 1 for sac_bc, as SAC)"""
    discount: float = 0.99
    polyak: float = 0.005
    """ρ of the target updates"""
    batch_size: int = 256
    learning_rate: float = 3e-4
    """Adam's, for the actor and the critics"""
    hidden_dims: tuple[int, ...] = (256, 256)


class TrainState(NamedTuple):
    critic: dict
    target_critic: dict
    actor: dict
    target_actor: dict
    critic_opt: optax.OptState
    actor_opt: optax.OptState
    log_beta: jax.Array  # SAC+BC's entropy temperature (unused by TD3+BC)
    beta_opt: optax.OptState
    step: jax.Array  # updates done, for the actor delay
    obs_mean: jax.Array  # the dataset's observation statistics, applied at evaluation too
    obs_std: jax.Array
    key: jax.Array


# ---- the objective: each loss on plain arrays, so it can be read (and tested) on its own ---------------
def smoothed_target_action(next_action, noise, noise_clip):
    """TD3's target policy smoothing: a clipped perturbation, then the action bounds."""
    return jnp.clip(next_action + jnp.clip(noise, -noise_clip, noise_clip), -1.0, 1.0)


def critic_loss(q, reward, terminal, next_q, discount):
    target = reward + discount * (1 - terminal) * next_q
    return ((q - target) ** 2).mean(-1).sum()  # mean over the batch, summed over the twin critics


def td3_bc_actor_loss(q, policy_action, data_action, alpha, bc_weight):
    lam = jax.lax.stop_gradient(alpha / jnp.abs(q).mean())  # scale only: no gradient through λ
    bc = ((policy_action - data_action) ** 2).mean()
    return -lam * q.mean() + bc_weight * bc, (lam, bc)


def sac_bc_actor_loss(q, log_prob, data_log_prob, beta, alpha, bc_weight):
    lam = jax.lax.stop_gradient(alpha / jnp.abs(q).mean())
    bc = -data_log_prob.mean()  # −E_D[log π(a | s)]: the forward KL to the data, up to a constant
    return (beta * log_prob - lam * q).mean() + bc_weight * bc, (lam, bc)


def temperature_loss(log_beta, log_prob, target_entropy):
    return -(log_beta * jax.lax.stop_gradient(log_prob + target_entropy)).mean()


class TD3BC(NamedTuple):
    init: callable  # key -> TrainState (observation statistics 0 and 1: set them from the data)
    update: callable  # (state, batch) -> (state, metrics): one critic step, and the delayed actor step
    train_chunk: callable  # (state, data) -> (state, per-update metrics): args.log_every updates, jitted
    policy: callable  # (state, raw obs) -> deterministic action, jitted


def policy_delay(args: Args) -> int:
    return args.policy_delay if args.policy_delay is not None else {"td3_bc": 2, "sac_bc": 1}[args.variant]


def make_td3_bc(args: Args, obs_dim: int, action_dim: int) -> TD3BC:
    sac, delay = args.variant == "sac_bc", policy_delay(args)
    actor_names = ACTOR_METRICS if sac else ACTOR_METRICS[:-1]  # a deterministic actor has no entropy
    critic = TwinCritic(args.hidden_dims)
    actor = TanhGaussianActor(action_dim, args.hidden_dims) if sac else DeterministicActor(action_dim, args.hidden_dims)
    q1 = Critic(args.hidden_dims)  # the first twin alone, for the actor loss (as TD3 does)
    critic_opt, actor_opt = optax.adam(args.learning_rate), optax.adam(args.learning_rate)  # actor_opt: β's too

    def actor_objective(actor_params, critic_params, batch, beta, key):
        if sac:
            mean, log_std = actor.apply(actor_params, batch["obs"])
            action, log_prob = sample_tanh_gaussian(mean, log_std, key)
            q = critic.apply(critic_params, batch["obs"], action).min(0)
            data_log_prob = tanh_gaussian_log_prob(mean, log_std, batch["action"])
            loss, (lam, bc) = sac_bc_actor_loss(q, log_prob, data_log_prob, beta, args.alpha, args.bc_weight)
            return loss, (lam, bc, log_prob)
        policy_action = actor.apply(actor_params, batch["obs"])
        q = q1.apply(TwinCritic.member(critic_params, 0), batch["obs"], policy_action)
        loss, (lam, bc) = td3_bc_actor_loss(q, policy_action, batch["action"], args.alpha, args.bc_weight)
        return loss, (lam, bc, jnp.zeros(()))

    def update(state: TrainState, batch):
        key, noise_key, actor_key = jax.random.split(state.key, 3)
        if sac:  # the current policy's sampled action
            next_action, _ = sample_tanh_gaussian(*actor.apply(state.actor, batch["next_obs"]), noise_key)
        else:
            noise = args.policy_noise * jax.random.normal(noise_key, batch["action"].shape)
            next_action = smoothed_target_action(actor.apply(state.target_actor, batch["next_obs"]), noise,
                                                 args.noise_clip)
        next_q = critic.apply(state.target_critic, batch["next_obs"], next_action).min(0)

        def critic_objective(critic_params):
            q = critic.apply(critic_params, batch["obs"], batch["action"])
            return critic_loss(q, batch["reward"], batch["terminal"], next_q, args.discount), q

        (c_loss, q), grads = jax.value_and_grad(critic_objective, has_aux=True)(state.critic)
        updates, critic_opt_state = critic_opt.update(grads, state.critic_opt)
        critic_params = optax.apply_updates(state.critic, updates)

        def actor_step(_):  # lax.cond runs only the branch taken: skipped updates cost no actor work
            (a_loss, (lam, bc, log_prob)), grads = jax.value_and_grad(actor_objective, has_aux=True)(
                state.actor, critic_params, batch, jnp.exp(state.log_beta), actor_key)
            updates, actor_opt_state = actor_opt.update(grads, state.actor_opt)
            actor_params = optax.apply_updates(state.actor, updates)
            log_beta, beta_opt_state = state.log_beta, state.beta_opt
            if sac:  # β follows the entropy of the actions the actor just sampled
                grad = jax.grad(temperature_loss)(state.log_beta, log_prob, -float(action_dim))
                updates, beta_opt_state = actor_opt.update(grad, state.beta_opt)
                log_beta = optax.apply_updates(state.log_beta, updates)
            target_actor = state.target_actor if sac else optax.incremental_update(
                actor_params, state.target_actor, args.polyak)  # SAC has no target actor
            target_critic = optax.incremental_update(critic_params, state.target_critic, args.polyak)
            values = dict(zip(ACTOR_METRICS, (a_loss, bc, lam, -log_prob.mean())))
            return (actor_params, actor_opt_state, target_actor, target_critic, log_beta, beta_opt_state,
                    {k: values[k] for k in actor_names})

        def no_actor_step(_):
            return (state.actor, state.actor_opt, state.target_actor, state.target_critic, state.log_beta,
                    state.beta_opt, dict.fromkeys(actor_names, jnp.zeros(())))  # 0 where the actor rests

        step = state.step + 1
        actor_params, actor_opt_state, target_actor, target_critic, log_beta, beta_opt_state, actor_values = (
            jax.lax.cond(step % delay == 0, actor_step, no_actor_step, None))
        state = TrainState(critic_params, target_critic, actor_params, target_actor, critic_opt_state,
                           actor_opt_state, log_beta, beta_opt_state, step, state.obs_mean, state.obs_std, key)
        metrics = {"losses/critic": c_loss, "values/q": q.mean(), "values/target_q": next_q.mean(), **actor_values}
        if sac:
            metrics["values/beta"] = jnp.exp(log_beta)
        return state, metrics

    def init(key):
        k_critic, k_actor, key = jax.random.split(key, 3)
        obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
        critic_params = critic.init(k_critic, obs, action)
        actor_params = actor.init(k_actor, obs)
        log_beta = jnp.zeros(())  # β starts at 1
        return TrainState(critic_params, critic_params, actor_params, actor_params, critic_opt.init(critic_params),
                          actor_opt.init(actor_params), log_beta, actor_opt.init(log_beta), jnp.zeros((), jnp.int32),
                          jnp.zeros(obs_dim), jnp.ones(obs_dim), key)

    @jax.jit
    def train_chunk(state: TrainState, data: dict):
        def step(state, _):
            key, sample_key = jax.random.split(state.key)
            idx = jax.random.randint(sample_key, (args.batch_size,), 0, data["obs"].shape[0])
            return update(state._replace(key=key), jax.tree.map(lambda x: x[idx], data))  # sampled on the device
        return jax.lax.scan(step, state, length=args.log_every)

    @jax.jit
    def policy(state: TrainState, obs):
        out = actor.apply(state.actor, (obs - state.obs_mean) / state.obs_std)  # the training data's statistics
        return jnp.tanh(out[0]) if sac else out  # SAC+BC acts with its squashed mean

    return TD3BC(init, update, train_chunk, policy)


ACTOR_METRICS = ("losses/actor", "losses/bc", "values/lambda", "values/entropy")  # only where the actor moves


def check_args(args: Args):
    check_experiment_args(args, lambda a: [  # a: args with one value of each swept flag
        (not a.alpha >= 0, f"--alpha must be >= 0, got {a.alpha}"),
        (not a.bc_weight >= 0, f"--bc-weight must be >= 0, got {a.bc_weight}"),
        (not (a.policy_noise >= 0 and a.noise_clip >= 0), "--policy-noise and --noise-clip must be >= 0"),
        (policy_delay(a) <= 0, f"--policy-delay must be positive, got {a.policy_delay}"),
        (policy_delay(a) > 0 and a.log_every % policy_delay(a),
         f"--log-every must be a multiple of --policy-delay ({policy_delay(a)})"),
    ])


def main(args: Args):
    check_args(args)
    if args.eval_only:  # the checkpoint holds its environment, bounds, scores and observation statistics
        return evaluate_checkpoint(args, "td3_bc", make_td3_bc)
    data = load_training_data(args.env_id)
    obs_mean, obs_std = data.obs.mean(0), data.obs.std(0) + 1e-3
    device_data = {"obs": (data.obs - obs_mean) / obs_std, "action": data.action, "reward": data.reward,
                   "next_obs": (data.next_obs - obs_mean) / obs_std, "terminal": data.terminal}
    device_data = jax.device_put(device_data)  # the whole dataset lives on the device; batches never leave it

    dims = data.obs.shape[1], data.action.shape[1]
    td3_bc = make_td3_bc(args, *dims)
    state = init_states(lambda key: td3_bc.init(key)._replace(obs_mean=obs_mean, obs_std=obs_std), args)
    train_chunk = compile_chunk(make_td3_bc, args, *dims)  # one program for all: seeds x swept values
    labels = run_labels(args)  # what each trained state is: its seed, and its values of the swept flags
    evaluate = make_evaluator(td3_bc.policy, data.env_spec, data.ref_scores, len(labels), args.eval_episodes,
                              workers=args.eval_workers)
    run, state, step = start_run(args, "td3_bc", state, data)  # a new run directory, or the resumed checkpoint's
    actor_rows = slice(policy_delay(args) - 1, None, policy_delay(args))  # the updates that moved the actor
    with GracefulInterrupt() as interrupt:  # Ctrl-C means stop-and-save inside, as usual after
        bar = tqdm(total=args.total_steps, initial=step, desc="td3_bc", unit="update", smoothing=0.1)
        while step < args.total_steps and not interrupt.requested:
            start = time.perf_counter()
            state, metrics = train_chunk(state, device_data)
            metrics = per_seed(jax.device_get(metrics), len(labels))  # host sync point: once per chunk
            updates_per_sec = args.log_every / (time.perf_counter() - start)
            stop_if_nonfinite(metrics, step, labels,
                              lambda: run.save("nonfinite.msgpack", state, step + args.log_every))
            step += args.log_every
            bar.update(args.log_every)
            scalars = [{k: v[actor_rows].mean() if k in ACTOR_METRICS else v.mean() for k, v in m.items()}
                       for m in metrics]
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
