import json
import socket
import time

import gymnasium as gym
import minari
import numpy as np
import pytest

import tests.counting_env  # noqa: F401  (registers tests/Counting-v0)
from common import datasets
from common.datasets import DatasetError, load_dataset, resolve_name


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


def test_failed_download_also_falls_back(minari_store, monkeypatch):
    make_counting_dataset("offrl-standin/hopper/expert-v0")
    monkeypatch.setattr(datasets, "hub_reachable", lambda: (True, ""))

    def broken(dataset_id):
        raise ValueError(f"Couldn't find any version for dataset {dataset_id}")

    monkeypatch.setattr(minari, "download_dataset", broken)
    data = load_dataset("hopper-expert")
    assert data.dataset_id == "offrl-standin/hopper/expert-v0"
    assert any("download failed" in note for note in data.notes)


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
