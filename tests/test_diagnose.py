"""benchmarks/diagnose.py: refuses what it cannot read in one line, measures actions against the data's, and
reads a critic's value against the returns that followed (its replay is run in test_many_seeds and test_td3_bc)."""

import jax
import numpy as np
import pytest

import tests.bounded_envs  # noqa: F401  (registers tests/Echo-v0)
from benchmarks import diagnose
from common.checkpoints import save_checkpoint, settings, trained_args


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="error: checkpoint .*nothing.msgpack does not exist"):
        diagnose.main(diagnose.Args("iql", tmp_path / "nothing.msgpack"))


def test_a_checkpoint_whose_flags_are_text_is_one_clear_line(tmp_path):
    save_checkpoint(tmp_path / "old.msgpack", {}, {"algorithm": "iql", "args": {"seed": "0", "hidden_dims": "(32, 32)"}})
    with pytest.raises(SystemExit, match=r"^error: .*old.msgpack records its flags as text \(it was written before "
                                         r"checkpoints kept their types\), so its networks cannot be rebuilt from it"):
        diagnose.main(diagnose.Args("iql", tmp_path / "old.msgpack"))


def test_the_checkpoints_flags_rebuild_the_scripts_args():
    import td3_bc

    args = td3_bc.Args(env_id="hopper-random", seed=4, num_seeds=2, hidden_dims=(32, 16), variant="sac_bc",
                       policy_delay=3, checkpoint=None)
    assert trained_args(td3_bc.Args, {"args": settings(args)}) == args
    assert trained_args(td3_bc.Args, {"args": {"seed": "4", "hidden_dims": "(32, 16)"}}) is None  # flags as text


def test_unknown_algorithm_is_refused(tmp_path):
    expected = r"error: unknown algorithm sac; choose from \['iql', 'td3_bc', 'awr', 'cql'\]"
    with pytest.raises(SystemExit, match=expected):
        diagnose.main(diagnose.Args("sac", tmp_path / "x.msgpack"))


def test_action_gap_is_the_rms_difference_from_the_data_actions():
    action = np.array([[0.5, -0.5], [1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]], dtype=np.float32)
    assert diagnose.action_gap(np.zeros((4, 2)), action) == pytest.approx(np.sqrt(3.5 / 8))
    assert diagnose.action_gap(action, action) == 0.0


