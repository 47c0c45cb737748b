"""
Shared pytest setup: one torch thread (small recurrent ops are 10-100x slower with more on 2 cores), and
SB3's logger folder inside pytest's temporary directory (every ``learn()`` without tensorboard otherwise
leaves an empty ``SB3-<date>`` folder in the system's temporary directory).
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _sb3_logs_in_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3_logs")))
        yield


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
