"""Shared pytest setup: one torch thread (small recurrent ops are 10-100x slower with more on 2 cores)."""

from collections.abc import Callable
from pathlib import Path

import h5py
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def _hdf5_bytes(path: Path) -> dict[str, bytes]:
    """Every dataset of an HDF5 file as raw bytes, keyed by its path in the file."""
    result: dict[str, bytes] = {}
    with h5py.File(path) as raw:
        raw.visititems(
            lambda name, item: (
                result.update({name: item[...].tobytes()}) if isinstance(item, h5py.Dataset) else None
            )
        )
    return result


@pytest.fixture
def hdf5_bytes() -> Callable[[Path], dict[str, bytes]]:
    """A function reading every dataset of an HDF5 file as raw bytes, to compare files byte for byte."""
    return _hdf5_bytes