def test_data_sample_keeps_each_state_with_its_action():
    class Data:
        obs = np.arange(8, dtype=np.float32).reshape(4, 2)
        action = np.arange(4, dtype=np.float32)[:, None]

    obs, action = diagnose.data_sample(Data, num_states=3)
    assert len(obs) == 3 and len(set(action[:, 0])) == 3
    np.testing.assert_array_equal(obs[:, 0] // 2, action[:, 0])
    obs, action = diagnose.data_sample(Data)  # fewer than asked: all of them
    assert sorted(action[:, 0]) == [0, 1, 2, 3]


def test_critic_preference_compares_q_at_the_policy_action_with_q_at_the_data_action():
    obs = np.zeros((4, 1), np.float32)
    action = np.array([[0.0], [0.5], [-0.5], [1.0]], np.float32)

    def q(obs, action):  # best at action 0.5
        return -((action[:, 0] - 0.5) ** 2)

    gain, share = diagnose.critic_preference(q, obs, np.full((4, 1), 0.5), action)
    assert gain == pytest.approx((0.25 + 0 + 1 + 0.25) / 4) and share == 0.75  # a tie is not higher
    gain, share = diagnose.critic_preference(q, obs, np.full((4, 1), -1.0), action)
    assert gain < 0 and share == 0.0


def test_returns_to_go_are_discounted_and_drop_the_unknown_tail_of_a_cut_episode():
    rewards = np.array([1.0, 1.0, 1.0])
    np.testing.assert_allclose(diagnose.returns_to_go(rewards, 0.5, "terminated"), [1.75, 1.5, 1.0])
    np.testing.assert_allclose(diagnose.returns_to_go(rewards, 0.5, "time limit", horizon=1), [1.75, 1.5])
    assert len(diagnose.returns_to_go(rewards, 0.5, "time limit", horizon=5)) == 0


def test_policy_q_reads_the_critic_as_it_was_trained():
    from cql import TrainState as CQLState
    from td3_bc import TrainState

    critic = diagnose.TwinCritic((8,))
    obs, action = np.array([[1.0, 3.0], [5.0, -1.0]], np.float32), np.array([[0.2], [-0.4]], np.float32)
    params = critic.init(jax.random.PRNGKey(0), obs, action)
    mean, std = np.array([2.0, 1.0], np.float32), np.array([4.0, 0.5], np.float32)
    state = TrainState(**dict.fromkeys(TrainState._fields))._replace(critic=params, obs_mean=mean, obs_std=std)
    twins = np.asarray(critic.apply(params, (obs - mean) / std, action))  # TD3+BC's critic saw normalized states
    np.testing.assert_allclose(diagnose.policy_q(state, (8,))(obs, action), twins.min(0), rtol=1e-6)
    cql_state = CQLState(**dict.fromkeys(CQLState._fields))._replace(critic=params)
    twins = np.asarray(critic.apply(params, obs, action))  # CQL's saw raw ones
    np.testing.assert_allclose(diagnose.policy_q(cql_state, (8,))(obs, action), twins.min(0), rtol=1e-6)


def test_episodes_map_the_policys_actions_onto_the_bounds_as_evaluation_does():
    _, rewards, ending = diagnose.episode(lambda obs: np.ones((1, 1), np.float32), "tests/Echo-v0", seed=0)
    np.testing.assert_array_equal(rewards, [2.0] * 5)  # tests/Echo-v0 pays the action it receives, in [-2, 2]
    assert ending == "time limit"
    _, rewards, _ = diagnose.episode(lambda obs: np.ones((1, 1), np.float32), "tests/Echo-v0", 0, rescale_actions=False)
    np.testing.assert_array_equal(rewards, [1.0] * 5)  # a checkpoint from before acted unscaled


def test_tanh_gaussian_std_reads_the_actor_as_it_was_trained():
    from cql import TrainState as CQLState
    from td3_bc import TrainState

    actor = diagnose.TanhGaussianActor(1, (8,))
    obs = np.array([[1.0, 3.0], [5.0, -1.0]], np.float32)
    params = actor.init(jax.random.PRNGKey(0), obs)
    mean, std = np.array([2.0, 1.0], np.float32), np.array([4.0, 0.5], np.float32)
    state = TrainState(**dict.fromkeys(TrainState._fields))._replace(actor=params, obs_mean=mean, obs_std=std)
    expected = np.exp(actor.apply(params, (obs - mean) / std)[1])  # SAC+BC's actor saw normalized states
    np.testing.assert_allclose(diagnose.tanh_gaussian_std(state, (8,), 1)(obs), expected, rtol=1e-6)
    cql_state = CQLState(**dict.fromkeys(CQLState._fields))._replace(actor=params)
    expected = np.exp(actor.apply(params, obs)[1])  # CQL's saw raw ones
    np.testing.assert_allclose(diagnose.tanh_gaussian_std(cql_state, (8,), 1)(obs), expected, rtol=1e-6)
    zeroed = jax.tree.map(np.zeros_like, params)  # log_std at the middle of its range, (−5 + 2) / 2
    np.testing.assert_allclose(diagnose.tanh_gaussian_std(cql_state._replace(actor=zeroed), (8,), 1)(obs),
                               np.exp(-1.5), rtol=1e-6)


def test_tanh_gaussian_sampler_draws_afresh_from_the_actors_gaussian():
    from td3_bc import TrainState

    actor = diagnose.TanhGaussianActor(2, (8,))
    obs = np.ones((4000, 3), np.float32)
    zeroed = jax.tree.map(np.zeros_like, actor.init(jax.random.PRNGKey(0), obs))  # mean 0, σ = exp(−1.5)
    state = TrainState(**dict.fromkeys(TrainState._fields))._replace(
        actor=zeroed, obs_mean=np.zeros(3, np.float32), obs_std=np.ones(3, np.float32))
    draw = diagnose.tanh_gaussian_sampler(state, (8,), 2, seed=0)
    first, second = np.asarray(draw(obs)), np.asarray(draw(obs))
    assert first.shape == (4000, 2) and not np.allclose(first, second)  # a new draw each step
    u = np.arctanh(first)
    assert abs(u.mean()) < 0.02 and u.std() == pytest.approx(np.exp(-1.5), rel=0.05)
    np.testing.assert_array_equal(np.asarray(diagnose.tanh_gaussian_sampler(state, (8,), 2, seed=0)(obs)), first)
