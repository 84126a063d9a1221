"""How do a saved policy's evaluation episodes end, and how far from the data do its states go?

    python -m benchmarks.diagnose iql runs/hopper-medium__iql__0__1795526497/final.msgpack

Replays the policy's evaluation episodes (the training runs' seeds, 10000 + i) and prints each episode's
return, length and ending (terminated, or cut by the time limit), then compares the states it visits with
the dataset's: for each observation dimension, the share of visited states outside the data's 0.1–99.9
percentile range. A policy that leaves the data's states has left what its critic was trained on.
On the data's own states, how far its actions are from the data's (root mean square per dimension):
a policy that stays close to the data's behaviour stays near the spread of the data's own actions.
Last, for the critics that evaluate the learned policy (TD3+BC, AWR, CQL; IQL's Q is the data's in-sample
value), what the critic expects along the policy's own episodes, min_i Q_i(s_t, π(s_t)), against the
discounted return that actually followed: a critic far above it has been fooled by actions the data lacks;
and on the data's states, how far above the data's own actions the critic rates the policy's. For a tanh-Gaussian
actor (SAC+BC, CQL), the spread σ of its Gaussian before the tanh on the data's states: SAC+BC's data term,
−log π(a | s), charges a gap from the mean by 1/2σ² per dimension, where TD3+BC's squared error charges 1/|A|.
Such an actor is evaluated acting with its mode, tanh(mean), but its critic's backup values the policy that draws
from the Gaussian: the same episodes are replayed with drawn actions, and their returns and the discounted return
that followed are printed, to set beside the critic's values.
A checkpoint of several seeds (--num-seeds), or of a sweep, is read state by state. The checkpoint's own flags rebuild its
networks: nothing about how it was trained needs to be passed again.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import tyro

from benchmarks.algorithms import ALGORITHMS, load_algorithm
from common.checkpoints import load_checkpoint, read_checkpoint, trained_args
from common.datasets import load_dataset
from common.evaluation import EVAL_SEED, make_env
from common.experiment import describe, init_states, run_labels
from common.networks import TanhGaussianActor, TwinCritic, sample_tanh_gaussian


IN_SAMPLE_CRITICS = {"iql"}  # a critic of the data's own actions, not of the learned policy: not compared


@dataclass
class Args:
    algo: tyro.conf.Positional[str]
    checkpoint: tyro.conf.Positional[Path]
    episodes: int = 10


def episode(policy, env_spec, seed: int, rescale_actions: bool = True):
    """One episode; the policy acts in [-1, 1], mapped onto the environment's bounds as in evaluation."""
    env = make_env(env_spec, rescale_actions)
    obs, _ = env.reset(seed=seed)
    states, rewards, terminated, truncated = [obs], [], False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, _ = env.step(np.asarray(policy(obs[None].astype(np.float32)))[0])
        states.append(obs)
        rewards.append(reward)
    return np.array(states), np.array(rewards), "terminated" if terminated else "time limit"


def data_sample(data, num_states: int = 10_000, seed: int = 0):
    """(s, a) pairs drawn at random from the data (all of them, if fewer), for comparing the policy with it."""
    rows = np.random.default_rng(seed).permutation(len(data.obs))[:num_states]
    return data.obs[rows], data.action[rows]


def action_gap(policy_action, data_action) -> float:
    """RMS of π(s) − a over the data's (s, a) pairs, per action dimension."""
    return float(np.sqrt(np.mean((policy_action - data_action) ** 2)))


def critic_preference(q, obs, policy_action, data_action) -> tuple[float, float]:
    """How much better than the data's own actions the critic rates the policy's, on the data's states:
    mean Q(s, π(s)) − Q(s, a), and the share of states where it rates π(s) higher."""
    gain = np.asarray(q(obs, policy_action)) - np.asarray(q(obs, data_action))
    return float(gain.mean()), float((gain > 0).mean())


def returns_to_go(rewards, discount: float, ending: str, horizon: int = 300):
    """Discounted return from each step on. After a time-limit cut the true value is unknown, so the last
    `horizon` steps are dropped there (0.99^300 < 5%: what was cut off weighs little before them)."""
    returns = np.zeros(len(rewards))
    future = 0.0
    for t in reversed(range(len(rewards))):
        future = rewards[t] + discount * future
        returns[t] = future
    return returns if ending == "terminated" else returns[:max(len(rewards) - horizon, 0)]


def as_trained(state):
    """raw obs -> what the networks saw in training: normalized by the statistics the state holds, if it holds
    any (TD3+BC's)."""
    return (lambda o: (o - state.obs_mean) / state.obs_std) if hasattr(state, "obs_mean") else (lambda o: o)


def policy_q(state, hidden_dims):
    """(raw obs, action) -> min over the twin critics, fed the observations as in training."""
    critic, normalize = TwinCritic(hidden_dims), as_trained(state)
    return jax.jit(lambda obs, action: critic.apply(state.critic, normalize(obs), action).min(0))


def tanh_gaussian_std(state, hidden_dims, action_dim):
    """raw obs -> σ of the actor's Gaussian before the tanh, per action dimension (SAC+BC's and CQL's actors)."""
    actor, normalize = TanhGaussianActor(action_dim, hidden_dims), as_trained(state)
    return jax.jit(lambda obs: jax.numpy.exp(actor.apply(state.actor, normalize(obs))[1]))


