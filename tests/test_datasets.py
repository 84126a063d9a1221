import json
import socket
import sys
import time

import gymnasium as gym
import minari
import numpy as np
import pytest

import tests.counting_env  # noqa: F401  (registers tests/Counting-v0)
from common import datasets
from common.datasets import DatasetError, load_dataset, resolve_name
from tests.bounded_envs import make_dataset, pendulum_torque


def make_counting_dataset(dataset_id, seeds=(0, 1, 2), refs=(0.0, 10.0)):
    """Episodes of the counting env: seed 0 and 2 terminate after 3 steps, seed 1 is truncated after 5."""
    collector = minari.DataCollector(gym.make("tests/Counting-v0"), record_infos=False)
    for seed in seeds:
        collector.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, _ = collector.step(np.zeros(1, np.float32))
            done = terminated or truncated
    kwargs = {"ref_min_score": refs[0], "ref_max_score": refs[1]} if refs else {}
    with pytest.warns(UserWarning):  # Minari asks for an e-mail address and a code link
        collector.create_dataset(dataset_id, author="tests", description="counting", **kwargs)


# --- names -------------------------------------------------------------------------------------

def test_d4rl_names_map_to_official_and_standin_ids():
    r = resolve_name("hopper-medium")
    assert (r.official_id, r.standin_id, r.note) == ("mujoco/hopper/medium-v0", "offrl-standin/hopper/medium-v0", None)
    r = resolve_name("walker2d-medium-expert")
    assert r.official_id is None  # the hub publishes no medium-expert: go straight to the stand-in
    assert r.standin_id == "offrl-standin/walker2d/medium-expert-v0"


@pytest.mark.parametrize("name", ["hopper-medium-replay", "hopper-medium-replay-v2"])
def test_medium_replay_names_go_to_the_standin(name):
    r = resolve_name(name)
    assert r.official_id is None  # Minari's hub has no replay set for the MuJoCo tasks
    assert r.standin_id == "offrl-standin/hopper/medium-replay-v0"
    assert (r.note is not None) == name.endswith("-v2")


def test_d4rl_version_suffix_is_accepted_with_a_note():
    r = resolve_name("hopper-medium-v2")
    assert r.official_id == "mujoco/hopper/medium-v0"
    assert "hopper-medium-v2" in r.note and "mujoco/hopper/medium-v0" in r.note


def test_minari_ids_pass_through():
    assert resolve_name("mujoco/hopper/expert-v0").official_id == "mujoco/hopper/expert-v0"
    assert resolve_name("mujoco/hopper/expert-v0").standin_id == "offrl-standin/hopper/expert-v0"
    for made_after_nothing in ("mujoco/hopper/medium-v99", "mujoco/hopper/random-v0", "mujoco/pen/medium-v0"):
        assert resolve_name(made_after_nothing).standin_id is None  # stand-ins replace only what they copy
    assert resolve_name("D4RL/pen/human-v2").standin_id is None
    standin = resolve_name("offrl-standin/hopper/random-v0")
    assert standin.official_id is None and standin.standin_id == "offrl-standin/hopper/random-v0"


@pytest.mark.parametrize("name, suggestion", [("hoper-medium", "hopper-medium"), ("walker-expert", "walker2d-expert")])
def test_unknown_name_lists_valid_names_and_suggests(name, suggestion):
    with pytest.raises(DatasetError) as e:
        resolve_name(name)
    assert f"Did you mean '{suggestion}'" in str(e.value)
    assert "halfcheetah-medium-expert" in str(e.value) and "walker2d-medium-replay" in str(e.value)


# --- reading -----------------------------------------------------------------------------------

