
import json
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import iql
from tests.cli import CLI_SMALL, refusal, run_script
from tests.helpers import assert_trees_equal, random_batch

SMALL = dict(hidden_dims=(32, 32), batch_size=16, log_every=5, total_steps=100)


# ---- losses against numpy ---------------------------------------------------------------------

def test_expectile_half_is_half_the_squared_error():
    diff = np.array([-2.0, -0.5, 0.0, 0.3, 1.5])
    np.testing.assert_allclose(iql.expectile_loss(diff, 0.5), 0.5 * diff**2, rtol=1e-6)


def test_expectile_weighs_underestimates_by_tau():
    diff = np.array([-2.0, 1.0, 3.0])  # target - estimate: positive means V is below the target
    expected = np.array([0.1 * 4.0, 0.9 * 1.0, 0.9 * 9.0])
    np.testing.assert_allclose(iql.expectile_loss(diff, 0.9), expected, rtol=1e-6)


def test_value_loss_is_the_mean_expectile_of_q_minus_v():
    v, q = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    assert float(iql.value_loss(v, q, 0.7)) == pytest.approx((0.7 * 1.0 + 0 + 0.3 * 4.0) / 3)


def test_critic_loss_sums_twins_of_mean_td_error():
    q = np.array([[1.0, 2.0], [0.0, 4.0]])  # (twin, batch)
    reward, terminal, next_v = np.array([1.0, 1.0]), np.array([0.0, 1.0]), np.array([2.0, 5.0])
    target = np.array([1.0 + 0.5 * 2.0, 1.0])  # the terminal transition does not bootstrap
    expected = ((q[0] - target) ** 2).mean() + ((q[1] - target) ** 2).mean()
    assert float(iql.critic_loss(q, reward, terminal, next_v, 0.5)) == pytest.approx(expected)


def test_awr_weights_are_exponentiated_and_clipped():
    adv = np.array([-10.0, 0.0, 0.5, 10.0])
    w = np.asarray(iql.awr_weights(adv, 3.0, 100.0))
    np.testing.assert_allclose(w, [np.exp(-30.0), 1.0, np.exp(1.5), 100.0], rtol=1e-5)
    assert (w >= 0).all()


def test_awr_actor_loss_is_weighted_log_likelihood_without_gradient_into_the_weights():
    log_prob, adv = jnp.array([-1.0, -2.0]), jnp.array([0.0, 1.0])
    expected = -(1.0 * -1.0 + np.exp(1.0) * -2.0) / 2
    assert float(iql.awr_actor_loss(log_prob, adv, 1.0, 100.0)) == pytest.approx(expected, rel=1e-6)
    assert float(jax.grad(iql.awr_actor_loss, argnums=1)(log_prob, adv, 1.0, 100.0).sum()) == 0.0


def test_ddpg_bc_lambda_carries_no_gradient():
    q, pi, a = jnp.array([2.0, -4.0]), jnp.array([[0.5], [0.0]]), jnp.array([[0.0], [0.0]])
    lam = 2.5 / 3.0
    assert float(iql.ddpg_bc_actor_loss(q, pi, a, 2.5)) == pytest.approx((-lam * 2 + 0.25 + lam * 4) / 2)
    np.testing.assert_allclose(jax.grad(iql.ddpg_bc_actor_loss)(q, pi, a, 2.5), [-lam / 2, -lam / 2], rtol=1e-6)


# ---- the update -------------------------------------------------------------------------------

def small_iql(**overrides):
    args = iql.Args(**{**SMALL, **overrides})
    agent = iql.make_iql(args, obs_dim=3, action_dim=2)
    return args, agent, random_batch()


def test_critic_and_value_never_depend_on_the_actor():
    _, agent, batch = small_iql()
    state = agent.init(jax.random.PRNGKey(0))
    other_actor = agent.init(jax.random.PRNGKey(1)).actor
    after, _ = agent.update(state, batch)
    after_other, _ = agent.update(state._replace(actor=other_actor), batch)
    for field in ("critic", "target_critic", "value"):
        assert_trees_equal(getattr(after, field), getattr(after_other, field))
    assert not np.array_equal(after.actor["params"]["MLP_0"]["Dense_0"]["kernel"],
                              after_other.actor["params"]["MLP_0"]["Dense_0"]["kernel"])


