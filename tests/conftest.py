import json
import shutil
import signal

import pytest


@pytest.fixture
def minari_store(tmp_path, monkeypatch):
    """An empty local Minari store, so tests never see (or touch) the user's datasets."""
    store = tmp_path / "minari"
    store.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    return store


TINY_REFERENCE_SCORES = {"Hopper-v5": {"random": -20.0, "expert": 3000.0}}  # made up: only their use is tested


@pytest.fixture(scope="session")
def tiny_hopper_built(tmp_path_factory):
    """A store holding the 2000-step hopper-random stand-in, built once per test session (it takes seconds)."""
    from benchmarks import make_datasets

    store, refs = tmp_path_factory.mktemp("tiny_hopper_store"), tmp_path_factory.mktemp("refs") / "scores.json"
    refs.write_text(json.dumps(TINY_REFERENCE_SCORES))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(store))
        patch.setattr(make_datasets, "REFERENCE_SCORES", refs)
        make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=2000, seed=0)
    return store


@pytest.fixture
def tiny_hopper(minari_store, tiny_hopper_built, tmp_path, monkeypatch):
    """A 2000-step hopper-random stand-in, a fresh copy in the temporary store, with made-up reference scores."""
    from benchmarks import make_datasets

    shutil.copytree(tiny_hopper_built, minari_store, dirs_exist_ok=True)
    refs = tmp_path / "reference_scores.json"
    refs.write_text(json.dumps(TINY_REFERENCE_SCORES))
    monkeypatch.setattr(make_datasets, "REFERENCE_SCORES", refs)
    return "hopper-random"


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt during the test, as in a terminal, even where pytest was started in
    the background, which starts Python with SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
