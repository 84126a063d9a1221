import functools
import json

import minari
import numpy as np
import pytest

from benchmarks import make_datasets
from common import datasets
from common.datasets import DatasetError, load_dataset

REFS = {"Hopper-v5": {"random": -20.0, "expert": 3000.0}}


@pytest.fixture
def refs(tmp_path, monkeypatch):
    path = tmp_path / "reference_scores.json"
    path.write_text(json.dumps(REFS))
    monkeypatch.setattr(make_datasets, "REFERENCE_SCORES", path)
    monkeypatch.setattr(datasets, "REFERENCE_SCORES", path)
    return path


def arrays(dataset_id):
    data = load_dataset(dataset_id)
    return [data.obs, data.action, data.reward, data.next_obs, data.terminal]


def test_random_standin_is_reproducible_and_labelled(minari_store, refs):
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=300, seed=3)
    first = arrays("offrl-standin/hopper/random-v0")
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=300, seed=3, force=True)
    for a, b in zip(first, arrays("offrl-standin/hopper/random-v0")):
        np.testing.assert_array_equal(a, b)
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=300, seed=4, force=True)
    assert not np.array_equal(first[1], arrays("offrl-standin/hopper/random-v0")[1])

    dataset = minari.load_dataset("offrl-standin/hopper/random-v0")
    meta = dataset.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-20.0, 3000.0)
    assert "Stand-in" in meta["description"] and "uniformly" in meta["description"]
    assert dataset.total_steps == 300
    assert dataset.recover_environment(eval_env=True).spec.id == "Hopper-v5"


def test_existing_dataset_is_kept_unless_forced(minari_store, refs):
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=200, seed=0)
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=400, seed=0)
    assert minari.load_dataset("offrl-standin/hopper/random-v0").total_steps == 200


def test_loader_builds_a_missing_standin_on_demand(minari_store, refs, monkeypatch):
    monkeypatch.setattr(make_datasets, "build_dataset", functools.partial(make_datasets.build_dataset, num_steps=250))
    data = load_dataset("hopper-random")
    assert data.dataset_id == "offrl-standin/hopper/random-v0" and len(data.obs) == 250
    assert data.normalized_score(-20.0) == pytest.approx(0.0)


def test_interrupted_build_leaves_nothing_behind(minari_store, refs, monkeypatch):
    def interrupted(*args, **kwargs):
        (minari_store / "offrl-standin/hopper/random-v0").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(make_datasets, "_collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=100)
    assert not (minari_store / "offrl-standin/hopper/random-v0").exists()


def test_missing_behaviour_policy_is_a_clear_error(minari_store, refs, monkeypatch, tmp_path):
    monkeypatch.setattr(make_datasets, "BEHAVIOR_DIR", tmp_path / "nothing")
    with pytest.raises(DatasetError, match="train_behavior --env hopper"):
        make_datasets.build_dataset("offrl-standin/hopper/medium-v0", num_steps=100)


def test_cli_rejects_bad_input(minari_store, refs):
    with pytest.raises(SystemExit, match="--num-steps must be positive"):
        make_datasets.main(make_datasets.Args(names=("hopper-random",), num_steps=0))
    with pytest.raises(SystemExit, match="Did you mean 'hopper-random'"):
        make_datasets.main(make_datasets.Args(names=("hoper-random",), num_steps=10))


def test_summary_tabulates_every_standin(minari_store, refs, tmp_path, monkeypatch):
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=300, seed=0)
    monkeypatch.setattr(make_datasets, "SUMMARY", tmp_path / "datasets.md")
    make_datasets.write_summary()
    data = load_dataset("offrl-standin/hopper/random-v0")
    (row,) = [line for line in (tmp_path / "datasets.md").read_text().splitlines() if "offrl-standin" in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["offrl-standin/hopper/random-v0", str(len(data.episode_returns)), "300",
                         f"{data.episode_returns.mean():.1f}"]
    assert cells[6] == f"{data.normalized_score(data.episode_returns).mean():.1f}"
    assert cells[7].endswith("MB") and cells[8].endswith("MB")  # first load, then a load from the cache
