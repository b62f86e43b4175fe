"""The decoded image cache is never stale and never fatal."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from conftest import _register_tiny, make_tiny_dataset
from PIL import Image

from fgir.data.datasets import ManifestDataset, decoded_cache


@pytest.fixture
def ds(tmp_path):
    _register_tiny()
    root = make_tiny_dataset(tmp_path / "set", per_class=(2, 1, 1))
    return ManifestDataset("tiny", "test", str(root))


def test_replacing_an_image_in_place_rebuilds_the_cache(ds, tmp_path):
    arr1, _ = decoded_cache(ds, 16, cache_dir=str(tmp_path / "c"), progress=False)
    before = np.array(arr1[0])
    Image.new("RGB", (40, 40), (0, 0, 0)).save(ds.path(0))
    st = os.stat(ds.path(0))
    os.utime(ds.path(0), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    arr2, _ = decoded_cache(ds, 16, cache_dir=str(tmp_path / "c"), progress=False)
    assert before.max() > 0 and int(np.array(arr2[0]).max()) == 0


def test_truncated_cache_file_is_rebuilt_with_a_message(ds, tmp_path, capsys):
    arr, _ = decoded_cache(ds, 16, cache_dir=str(tmp_path / "c"), progress=False)
    good = np.array(arr)
    path = next((tmp_path / "c").glob("*.npy"))
    del arr
    path.write_bytes(path.read_bytes()[:200])
    again, _ = decoded_cache(ds, 16, cache_dir=str(tmp_path / "c"), progress=False)
    assert "rebuilding" in capsys.readouterr().out
    np.testing.assert_array_equal(np.array(again), good)


def test_stale_tmp_of_a_dead_process_is_removed(ds, tmp_path):
    decoded_cache(ds, 16, cache_dir=str(tmp_path / "c"), progress=False)
    path = next((tmp_path / "c").glob("*.npy"))
    stale = path.with_name(path.name + ".tmp999999999")
    stale.write_bytes(b"partial")
    decoded_cache(ds, 16, cache_dir=str(tmp_path / "c"), progress=False)
    assert not stale.exists()


def test_full_disk_is_a_clean_error(ds, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(OSError, match="not enough disk space for the decoded image cache"):
        decoded_cache(ds, 16, cache_dir=str(tmp_path / "c"), progress=False)
    assert not list((tmp_path / "c").glob("*.tmp*"))
