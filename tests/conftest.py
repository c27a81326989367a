import os

import numpy as np
import pytest
import torch

# Two torch threads on a loaded 2-core machine are far slower than one.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # Never write into the user's cache from tests unless a test opts in.
    monkeypatch.setenv("UNTWINE_CACHE", str(tmp_path_factory.getbasetemp() / "untwine-cache"))
