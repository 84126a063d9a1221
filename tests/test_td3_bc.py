import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import td3_bc
from common.networks import Critic, TwinCritic
from tests.cli import CLI_SMALL, refusal, run_script
from tests.helpers import assert_trees_differ, assert_trees_equal, random_batch

SMALL = dict(hidden_dims=(32, 32), batch_size=16, log_every=4, total_steps=100)


# ---- losses against numpy ---------------------------------------------------------------------

def test_target_smoothing_clips_the_noise_then_the_action():
    next_action = np.array([[0.9, 0.0, -0.2, -0.8]])
    noise = np.array([[0.3, 2.0, -0.1, -0.4]])
    expected = [[1.0, 0.5, -0.3, -1.0]]  # 0.9+0.3 hits the bound; 2.0 is clipped to 0.5; -0.8-0.4 hits -1
    np.testing.assert_allclose(td3_bc.smoothed_target_action(next_action, noise, 0.5), expected, rtol=1e-6)


def test_critic_loss_sums_twins_of_mean_td_error():
    q = np.array([[1.0, 2.0], [0.0, 4.0]])  # (twin, batch)
    reward, terminal, next_q = np.array([1.0, 1.0]), np.array([0.0, 1.0]), np.array([2.0, 5.0])
    target = np.array([1.0 + 0.5 * 2.0, 1.0])  # the terminal transition does not bootstrap
    expected = ((q[0] - target) ** 2).mean() + ((q[1] - target) ** 2).mean()
    assert float(td3_bc.critic_loss(q, reward, terminal, next_q, 0.5)) == pytest.approx(expected)


def test_actor_loss_is_scaled_q_plus_mean_squared_error():
    q = np.array([2.0, -4.0])
    pi, a = np.array([[0.5, 0.0], [0.0, -1.0]]), np.array([[0.0, 0.0], [0.0, 0.0]])
    lam = 2.5 / 3.0
    bc = (0.25 + 0 + 0 + 1.0) / 4  # averaged over batch and action dimensions, as the authors' code does
    loss, (lam_out, bc_out) = td3_bc.td3_bc_actor_loss(q, pi, a, 2.5, 1.0)
    assert float(loss) == pytest.approx(-lam * (2.0 - 4.0) / 2 + bc)
    assert (float(lam_out), float(bc_out)) == pytest.approx((lam, bc))
    plain_td3, _ = td3_bc.td3_bc_actor_loss(q, pi, a, 2.5, 0.0)
    assert float(plain_td3) == pytest.approx(-lam * (2.0 - 4.0) / 2)


def test_lambda_carries_no_gradient():
    q, pi, a = jnp.array([2.0, -4.0]), jnp.zeros((2, 1)), jnp.zeros((2, 1))
    grad = jax.grad(lambda q: td3_bc.td3_bc_actor_loss(q, pi, a, 2.5, 1.0)[0])(q)
    # With λ = 2.5 / mean|q| held fixed, dL/dq_i = -λ / B; a gradient through λ would make the two differ.
    np.testing.assert_allclose(grad, [-2.5 / 3.0 / 2, -2.5 / 3.0 / 2], rtol=1e-6)


def test_sac_bc_actor_loss_is_entropy_and_scaled_q_minus_data_log_likelihood():
    q, log_prob, data_log_prob = np.array([2.0, -4.0]), np.array([0.5, -1.5]), np.array([-3.0, 1.0])
    lam = 2.5 / 3.0
    loss, (lam_out, bc) = td3_bc.sac_bc_actor_loss(q, log_prob, data_log_prob, 0.1, 2.5, 1.0)
    expected = ((0.1 * 0.5 - lam * 2.0) + (0.1 * -1.5 + lam * 4.0)) / 2 + (3.0 - 1.0) / 2
    assert float(loss) == pytest.approx(expected)
    assert (float(lam_out), float(bc)) == pytest.approx((lam, 1.0))
    grad = jax.grad(lambda q: td3_bc.sac_bc_actor_loss(q, log_prob, data_log_prob, 0.1, 2.5, 1.0)[0])(jnp.array(q))
    np.testing.assert_allclose(grad, [-lam / 2, -lam / 2], rtol=1e-6)  # λ held fixed: no gradient through it


def test_temperature_rises_when_entropy_is_below_target():
    too_sure = jnp.array([5.0, 4.0])  # log π well above |A| = 2: entropy below the target −2
    assert float(jax.grad(td3_bc.temperature_loss)(0.0, too_sure, -2.0)) < 0  # gradient descent raises log β
    assert float(jax.grad(td3_bc.temperature_loss)(0.0, -too_sure, -2.0)) > 0


