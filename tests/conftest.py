"""Shared pytest setup: one torch thread (small recurrent ops are 10-100x slower with more on 2 cores)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)
