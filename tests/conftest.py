"""Shared test settings: offline wandb, a non-interactive plot backend, deterministic torch."""

import os
from contextlib import contextmanager

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@contextmanager
def _single_thread():
    """One torch thread inside, the previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread_module():
    """one_thread for a whole module: its module-scoped runs set up before any function-scoped fixture.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread_module")`.
    """
    with _single_thread():
        yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: small ops on a shared, loaded machine run faster than on two competing ones.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    with _single_thread():
        yield
