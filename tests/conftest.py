"""Most test set-up lives in shared/pytest_plugin.py (loaded via pyproject.toml's addopts) so that it
applies to the notebooks in the chapter folders too; this file holds fixtures that only tests/ use."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster than two, and immune to a busy machine's contention.
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