def test_episodes_are_aligned_and_truncations_are_not_terminals(minari_store):
    make_counting_dataset("tests/counting/data-v0")
    data = load_dataset("tests/counting/data-v0")
    # seed 0: 3 steps, terminated; seed 1: 5 steps, truncated; seed 2: 3 steps, terminated.
    assert len(data.obs) == 11
    for field in ("obs", "action", "reward", "next_obs", "terminal", "episode_returns"):
        assert getattr(data, field).dtype == np.float32, field
    assert data.obs.shape == data.next_obs.shape == (11, 2) and data.action.shape == (11, 1)
    np.testing.assert_array_equal(data.obs[:, 0], [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(data.next_obs[:, 0], data.obs[:, 0] + 1)
    np.testing.assert_array_equal(data.next_obs[:, 1], data.obs[:, 1])  # never crosses an episode boundary
    np.testing.assert_array_equal(data.reward, data.next_obs[:, 0])
    np.testing.assert_array_equal(data.terminal, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(data.episode_returns, [6, 15, 6])
    assert data.env_spec.id == "tests/Counting-v0"
    assert data.source == "local Minari store"


def test_fast_hdf5_reader_gives_what_minari_reads(minari_store, tmp_path):
    make_counting_dataset("tests/counting/data-v0", seeds=range(6))
    dataset = minari.load_dataset("tests/counting/data-v0")
    fast = datasets._episodes_to_arrays(dataset, minari_store / "tests/counting/data-v0")
    assert len(fast["obs"]) > 11
    with_minari = datasets._episodes_to_arrays(dataset, tmp_path / "no hdf5 file here")  # Minari's own reader
    for field in datasets.ARRAYS:
        np.testing.assert_array_equal(fast[field], with_minari[field])


def test_normalized_score_uses_the_datasets_references(minari_store):
    make_counting_dataset("tests/counting/data-v0", refs=(2.0, 12.0))
    data = load_dataset("tests/counting/data-v0")
    np.testing.assert_allclose(data.normalized_score([2.0, 12.0, 7.0, -3.0]), [0.0, 100.0, 50.0, -50.0])


def test_missing_references_fall_back_to_the_projects_own(minari_store, tmp_path, monkeypatch):
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"tests/Counting-v0": {"random": 1.0, "expert": 5.0}}))
    monkeypatch.setattr(datasets, "REFERENCE_SCORES", refs)
    make_counting_dataset("tests/counting/data-v0", refs=None)
    data = load_dataset("tests/counting/data-v0")
    assert (data.ref_min_score, data.ref_max_score) == (1.0, 5.0)
    assert data.normalized_score(3.0) == pytest.approx(50.0)
    assert any("no reference scores" in note for note in data.notes)


def test_no_references_anywhere_gives_raw_returns_not_a_crash(minari_store, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "REFERENCE_SCORES", tmp_path / "absent.json")
    make_counting_dataset("tests/counting/data-v0", refs=None)
    data = load_dataset("tests/counting/data-v0")
    assert data.normalized_score(3.0) is None
    assert any("raw returns" in note for note in data.notes)


@pytest.mark.parametrize("damage", [b"not an hdf5 file", b""])
def test_corrupted_or_empty_file_is_a_clear_error_and_touches_nothing(minari_store, damage):
    make_counting_dataset("tests/counting/good-v0")
    make_counting_dataset("tests/counting/bad-v0")
    bad = minari_store / "tests/counting/bad-v0/data/main_data.hdf5"
    good = minari_store / "tests/counting/good-v0/data/main_data.hdf5"
    good_bytes = good.read_bytes()
    bad.write_bytes(damage)
    with pytest.raises(DatasetError, match="Could not read dataset tests/counting/bad-v0.*corrupted"):
        load_dataset("tests/counting/bad-v0")
    assert bad.read_bytes() == damage  # the user's file is left for them to inspect
    assert good.read_bytes() == good_bytes
    assert len(load_dataset("tests/counting/good-v0").obs) == 11


# --- the hub -----------------------------------------------------------------------------------

def test_hub_check_fails_fast_on_a_closed_port(monkeypatch):
    with socket.socket() as s:  # find a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the README's way to skip the hub: not what is tested here
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.time()
    reachable, why = datasets.hub_reachable()
    assert not reachable and "cannot connect to 127.0.0.1" in why
    assert time.time() - start < 5


