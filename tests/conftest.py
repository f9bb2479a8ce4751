"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Pin torch to one thread: results do not depend on the thread count and two parallel
    workers never oversubscribe the 2-core CI machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
