import pytest


@pytest.fixture
def minari_store(tmp_path, monkeypatch):
    """An empty local Minari store, so tests never see (or touch) the user's datasets."""
    store = tmp_path / "minari"
    store.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    return store
