import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import awr
from tests.cli import CLI_SMALL, refusal, run_script
from tests.helpers import assert_trees_differ, assert_trees_equal, random_batch

SMALL = dict(hidden_dims=(32, 32), batch_size=16, log_every=4, total_steps=100)


# ---- losses against numpy ---------------------------------------------------------------------

def test_sampled_actions_stay_in_bounds_and_stack_k_per_state():
    mean, log_std = jnp.array([[0.9, -0.9], [0.0, 0.5]]), jnp.full((2, 2), np.log(3.0))
    actions = np.asarray(awr.sample_actions(mean, log_std, jax.random.PRNGKey(0), 50))
    assert actions.shape == (50, 2, 2)
    assert actions.min() == -1.0 and actions.max() == 1.0  # wide noise: some were clipped, none escaped
    one = awr.sample_actions(mean, jnp.full((2, 2), -20.0), jax.random.PRNGKey(0))
    np.testing.assert_allclose(one, mean, atol=1e-6)


def test_critic_loss_sums_twins_of_mean_td_error():
    q = np.array([[1.0, 2.0], [0.0, 4.0]])  # (twin, batch)
    reward, terminal, next_q = np.array([1.0, 1.0]), np.array([0.0, 1.0]), np.array([2.0, 5.0])
    target = np.array([1.0 + 0.5 * 2.0, 1.0])  # the terminal transition does not bootstrap
    expected = ((q[0] - target) ** 2).mean() + ((q[1] - target) ** 2).mean()
    assert float(awr.critic_loss(q, reward, terminal, next_q, 0.5)) == pytest.approx(expected)


def test_advantage_subtracts_the_mean_over_sampled_actions():
    q_data = np.array([1.0, 2.0])
    q_sampled = np.array([[0.0, 1.0], [2.0, 5.0], [1.0, 3.0]])  # (k=3, batch)
    np.testing.assert_allclose(awr.advantage(q_data, q_sampled), [1.0 - 1.0, 2.0 - 3.0], rtol=1e-6)


def test_awr_weights_divide_by_lambda_are_clipped_and_non_negative():
    adv = np.array([-10.0, 0.0, 0.5, 10.0])
    w = np.asarray(awr.awr_weights(adv, 0.5, 100.0))
    np.testing.assert_allclose(w, [np.exp(-20.0), 1.0, np.exp(1.0), 100.0], rtol=1e-5)
    assert (w >= 0).all() and w.max() <= 100.0
    assert (np.asarray(awr.awr_weights(np.array([-1e4, 1e4]), 1.0, 20.0)) == [0.0, 20.0]).all()


def test_awr_actor_loss_is_weighted_log_likelihood_without_gradient_into_the_weights():
    log_prob, adv = jnp.array([-1.0, -2.0]), jnp.array([0.0, 2.0])
    expected = -(1.0 * -1.0 + np.exp(1.0) * -2.0) / 2  # λ = 2
    assert float(awr.awr_actor_loss(log_prob, adv, 2.0, 100.0)) == pytest.approx(expected, rel=1e-6)
    assert float(jnp.abs(jax.grad(awr.awr_actor_loss, argnums=1)(log_prob, adv, 2.0, 100.0)).sum()) == 0.0
    np.testing.assert_allclose(jax.grad(awr.awr_actor_loss)(log_prob, adv, 2.0, 100.0), [-0.5, -np.exp(1.0) / 2],
                               rtol=1e-6)


# ---- the update -------------------------------------------------------------------------------

@functools.cache
def compiled_awr(**overrides):  # one compilation per configuration, shared by the tests
    args = awr.Args(**{**SMALL, **overrides})
    agent = awr.make_awr(args, obs_dim=3, action_dim=2)
    return args, agent._replace(update=jax.jit(agent.update))


def small_awr(**overrides):
    args, agent = compiled_awr(**overrides)
    return args, agent, random_batch()


def test_actor_loss_does_not_move_the_critics():
    _, greedy, batch = small_awr(temperature=0.01)
    _, cloning, _ = small_awr(temperature=1e9)
    state = greedy.init(jax.random.PRNGKey(0))
    a, _ = greedy.update(state, batch)
    b, _ = cloning.update(state, batch)
    assert_trees_equal(a.critic, b.critic)
    assert_trees_equal(a.target_critic, b.target_critic)
    assert_trees_differ(a.actor, b.actor)


def test_with_a_huge_lambda_the_actor_step_is_behavioural_cloning():
    args, agent, batch = small_awr(temperature=1e9)  # every weight exp(A / λ) is 1
    state = agent.init(jax.random.PRNGKey(0))
    after, metrics = agent.update(state, batch)
    actor = awr.GaussianActor(2, args.hidden_dims)
    bc = lambda p: -awr.gaussian_log_prob(*actor.apply(p, batch["obs"]), batch["action"]).mean()  # noqa: E731
    updates, _ = optax.adam(args.learning_rate).update(jax.grad(bc)(state.actor), state.actor_opt)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-7), optax.apply_updates(state.actor, updates),
                 after.actor)
    assert float(metrics["values/awr_weight"]) == pytest.approx(1.0)


def test_target_is_a_polyak_average_of_the_new_critic():
    args, agent, batch = small_awr()
    state = agent.init(jax.random.PRNGKey(0))
    state = state._replace(target_critic=jax.tree.map(lambda x: x + 1.0, state.target_critic))
    after, _ = agent.update(state, batch)
    rho = args.polyak
    expected = jax.tree.map(lambda new, old: rho * new + (1 - rho) * old, after.critic, state.target_critic)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), after.target_critic, expected)


def test_more_baseline_actions_change_only_the_actor_step():
    _, one, batch = small_awr(baseline_actions=1)
    _, four, _ = small_awr(baseline_actions=4)
    state = one.init(jax.random.PRNGKey(0))
    a, _ = one.update(state, batch)
    b, _ = four.update(state, batch)
    assert_trees_equal(a.critic, b.critic)
    assert_trees_differ(a.actor, b.actor)


# ---- the command line -------------------------------------------------------------------------


def test_cli_trains_saves_and_evaluates_its_checkpoint(tiny_hopper, tmp_path):
    out = run_script("awr.py", "--env-id", tiny_hopper, "--total-steps", "300", "--eval-every", "300",
                     "--save-every", "200", *CLI_SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "from project stand-in" in out.stdout
    (line,) = [s for s in (out.stderr + out.stdout).splitlines() if s.startswith("step      300 | return")]
    assert "normalized" in line
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run_dir.glob("*.msgpack")} == {"checkpoint_200.msgpack", "final.msgpack"}
    assert list(run_dir.glob("events.out.tfevents.*"))

    again = run_script("awr.py", "--env-id", tiny_hopper, "--eval-only", "--checkpoint",
                       str(run_dir / "final.msgpack"), *CLI_SMALL, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert line in again.stdout  # deterministic policy, same start states: the same line




@pytest.mark.parametrize("args, message", [
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--baseline-actions", "0"], "--baseline-actions must be positive"),
])
def test_bad_values_are_one_clear_line(args, message, minari_store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    said = refusal("awr.py", *args, capsys=capsys)
    assert message in said and "\n" not in said
