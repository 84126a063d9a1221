import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cql
from tests.cli import CLI_SMALL, refusal, run_script
from tests.helpers import assert_trees_differ, assert_trees_equal, random_batch

SMALL = dict(hidden_dims=(32, 32), batch_size=16, log_every=4, total_steps=100, num_sampled_actions=3)


# ---- losses against numpy ---------------------------------------------------------------------

def test_critic_loss_sums_twins_of_mean_td_error():
    q = np.array([[1.0, 2.0], [0.0, 4.0]])  # (twin, batch)
    reward, terminal, next_q = np.array([1.0, 1.0]), np.array([0.0, 1.0]), np.array([2.0, 5.0])
    target = np.array([1.0 + 0.5 * 2.0, 1.0])  # the terminal transition does not bootstrap
    expected = ((q[0] - target) ** 2).mean() + ((q[1] - target) ** 2).mean()
    assert float(cql.critic_loss(q, reward, terminal, next_q, 0.5)) == pytest.approx(expected)


def test_cql_h_gap_is_importance_weighted_logsumexp_minus_data_q():
    rng = np.random.default_rng(0)
    q_sampled, log_density, q_data = rng.normal(size=(2, 6, 4)), rng.normal(size=(6, 4)), rng.normal(size=(2, 4))
    expected = [np.mean([np.log(np.sum(np.exp(q_sampled[i, :, s] - log_density[:, s]))) - q_data[i, s]
                         for s in range(4)]) for i in range(2)]
    np.testing.assert_allclose(cql.cql_h_gap(q_sampled, log_density, q_data), expected, rtol=1e-5)


def test_cql_h_logsumexp_is_at_least_the_max_sampled_q():
    q_sampled = jnp.array([[1.0], [5.0], [-3.0], [4.9]])  # (actions, one state)
    lse = float(cql.cql_h_gap(q_sampled, jnp.zeros((4, 1)), jnp.zeros(1)))
    assert 5.0 <= lse <= 5.0 + np.log(4)


def test_cql_h_gradient_pushes_data_q_up_and_sampled_q_down():
    rng = np.random.default_rng(1)
    q_sampled, log_density, q_data = (jnp.asarray(rng.normal(size=s)) for s in ((6, 4), (6, 4), (4,)))
    g_sampled, g_data = jax.grad(cql.cql_h_gap, argnums=(0, 2))(q_sampled, log_density, q_data)
    np.testing.assert_allclose(g_data, -np.ones(4) / 4, rtol=1e-6)  # minimising the gap raises Q(s, a_data)
    assert (np.asarray(g_sampled) > 0).all()  # ... and lowers Q at every sampled action, in softmax proportion
    np.testing.assert_allclose(g_sampled.sum(0), np.ones(4) / 4, rtol=1e-5)


def test_cql_basic_gap_is_mean_uniform_q_minus_data_q():
    q_uniform, q_data = np.array([[[1.0, 2.0], [3.0, 0.0]]]), np.array([[0.5, -1.0]])  # (twin, action, state)
    np.testing.assert_allclose(cql.cql_basic_gap(q_uniform, q_data), [((2.0 - 0.5) + (1.0 + 1.0)) / 2], rtol=1e-6)
    g_uniform, g_data = jax.grad(lambda u, d: cql.cql_basic_gap(u, d).sum(), argnums=(0, 1))(q_uniform, q_data)
    np.testing.assert_allclose(g_uniform, np.full((1, 2, 2), 0.25))
    np.testing.assert_allclose(g_data, np.full((1, 2), -0.5))


def test_actor_loss_is_entropy_regularised_negative_q():
    log_prob, q = np.array([-1.0, 0.5]), np.array([2.0, 3.0])
    assert float(cql.actor_loss(log_prob, q, 0.2)) == pytest.approx(((0.2 * -1.0 - 2.0) + (0.2 * 0.5 - 3.0)) / 2)