# ---- the update -------------------------------------------------------------------------------

@functools.cache
def compiled_td3_bc(**overrides):  # one compilation per configuration, shared by the tests
    args = td3_bc.Args(**{**SMALL, **overrides})
    agent = td3_bc.make_td3_bc(args, obs_dim=3, action_dim=2)
    return args, agent._replace(update=jax.jit(agent.update))


def small_td3_bc(**overrides):
    args, agent = compiled_td3_bc(**overrides)
    return args, agent, random_batch()


def test_actor_and_targets_move_only_every_second_update():
    args, agent, batch = small_td3_bc()
    state = agent.init(jax.random.PRNGKey(0))
    first, m1 = agent.update(state, batch)
    assert_trees_differ(first.critic, state.critic)
    for field in ("actor", "actor_opt", "target_actor", "target_critic"):
        assert_trees_equal(getattr(first, field), getattr(state, field))
    assert float(m1["losses/actor"]) == 0.0
    second, m2 = agent.update(first, batch)
    assert_trees_differ(second.actor, first.actor)
    # the actor's loss reads the first twin of the critic just updated (as TD3 does)
    pi = td3_bc.DeterministicActor(2, args.hidden_dims).apply(first.actor, batch["obs"])
    q1 = td3_bc.TwinCritic(args.hidden_dims).apply(second.critic, batch["obs"], pi)[0]
    expected, _ = td3_bc.td3_bc_actor_loss(q1, pi, batch["action"], args.alpha, args.bc_weight)
    assert float(m2["losses/actor"]) == pytest.approx(float(expected), rel=1e-5)
    for new, field in (("critic", "target_critic"), ("actor", "target_actor")):
        rho = args.polyak
        expected = jax.tree.map(lambda n, old: rho * n + (1 - rho) * old, getattr(second, new), getattr(first, field))
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), getattr(second, field), expected)


def test_policy_delay_one_moves_the_actor_every_update():
    _, agent, batch = small_td3_bc(policy_delay=1)
    state = agent.init(jax.random.PRNGKey(0))
    assert_trees_differ(agent.update(state, batch)[0].actor, state.actor)


def test_critic_never_depends_on_the_current_actor():
    _, agent, batch = small_td3_bc()
    state = agent.init(jax.random.PRNGKey(0))._replace(step=jnp.int32(1))  # the next update moves the actor
    other_actor = agent.init(jax.random.PRNGKey(1)).actor
    after, _ = agent.update(state, batch)
    after_other, _ = agent.update(state._replace(actor=other_actor), batch)
    assert_trees_equal(after.critic, after_other.critic)
    assert_trees_equal(after.target_critic, after_other.target_critic)
    assert_trees_differ(after.actor, after_other.actor)


def test_actor_loss_does_not_move_the_critics():
    _, with_q, batch = small_td3_bc()
    _, bc_only, _ = small_td3_bc(alpha=0.0)  # no gradient reaches Q(s, π(s)) here
    state = with_q.init(jax.random.PRNGKey(0))
    a, b = state, state
    for _ in range(2):  # the second update moves the actor (a third would see the targets differ)
        a, _ = with_q.update(a, batch)
        b, _ = bc_only.update(b, batch)
    assert_trees_equal(a.critic, b.critic)
    assert_trees_equal(a.target_critic, b.target_critic)
    assert_trees_differ(a.actor, b.actor)


def test_sac_bc_moves_actor_temperature_and_target_critic_every_update_and_keeps_no_target_actor():
    _, agent, batch = small_td3_bc(variant="sac_bc")
    state = agent.init(jax.random.PRNGKey(0))
    after, metrics = agent.update(state, batch)
    for field in ("critic", "actor", "target_critic", "log_beta"):
        assert_trees_differ(getattr(after, field), getattr(state, field))
    assert_trees_equal(after.target_actor, state.target_actor)
    assert {"values/entropy", "values/beta"} <= set(metrics)
    # the critic's target samples the current actor, not the (unused) target actor
    other_target_actor = agent.init(jax.random.PRNGKey(1)).actor
    assert_trees_equal(agent.update(state._replace(target_actor=other_target_actor), batch)[0].critic, after.critic)


