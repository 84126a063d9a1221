import signal

import pytest


@pytest.fixture
def minari_store(tmp_path, monkeypatch):
    """An empty local Minari store, so tests never see (or touch) the user's datasets."""
    store = tmp_path / "minari"
    store.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    return store


@pytest.fixture
def tiny_hopper(minari_store, tmp_path, monkeypatch):
    """A 2000-step hopper-random stand-in in the temporary store, with made-up reference scores."""
    import json

    from benchmarks import make_datasets

    refs = tmp_path / "reference_scores.json"
    refs.write_text(json.dumps({"Hopper-v5": {"random": -20.0, "expert": 3000.0}}))
    monkeypatch.setattr(make_datasets, "REFERENCE_SCORES", refs)
    make_datasets.build_dataset("offrl-standin/hopper/random-v0", num_steps=2000, seed=0)
    return "hopper-random"


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt during the test, as in a terminal, even where pytest was started in
    the background, which starts Python with SIGINT ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