def test_temperature_rises_when_entropy_is_below_target():
    log_prob = jnp.array([1.0, 2.0])  # an entropy of about -1.5, below the target -|A| = -1 for |A| = 1
    grad_alpha, grad_log_prob = jax.grad(cql.temperature_loss, argnums=(0, 1))(jnp.float32(0.0), log_prob, -1.0)
    assert float(grad_alpha) == pytest.approx(-((1.0 - 1.0) + (2.0 - 1.0)) / 2)  # negative: gradient descent raises α
    assert float(jnp.abs(grad_log_prob).sum()) == 0.0


@pytest.mark.parametrize("gap, threshold, direction", [(8.0, 5.0, +1), (2.0, 5.0, -1)])
def test_lagrange_multiplier_grows_while_the_gap_exceeds_the_threshold(gap, threshold, direction):
    log_cql_alpha = jnp.float32(np.log(2.0))
    loss, (grad, grad_gap) = jax.value_and_grad(cql.lagrange_loss, argnums=(0, 1))(log_cql_alpha, gap, threshold)
    assert float(loss) == pytest.approx(-2.0 * (gap - threshold), rel=1e-5)
    assert np.sign(-float(grad)) == direction and float(grad_gap) == 0.0


def test_tanh_gaussian_log_prob_is_the_change_of_variables_and_finite_at_the_bounds():
    mean, log_std, action = np.array([[0.3, -1.0]]), np.array([[-0.5, 0.2]]), np.array([[0.6, -0.95]])
    u, std = np.arctanh(action), np.exp(log_std)
    expected = np.sum(-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi) - np.log(1 - action**2))
    np.testing.assert_allclose(cql.tanh_gaussian_log_prob(mean, log_std, action), [expected], rtol=1e-5)
    at_bounds = cql.tanh_gaussian_log_prob(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([[1.0, -1.0]]))
    assert np.isfinite(at_bounds).all()


# ---- the update -------------------------------------------------------------------------------

@functools.cache
def compiled_cql(**overrides):  # one compilation per configuration, shared by the tests
    args = cql.Args(**{**SMALL, **overrides})
    agent = cql.make_cql(args, obs_dim=3, action_dim=2)
    return args, agent._replace(update=jax.jit(agent.update))


def small_cql(**overrides):
    args, agent = compiled_cql(**overrides)
    return args, agent, random_batch()


def test_actor_and_critic_steps_are_independent():
    _, agent, batch = small_cql(lagrange_threshold=-100.0)  # here α_c is read from the state
    state = agent.init(jax.random.PRNGKey(0))
    after, _ = agent.update(state, batch)
    other_alpha_c, _ = agent.update(state._replace(log_cql_alpha=jnp.float32(2.0)), batch)
    assert_trees_equal(after.actor, other_alpha_c.actor)  # α_c weighs the critics' loss only
    assert_trees_differ(after.critic, other_alpha_c.critic)
    other_alpha, _ = agent.update(state._replace(log_alpha=jnp.float32(2.0)), batch)
    assert_trees_equal(after.critic, other_alpha.critic)  # α weighs the actor's loss only: no entropy in the backup
    assert_trees_differ(after.actor, other_alpha.actor)
    other_actor, _ = agent.update(state._replace(actor=agent.init(jax.random.PRNGKey(1)).actor), batch)
    assert_trees_differ(after.critic, other_actor.critic)  # but π's samples enter the target and the CQL term


def test_warm_start_clones_the_data_then_hands_the_actor_to_the_critic():
    _, agent, batch = small_cql(bc_steps=2, actor_lr=1e-3)
    state = agent.init(jax.random.PRNGKey(0))._replace(log_alpha=jnp.float32(-20.0))  # α ≈ 0: only the BC term
    other_critic = agent.init(jax.random.PRNGKey(1)).critic
    after, _ = agent.update(state, batch)
    assert_trees_equal(after.actor, agent.update(state._replace(critic=other_critic), batch)[0].actor)

    def data_log_likelihood(s):
        return float(cql.tanh_gaussian_log_prob(*cql.TanhGaussianActor(2, (32, 32)).apply(s.actor, batch["obs"]),
                                                batch["action"]).mean())
    assert data_log_likelihood(after) > data_log_likelihood(state)

    second, _ = agent.update(after, batch)
    after_warm_start, _ = agent.update(second, batch)  # the third update: Q drives the actor again
    assert_trees_differ(after_warm_start.actor, agent.update(second._replace(critic=other_critic), batch)[0].actor)


