"""`fgir data check`: exact and near duplicates across splits, and data.exclude."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fgir.cli.main import main
from fgir.data.check import check_dataset
from fgir.data.datasets import ManifestDataset


def _photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((64, 64), Image.BICUBIC)


@pytest.fixture
def leaky(tmp_path):
    """Split tree: test/a/copy.jpg is train/a/0.jpg re-encoded at another quality and size,
    test/b/same.png is byte-identical to train/b/0.png; everything else distinct."""
    root = tmp_path / "set"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
    for c, off in (("a", 0), ("b", 100)):
        for i in range(4):
            _photo(off + i).save(root / "train" / c / f"{i}.png")
        _photo(off + 50).save(root / "test" / c / "x.png")
    buf = io.BytesIO()
    _photo(0).resize((56, 56)).save(buf, "JPEG", quality=80)
    (root / "test" / "a" / "copy.jpg").write_bytes(buf.getvalue())
    (root / "test" / "b" / "same.png").write_bytes((root / "train" / "b" / "0.png").read_bytes())
    return root


def test_finds_exact_and_near_copies_across_splits(leaky):
    res = check_dataset("folder", str(leaky))
    assert res["test_with_copy_in_train"] == ["test/a/copy.jpg", "test/b/same.png"]
    kinds = {(p.kind, p.path_a, p.path_b) for p in res["pairs"]}
    assert ("exact", "train/b/0.png", "test/b/same.png") in kinds
    assert any(k == "near" and "test/a/copy.jpg" in (a, b) for k, a, b in kinds)
    assert len(res["pairs"]) == 2


def test_exclude_file_removes_flagged_images_from_the_split(leaky, tmp_path, capsys):
    excl = tmp_path / "excl.txt"
    assert main(["data", "check", "folder", "--root", str(leaky), "--exclude", str(excl)]) == 0
    assert "test images with a copy in a training split: 2" in capsys.readouterr().out
    full = ManifestDataset("folder", "test", str(leaky))
    kept = ManifestDataset("folder", "test", str(leaky), exclude=str(excl))
    assert len(full) - len(kept) == 2 and kept.excluded == 2
    assert not {r.dir for r in kept.rows} & {"test/a/copy.jpg", "test/b/same.png"}


def test_missing_exclude_file_is_a_clear_error(leaky, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.exclude=.*not found"):
        ManifestDataset("folder", "test", str(leaky), exclude=str(tmp_path / "nope.txt"))


@pytest.mark.data
def test_flowers12_test_images_copied_in_train(shared_data):
    res = check_dataset("flowers12", str(shared_data / "flowers12"))
    assert len(res["test_with_copy_in_train"]) == 23  # as its README lists
    assert res["by_kind"] == {"exact train_val-train_val": 1, "near test-test": 1,
                              "near test-train_val": 23, "near train_val-train_val": 35}