def test_offline_falls_back_to_the_standin_within_seconds(minari_store, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    make_counting_dataset("offrl-standin/hopper/medium-v0")

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("the hub must not be contacted when it is unreachable")

    monkeypatch.setattr(datasets.socket, "create_connection", offline)
    monkeypatch.setattr(minari, "download_dataset", no_download)
    start = time.time()
    data = load_dataset("hopper-medium")
    assert time.time() - start < 10
    assert data.dataset_id == "offrl-standin/hopper/medium-v0"
    assert data.source.startswith("project stand-in")
    assert any("NOT the official data" in note and "Name or service" in note for note in data.notes)


HUB = {f"mujoco/hopper/{quality}-v0": {} for quality in ("medium", "expert", "simple")} | {"D4RL/pen/human-v2": {}}


def hub_lists(monkeypatch, datasets_on_hub=HUB):
    """The hub answers, listing `datasets_on_hub` (filtered by prefix, as Minari's listing is)."""
    monkeypatch.setattr(datasets, "hub_reachable", lambda: (True, ""))
    monkeypatch.setattr(minari, "list_remote_datasets", lambda prefix=None, **_: {
        k: v for k, v in datasets_on_hub.items() if k.startswith(prefix or "")})


def test_failed_download_of_a_listed_dataset_falls_back(minari_store, monkeypatch):
    make_counting_dataset("offrl-standin/hopper/expert-v0")
    hub_lists(monkeypatch)

    def broken(dataset_id):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(minari, "download_dataset", broken)
    data = load_dataset("hopper-expert")
    assert data.dataset_id == "offrl-standin/hopper/expert-v0"
    assert any("download failed" in note and "connection reset" in note for note in data.notes)


def no_download(*args, **kwargs):
    raise AssertionError("an id the hub does not list must not be downloaded")


@pytest.mark.parametrize("name, closest", [("mujoco/hopper/medium-v99", "mujoco/hopper/medium-v0"),
                                           ("mujoco/hoper/expert-v0", "mujoco/hopper/expert-v0"),
                                           ("mujoco/hopper/medium-replay-v0", "mujoco/hopper/medium-v0")])
def test_an_id_the_hub_does_not_list_is_an_error_naming_the_closest(name, closest, minari_store, monkeypatch):
    make_counting_dataset("offrl-standin/hopper/medium-v0")  # a stand-in that must not replace the unknown id
    hub_lists(monkeypatch)
    monkeypatch.setattr(minari, "download_dataset", no_download)
    expected = f"Minari's hub has no dataset .*; the closest ids the hub lists: .*{closest}"
    with pytest.raises(DatasetError, match=expected):
        load_dataset(name)


def test_a_project_name_whose_official_id_the_hub_lacks_gets_its_standin(minari_store, monkeypatch):
    make_counting_dataset("offrl-standin/hopper/medium-v0")
    hub_lists(monkeypatch, {k: v for k, v in HUB.items() if "medium" not in k})  # pretend the hub dropped it
    monkeypatch.setattr(minari, "download_dataset", no_download)
    data = load_dataset("hopper-medium")
    assert data.dataset_id == "offrl-standin/hopper/medium-v0"
    assert any("the hub does not list it" in note and "NOT the official data" in note for note in data.notes)


def test_listing_that_fails_counts_as_an_unreachable_hub(minari_store, monkeypatch):
    make_counting_dataset("offrl-standin/hopper/medium-v0")
    monkeypatch.setattr(datasets, "hub_reachable", lambda: (True, ""))

    def dropped(*args, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(minari, "list_remote_datasets", dropped)
    data = load_dataset("hopper-medium")
    assert data.dataset_id == "offrl-standin/hopper/medium-v0"
    assert any("listing the hub's datasets failed" in note for note in data.notes)


@pytest.mark.parametrize("name", ["mujoco/hopper/medium-v99", "mujoco/hopper/random-v0"])
def test_without_the_hub_an_official_id_no_standin_replaces_is_refused(name, minari_store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_counting_dataset("offrl-standin/hopper/medium-v0")
    with pytest.raises(DatasetError) as e:
        load_dataset(name)
    message = str(e.value)
    assert f"{name} is not in the local Minari store and the hub cannot be used (HF_HUB_OFFLINE is set)" in message
    assert "mujoco/hopper/medium-v0" in message  # what does exist, as far as can be known offline
    if name.endswith("random-v0"):
        assert "this project's stand-in of it is --env-id hopper-random" in message


def test_hf_hub_offline_skips_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert datasets.hub_reachable() == (False, "HF_HUB_OFFLINE is set")


def test_official_dataset_without_standin_says_what_to_do(minari_store, monkeypatch):
    monkeypatch.setattr(datasets, "hub_reachable", lambda: (False, "offline"))
    with pytest.raises(DatasetError, match="minari download D4RL/pen/human-v2"):
        load_dataset("D4RL/pen/human-v2")


def test_second_load_comes_from_the_flat_cache_and_a_changed_file_is_reread(minari_store, monkeypatch):
    make_counting_dataset("tests/counting/data-v0")
    first = load_dataset("tests/counting/data-v0")
    assert (minari_store / "tests/counting/data-v0" / datasets.CACHE_FILE).exists()

    def slow_path(*args, **kwargs):
        raise AssertionError("episodes were read again although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(datasets, "_episodes_to_arrays", slow_path)
        cached = load_dataset("tests/counting/data-v0")
    for field in datasets.ARRAYS:
        np.testing.assert_array_equal(getattr(first, field), getattr(cached, field))
        assert getattr(cached, field).dtype == np.float32

    (minari_store / "tests/counting/data-v0/data/main_data.hdf5").write_bytes(b"damaged after caching")
    with pytest.raises(DatasetError, match="corrupted"):
        load_dataset("tests/counting/data-v0")


# --- actions in any Box ------------------------------------------------------------------------

def test_actions_are_mapped_from_the_bounds_onto_unit_range(minari_store):
    make_dataset("tests/pendulum/bounded-v0", "Pendulum-v1", pendulum_torque(2.0))
    make_dataset("tests/pendulum/prescaled-v0", "tests/UnitPendulum-v0", pendulum_torque(1.0))
    bounded, prescaled = load_dataset("tests/pendulum/bounded-v0"), load_dataset("tests/pendulum/prescaled-v0")
    raw = np.concatenate([ep.actions for ep in minari.load_dataset("tests/pendulum/bounded-v0").iterate_episodes()])
    assert np.abs(raw).max() == 2.0 and bounded.action.dtype == np.float32
    np.testing.assert_array_equal(bounded.action, raw / 2)
    np.testing.assert_array_equal(bounded.action, prescaled.action)
    np.testing.assert_array_equal(bounded.obs, prescaled.obs)  # the same pendulum, the same torques
    assert (bounded.action_low.tolist(), bounded.action_high.tolist()) == ([-2.0], [2.0])
    assert (prescaled.action_low.tolist(), prescaled.action_high.tolist()) == ([-1.0], [1.0])


def test_unit_bounds_leave_the_actions_bit_for_bit():
    space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action = np.random.default_rng(0).uniform(-1, 1, (50, 3)).astype(np.float32) ** 3  # many tiny values too
    np.testing.assert_array_equal(datasets.unit_actions("d", action, space), action)


def test_a_discrete_action_space_is_refused(minari_store):
    make_dataset("tests/cartpole/random-v0", "CartPole-v1", lambda rng: int(rng.integers(2)), episodes=1)
    with pytest.raises(DatasetError, match=r"action space Discrete\(2\); these scripts handle only continuous"):
        load_dataset("tests/cartpole/random-v0")


def test_infinite_action_bounds_are_refused(minari_store):
    make_dataset("tests/unbounded/data-v0", "tests/Unbounded-v0", lambda rng: np.ones(1, np.float32), episodes=1)
    with pytest.raises(DatasetError, match="bounds are not finite"):
        load_dataset("tests/unbounded/data-v0")


@pytest.mark.filterwarnings("ignore:Action is not in action space")  # Minari records it all the same
def test_data_actions_outside_the_bounds_are_refused_and_counted(minari_store):
    steps = iter(range(10_000))
    make_dataset("tests/echo/outside-v0", "tests/Echo-v0",  # steps 3 and 7 of the 10 go 10% past the bound
                 lambda rng: np.array([2.2 if next(steps) in (3, 7) else 2.0001], np.float32), episodes=2)
    with pytest.raises(DatasetError, match=r"tests/echo/outside-v0: 2 of its 10 actions lie outside .* \[2.0\]"):
        load_dataset("tests/echo/outside-v0")


@pytest.mark.filterwarnings("ignore:Action is not in action space")  # Minari records it all the same
def test_rounding_past_the_bounds_is_clipped(minari_store):
    make_dataset("tests/echo/rounding-v0", "tests/Echo-v0", lambda rng: np.array([2.0001], np.float32), episodes=1)
    np.testing.assert_array_equal(load_dataset("tests/echo/rounding-v0").action, 1.0)



def test_without_benchmarks_a_missing_standin_is_one_sentence_saying_what_building_it_needs(minari_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "benchmarks.make_datasets", None)  # as in a copy of common/ alone
    with pytest.raises(DatasetError, match=r"^offrl-standin/hopper/random-v0 is not in the local Minari store, and "
                                           r"building it needs this repository's benchmarks/make_datasets.py"):
        load_dataset("hopper-random")