def test_sac_bc_data_term_raises_the_likelihood_of_the_data_actions():
    args, agent, batch = small_td3_bc(variant="sac_bc", alpha=0.0)  # no Q term
    state = agent.init(jax.random.PRNGKey(0))._replace(log_beta=jnp.float32(-30.0))  # β ≈ 0: the data term alone
    actor = td3_bc.TanhGaussianActor(2, args.hidden_dims)

    def data_log_likelihood(actor_params):
        return float(td3_bc.tanh_gaussian_log_prob(*actor.apply(actor_params, batch["obs"]), batch["action"]).mean())

    before = data_log_likelihood(state.actor)
    for _ in range(20):
        state, _ = agent.update(state, batch)
    assert data_log_likelihood(state.actor) > before + 0.1


def test_sac_bc_is_finite_for_data_actions_on_the_bounds():
    _, agent, batch = small_td3_bc(variant="sac_bc")
    on_bounds = batch | {"action": jnp.sign(batch["action"])}  # every action exactly ±1
    state, metrics = agent.update(agent.init(jax.random.PRNGKey(0)), on_bounds)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.actor))


def test_policy_normalizes_raw_observations_with_the_stored_statistics():
    args, agent, _ = small_td3_bc()
    mean, std = jnp.array([1.0, -2.0, 3.0]), jnp.array([2.0, 0.5, 4.0])
    state = agent.init(jax.random.PRNGKey(0))._replace(obs_mean=mean, obs_std=std)
    obs = jnp.array([[1.0, 0.0, -1.0], [3.0, -2.0, 7.0]])
    expected = td3_bc.DeterministicActor(2, args.hidden_dims).apply(state.actor, (obs - mean) / std)
    np.testing.assert_allclose(agent.policy(state, obs), expected, rtol=1e-6)


# ---- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["td3_bc", "sac_bc"])
def test_cli_trains_saves_and_evaluates_with_the_same_statistics(variant, tiny_hopper, tmp_path, capsys):
    out = run_script("td3_bc.py", "--env-id", tiny_hopper, "--total-steps", "300", "--eval-every", "300",
                     "--save-every", "200", "--variant", variant, *CLI_SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "from project stand-in" in out.stdout
    (line,) = [s for s in (out.stderr + out.stdout).splitlines() if s.startswith("step      300 | return")]
    assert "normalized" in line
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run_dir.glob("*.msgpack")} == {"checkpoint_200.msgpack", "final.msgpack"}
    assert list(run_dir.glob("events.out.tfevents.*"))

    from common.datasets import load_dataset
    from common.checkpoints import load_checkpoint

    data = load_dataset(tiny_hopper)
    template = td3_bc.make_td3_bc(td3_bc.Args(hidden_dims=(32, 32), variant=variant), 11, 3).init(jax.random.PRNGKey(0))
    saved, meta = load_checkpoint(run_dir / "final.msgpack", template, "td3_bc")
    assert meta["step"] == 300 and int(saved.step) == 300
    np.testing.assert_allclose(saved.obs_mean, data.obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(saved.obs_std, data.obs.std(0) + 1e-3, rtol=1e-5)

    again = run_script("td3_bc.py", "--env-id", tiny_hopper, "--eval-only", "--checkpoint",
                       str(run_dir / "final.msgpack"), "--variant", variant, *CLI_SMALL, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert line in again.stdout  # deterministic policy, same start states, same statistics: the same line

    from benchmarks import diagnose

    diagnose.main(diagnose.Args("td3_bc", run_dir / "final.msgpack", episodes=1))  # its flags say (32, 32)
    out = capsys.readouterr().out
    assert "along these episodes its critic expects" in out and "the improvement it believes in" in out


@pytest.mark.parametrize("args, message", [
    (["--alpha", "-1"], "--alpha must be >= 0"),
    (["--policy-delay", "0"], "--policy-delay must be positive"),
    (["--policy-delay", "3", "--log-every", "100"], "--log-every must be a multiple of --policy-delay (3)"),
    (["--variant", "sac_bc", "--policy-delay", "0"], "--policy-delay must be positive"),
    (["--variant", "sac"], "sac_bc"),  # an unknown variant names the valid ones
])
def test_bad_values_are_one_clear_line(args, message, minari_store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    said = refusal("td3_bc.py", *args, capsys=capsys)
    assert message in said and "\n" not in said


def test_a_twin_member_alone_gives_that_twins_q():
    critic = TwinCritic((8,))
    obs, action = jnp.ones((4, 3)), jnp.ones((4, 2))
    params = critic.init(jax.random.PRNGKey(0), obs, action)
    both = critic.apply(params, obs, action)
    for i in range(2):
        np.testing.assert_allclose(Critic((8,)).apply(TwinCritic.member(params, i), obs, action),
                                   both[i], rtol=1e-6)
