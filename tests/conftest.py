"""Shared pytest fixtures: every test starts from the same torch RNG state."""
import pytest
import torch


@pytest.fixture(autouse=True)
def seed_torch():
    """Seed torch's global RNG so random inits and inputs repeat across runs and orders."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def single_thread():
    """Run on one intra-op thread: tiny tensors gain nothing from more, and on a busy 2-core machine
    thread contention made gradcheck ~30x slower (9 s instead of 0.3 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