def tanh_gaussian_sampler(state, hidden_dims, action_dim, seed: int = 0):
    """raw obs -> an action drawn from the actor's tanh-Gaussian, a fresh draw on every call (the policy a SAC
    backup values; evaluation acts with the mode)."""
    actor, normalize = TanhGaussianActor(action_dim, hidden_dims), as_trained(state)
    draw = jax.jit(lambda obs, key: sample_tanh_gaussian(*actor.apply(state.actor, normalize(obs)), key)[0])
    steps = itertools.count()  # a fresh key per call, however many episodes
    return lambda obs: draw(obs, jax.random.fold_in(jax.random.PRNGKey(seed), next(steps)))


def main(args: Args):
    if args.algo not in ALGORITHMS:
        raise SystemExit(f"error: unknown algorithm {args.algo}; choose from {list(ALGORITHMS)}")
    module, make_agent = load_algorithm(args.algo)
    try:  # missing, unreadable, not ours or another algorithm's: one line, not a traceback
        meta, _ = read_checkpoint(args.checkpoint, args.algo)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    trained = trained_args(module.Args, meta)
    if trained is None:
        raise SystemExit(f"error: {args.checkpoint} records its flags as text (it was written before checkpoints "
                         f"kept their types), so its networks cannot be rebuilt from it; --eval-only still evaluates it")
    labels = run_labels(trained)  # its seeds, and in a sweep each combination's
    data = load_dataset(trained.env_id)
    agent = make_agent(trained, data.obs.shape[1], data.action.shape[1])
    try:
        states, _ = load_checkpoint(args.checkpoint, init_states(agent.init, trained), args.algo)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    low, high = np.percentile(data.obs, [0.1, 99.9], axis=0)

    def outside(x):
        return (x < low) | (x > high)

    print(f"data: {len(data.episode_returns)} episodes; share of its own states outside [0.1, 99.9] is 0.2% "
          f"per dimension by construction")
    sample_obs, sample_action = data_sample(data)  # the same pairs for every seed
    for i, label in enumerate(labels):
        state = jax.tree.map(lambda x: x[i], states) if len(labels) > 1 else states  # noqa: B023 (used at once)
        visited, expected, achieved = [], [], []
        q = None if args.algo in IN_SAMPLE_CRITICS else policy_q(state, trained.hidden_dims)
        print(f"{describe(label)} (update {meta['step']}):")
        for j in range(args.episodes):
            obs, rewards, ending = episode(lambda o: agent.policy(state, o), data.env_spec, EVAL_SEED + j,  # noqa: B023
                                           rescale_actions="action_low" in meta)  # older checkpoints acted unscaled
            visited.append(obs)
            far = np.flatnonzero(outside(obs[-1]))
            print(f"  episode {j}: return {rewards.sum():7.1f}, {len(rewards):4d} steps, {ending}; "
                  f"final state outside the data's range in dimensions {far.tolist()}")
            if q is not None:
                achieved.append(returns_to_go(rewards, trained.discount, ending))
                acted_on = obs[:len(achieved[-1])].astype(np.float32)
                expected.append(np.asarray(q(acted_on, agent.policy(state, acted_on))))
        share = outside(np.concatenate(visited)).mean(0)
        top = np.argsort(share)[::-1][:4]
        print("  visited states outside the data's range, by dimension: "
              + ", ".join(f"dim {d}: {100 * share[d]:.1f}%" for d in top))
        acted = np.asarray(agent.policy(state, sample_obs))
        gap = action_gap(acted, sample_action)
        print(f"  on the data's states, its actions differ from the data's by {gap:.3f} (RMS per dimension; the "
              f"best action that ignores the state: {np.sqrt(data.action.var(0).mean()):.3f})")
        if args.algo == "cql" or getattr(trained, "variant", None) == "sac_bc":
            std = np.asarray(tanh_gaussian_std(state, trained.hidden_dims, data.action.shape[1])(sample_obs))
            print(f"  on the data's states, its Gaussian's σ before the tanh: median {np.median(std):.3f} "
                  f"(5th–95th percentile {np.percentile(std, 5):.3f}–{np.percentile(std, 95):.3f}, all dimensions)")
            draw = tanh_gaussian_sampler(state, trained.hidden_dims, data.action.shape[1])
            drawn = [episode(draw, data.env_spec, EVAL_SEED + j, rescale_actions="action_low" in meta)
                     for j in range(args.episodes)]
            returns = [rewards.sum() for _, rewards, _ in drawn]
            followed = np.concatenate([returns_to_go(rewards, trained.discount, ending)
                                       for _, rewards, ending in drawn])
            print(f"  acting with actions drawn from its Gaussian instead (what its critic's backup values), the same "
                  f"{len(drawn)} episodes return {np.mean(returns):.1f} (from {min(returns):.1f} to "
                  f"{max(returns):.1f}; {sum(ending == 'terminated' for *_, ending in drawn)} terminated); the "
                  f"discounted return that followed: {followed.mean():.1f} ({len(followed)} states)")
        if q is not None:
            gain, share = critic_preference(q, sample_obs, acted, sample_action)
            print(f"  on the data's states, its critic rates its actions {gain:+.2f} above the data's own (mean "
                  f"Q(s, π(s)) − Q(s, a); higher at {100 * share:.0f}% of them): the improvement it believes in")
            expected, achieved = np.concatenate(expected), np.concatenate(achieved)
            print(f"  along these episodes its critic expects {expected.mean():.1f} (mean min_i Q_i(s_t, π(s_t))); "
                  f"the discounted return that followed: {achieved.mean():.1f} ({len(achieved)} states)")


if __name__ == "__main__":
    main(tyro.cli(Args))