def test_the_multiplier_moves_only_with_a_threshold_and_in_the_right_direction():
    _, fixed, batch = small_cql()
    state = fixed.init(jax.random.PRNGKey(0))
    after, metrics = fixed.update(state, batch)
    assert float(after.log_cql_alpha) == 0.0 and float(metrics["values/cql_alpha"]) == 5.0
    for threshold, direction in ((-100.0, 1), (100.0, -1)):
        _, agent, _ = small_cql(lagrange_threshold=threshold)
        after, metrics = agent.update(state, batch)
        assert np.sign(float(after.log_cql_alpha)) == direction and float(metrics["values/cql_alpha"]) == 1.0


def test_the_conservative_term_lowers_q_off_the_data():
    margin = {}  # Q at uniform actions minus Q at the data's, over the last updates of a short run
    for alpha in (0.0, 5.0):
        _, agent, batch = small_cql(cql_alpha=alpha, log_every=100, critic_lr=3e-3)
        data = {k: jnp.concatenate([v] * 4) for k, v in batch.items()}
        metrics = agent.train_chunk(agent.init(jax.random.PRNGKey(0)), data)[1]
        margin[alpha] = float((metrics["values/q_uniform"] - metrics["values/q"])[-10:].mean())
    assert margin[5.0] < margin[0.0] - 0.3


def test_target_is_a_polyak_average_of_the_new_critic():
    args, agent, batch = small_cql()
    state = agent.init(jax.random.PRNGKey(0))
    state = state._replace(target_critic=jax.tree.map(lambda x: x + 1.0, state.target_critic))
    after, _ = agent.update(state, batch)
    rho = args.polyak
    expected = jax.tree.map(lambda new, old: rho * new + (1 - rho) * old, after.critic, state.target_critic)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), after.target_critic, expected)


def test_policy_is_the_squashed_mean():
    args, agent, _ = small_cql()
    state = agent.init(jax.random.PRNGKey(0))
    obs = jnp.array([[1.0, 0.0, -1.0], [30.0, -20.0, 70.0]])
    mean, _ = cql.TanhGaussianActor(2, args.hidden_dims).apply(state.actor, obs)
    np.testing.assert_allclose(agent.policy(state, obs), np.tanh(mean), rtol=1e-6)


# ---- the command line -------------------------------------------------------------------------


def test_cli_trains_saves_and_evaluates_its_checkpoint(tiny_hopper, tmp_path):
    out = run_script("cql.py", "--env-id", tiny_hopper, "--total-steps", "300", "--eval-every", "300",
                     "--save-every", "200", "--cql-form", "basic", "--lagrange-threshold", "5", *CLI_SMALL,
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "from project stand-in" in out.stdout
    (line,) = [s for s in (out.stderr + out.stdout).splitlines() if s.startswith("step      300 | return")]
    assert "normalized" in line
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run_dir.glob("*.msgpack")} == {"checkpoint_200.msgpack", "final.msgpack"}
    assert list(run_dir.glob("events.out.tfevents.*"))

    again = run_script("cql.py", "--env-id", tiny_hopper, "--eval-only", "--checkpoint",
                       str(run_dir / "final.msgpack"), *CLI_SMALL, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert line in again.stdout  # deterministic policy, same start states: the same line, without the form's flags


@pytest.mark.parametrize("args, message", [
    (["--cql-alpha", "-1"], "--cql-alpha must be >= 0"),
    (["--bc-steps", "-1"], "--bc-steps must be >= 0"),
    (["--num-sampled-actions", "0"], "--num-sampled-actions must be positive"),
    (["--cql-form", "lse"], "invalid choice 'lse' for argument '--cql-form'"),
])
def test_bad_values_are_one_clear_line(args, message, minari_store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    said = refusal("cql.py", *args, capsys=capsys)
    assert message in said and "\n" not in said
