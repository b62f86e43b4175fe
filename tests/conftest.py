"""Shared test fixtures: an isolated fgir cache, seeding, and the ../shared/data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

SHARED_DATA = Path(os.environ.get("FGIR_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own cache folder (datasets, decoded arrays, manifests)."""
    old = os.environ.get("FGIR_CACHE")
    os.environ["FGIR_CACHE"] = str(tmp_path_factory.mktemp("fgir-cache"))
    yield
    if old is None:
        os.environ.pop("FGIR_CACHE", None)
    else:
        os.environ["FGIR_CACHE"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# Tiny models gain nothing from intra-op threads, and spinning threads collapse under contention.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (CUB-100, Flowers-12); tests using it carry the `data` marker."""
    if not (SHARED_DATA / "cub100" / "images.txt").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FGIR_SHARED_DATA); CI has it.")
    return SHARED_DATA


TINY_CLASSES = ["red_disc", "green_square", "blue_bar"]


def make_tiny_dataset(root: Path, per_class=(6, 2, 3), size: int = 40, seed: int = 0) -> Path:
    """A 3-class colour/shape set in the manifest format (train/val/test CSVs + class table)."""
    import numpy as np
    from PIL import Image, ImageDraw

    from fgir.data.manifest import Row, write_class_table, write_split

    rng = np.random.default_rng(seed)
    rows: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]
    for c, name in enumerate(TINY_CLASSES):
        for split, n in zip(("train", "val", "test"), per_class):
            for i in range(n):
                arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img = Image.fromarray(arr)
                d = ImageDraw.Draw(img)
                x0, y0 = rng.integers(2, size // 3, 2)
                col = tuple(int(v) for v in np.clip(np.array(colours[c]) + rng.integers(-30, 30, 3), 0, 255))
                if c == 0:
                    d.ellipse([x0, y0, x0 + size // 2, y0 + size // 2], fill=col)
                elif c == 1:
                    d.rectangle([x0, y0, x0 + size // 2, y0 + size // 2], fill=col)
                else:
                    d.rectangle([x0, y0, x0 + size // 2, y0 + size // 6], fill=col)
                rel = f"{name}/{split}_{i:03d}.png"
                (root / "images" / name).mkdir(parents=True, exist_ok=True)
                img.save(root / "images" / rel)
                rows[split].append(Row(c, rel))
    for split, r in rows.items():
        write_split(root / f"{split}.csv", r)
    write_split(root / "train_val.csv", rows["train"] + rows["val"])
    write_class_table(root / "classid_classname.csv", TINY_CLASSES)
    return root


def _register_tiny() -> None:
    from fgir.data.catalog import DatasetSpec, register_dataset
    from fgir.registry import DATASETS

    if "tiny" not in DATASETS:
        register_dataset(DatasetSpec(name="tiny", num_classes=3, image_folder="images",
                                     description="3-class synthetic set for tests"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    _register_tiny()
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def tiny_cfg(root: Path, out: Path, *extra: str):
    """A seconds-long training config on the tiny set."""
    from fgir.config import load_config

    base = ["data.name=tiny", f"data.root={root}", "data.img_size=32", "data.resize_ratio=1.0",
            "model.name=test_resnet", "optim.batch_size=6", "optim.epochs=2", "optim.warmup_epochs=0",
            "optim.lr=0.01", f"run.output_dir={out}", "run.progress=false", "run.name=t"]
    return load_config(overrides=base + list(extra))


class TinyNet(nn.Module):
    """Smallest backbone with the contract CAL and TGDA need: forward_features -> B x C x h x w."""

    def __init__(self, num_classes: int = 0, width: int = 8, pretrained_cfg: dict | None = None):
        super().__init__()
        self.num_features, self.num_classes = width, num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=4, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.fc = nn.Linear(width, num_classes) if num_classes else nn.Identity()
        if pretrained_cfg is not None:
            self.pretrained_cfg = pretrained_cfg

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x):
        return self.features(x)

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))
