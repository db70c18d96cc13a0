from __future__ import annotations

from pathlib import Path

import pytest

from gtnpipe.data import Dataset, load_dataset

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS / "data" / "tiny.toml"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's ~/.cache/gtnpipe."""
    monkeypatch.setenv("GTNPIPE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def fmnist_small() -> Dataset:
    """A small slice of the real Fashion-MNIST."""
    return load_dataset(val_size=256, train_subset=512, test_subset=256)
