"""Shared pytest fixtures: every test starts from the same torch RNG state."""
import pytest
import torch


@pytest.fixture(autouse=True)
def seed_torch():
    """Seed torch's global RNG so random inits and inputs repeat across runs and orders."""
    torch.manual_seed(0)
    yield
