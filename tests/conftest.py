"""Shared test settings: offline wandb, a non-interactive plot backend, deterministic torch."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from inference import single_thread  # noqa: E402  (one torch thread inside a with-block)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_thread_module():
    """one_thread for a whole module: its module-scoped runs set up before any function-scoped fixture.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread_module")`.
    """
    with single_thread():
        yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: small ops on a shared, loaded machine run faster than on two competing ones.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    with single_thread():
        yield
