"""The bundled real images (../shared/data) load through the catalog, the cache and the loader."""

import pytest
import torch

from fgir.data.datasets import ManifestDataset
from fgir.data.loader import ArrayLoader
from fgir.data.transforms import BatchTransform

pytestmark = pytest.mark.data


def test_cub100_splits_follow_the_flag_and_the_carve_rule(shared_data):
    root = str(shared_data / "cub100")
    sizes = {s: len(ManifestDataset("cub100", s, root)) for s in ("train_val", "test", "train", "val")}
    assert sizes == {"train_val": 2903, "test": 2999, "train": 2315, "val": 588}
    test = ManifestDataset("cub100", "test", root)
    assert test.num_classes == 100 and test.class_names[0] == "Black_footed_Albatross"


def test_cub100_val_batches_decode_to_normalised_tensors(shared_data, tmp_path):
    ds = ManifestDataset("cub100", "val", str(shared_data / "cub100"))
    loader = ArrayLoader(ds, BatchTransform(64, train=True, auto_augment="rand-m9-n2"), batch_size=32,
                         stored=73, shuffle=True, drop_last=True, cache_dir=str(tmp_path), progress=False)
    batch = next(iter(loader))
    assert batch["image"].shape == (32, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert -3.0 < batch["image"].mean().item() < 3.0
    assert len(loader) == 588 // 32


def test_flowers12_class_folders(shared_data):
    root = str(shared_data / "flowers12")
    train = ManifestDataset("flowers12", "train_val", root)
    test = ManifestDataset("flowers12", "test", root)
    assert (len(train), len(test), train.num_classes) == (720, 240, 12)
    assert set(train.class_names) >= {"bluebell", "windflower"}