def test_actor_loss_does_not_move_the_critics():
    _, awr, batch = small_iql(actor_loss="awr")
    _, ddpg_bc, _ = small_iql(actor_loss="ddpg_bc")  # this one differentiates through Q(s, mu(s))
    state = awr.init(jax.random.PRNGKey(0))
    a, _ = awr.update(state, batch)
    b, _ = ddpg_bc.update(state, batch)
    for field in ("critic", "target_critic", "value"):
        assert_trees_equal(getattr(a, field), getattr(b, field))


def test_value_moves_by_its_own_loss_alone():
    args, agent, batch = small_iql()
    state = agent.init(jax.random.PRNGKey(0))
    after, _ = agent.update(state, batch)
    target_q = iql.TwinCritic(args.hidden_dims).apply(state.target_critic, batch["obs"], batch["action"]).min(0)
    value_net = iql.ValueNet(args.hidden_dims)
    grads = jax.grad(lambda p: iql.value_loss(value_net.apply(p, batch["obs"]), target_q, args.expectile))(state.value)
    import optax

    updates, _ = optax.adam(args.learning_rate).update(grads, state.value_opt)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-7), optax.apply_updates(state.value, updates),
                 after.value)


def test_target_is_a_polyak_average_of_the_new_critic():
    args, agent, batch = small_iql(polyak=0.25)
    state = agent.init(jax.random.PRNGKey(0))
    state = state._replace(target_critic=jax.tree.map(lambda x: x + 1.0, state.target_critic))
    after, _ = agent.update(state, batch)
    expected = jax.tree.map(lambda new, old: 0.25 * new + 0.75 * old, after.critic, state.target_critic)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), after.target_critic, expected)


# ---- the command line -------------------------------------------------------------------------


def eval_line(printed: str) -> str:
    return next(line for line in printed.splitlines() if line.startswith("step "))


def test_cli_trains_saves_and_evaluates_its_checkpoint(tiny_hopper, tmp_path):
    out = run_script("iql.py", "--env-id", tiny_hopper, "--total-steps", "300", "--eval-every", "300",
                     "--save-every", "200", *CLI_SMALL, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "from project stand-in" in out.stdout
    assert "step      300 | return" in out.stderr + out.stdout and "normalized" in out.stderr + out.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {p.name for p in run_dir.glob("*.msgpack")} == {"checkpoint_200.msgpack", "final.msgpack"}
    assert list(run_dir.glob("events.out.tfevents.*"))
    evaluations = (run_dir / "evaluations.csv").read_text().splitlines()
    assert evaluations[0].startswith("step,seed,wall_s,return_std,charts/episodic_return,charts/normalized_score,")
    assert len(evaluations) == 2 and evaluations[1].startswith("300,0,")
    assert json.loads((run_dir / "dataset.json").read_text())["dataset_id"] == "offrl-standin/hopper/random-v0"

    again = run_script("iql.py", "--env-id", tiny_hopper, "--eval-only", "--checkpoint",
                       str(run_dir / "final.msgpack"), *CLI_SMALL, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "step      300 | return" in again.stdout and "normalized" in again.stdout
    other = run_script("iql.py", "--eval-only", "--checkpoint", str(run_dir / "final.msgpack"), "--hidden-dims", "64",
                       "64", "--eval-episodes", "2", cwd=tmp_path)  # its networks are rebuilt from its own flags
    assert other.returncode == 0, other.stderr
    assert (f"note: {run_dir / 'final.msgpack'} is evaluated with the flags it was trained with: --hidden-dims 32 32 "
            f"(not 64 64)" in other.stdout.splitlines())
    assert eval_line(again.stdout) == eval_line(other.stdout)


@pytest.mark.parametrize("args, message", [
    (["--expectile", "1.0"], "--expectile must be in [0.5, 1)"),
    (["--beta", "-1"], "--beta must be >= 0"),
])
def test_bad_values_are_one_clear_line(args, message, minari_store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    said = refusal("iql.py", *args, capsys=capsys)
    assert message in said and "\n" not in said


@pytest.mark.parametrize("args, flag", [(["--bc-alpha", "1", "5"], "--bc-alpha"),
                                        (["--actor-loss", "ddpg_bc", "--beta", "1", "10"], "--beta")])
def test_sweeping_the_other_actors_strength_is_refused(args, flag, minari_store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    said = refusal("iql.py", *args, capsys=capsys)
    assert said.startswith(f"error: {flag} does not enter --actor-loss ") and "same policy once per value" in said
