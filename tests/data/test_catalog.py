"""The dataset catalog (datasets.md §2) and root resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fgir.data import converters, resolve
from fgir.data.catalog import (
    MANIFEST_JSON,
    DatasetSpec,
    cached_manifest_dir,
    dataset_names,
    get_spec,
    read_manifest_info,
    resolve_root,
)
from fgir.data.manifest import Row, read_split, write_split
from fgir.registry import DATASETS

# key: (K, train_val, test, train, val, p, root, image folder)  -- datasets.md §2
MASTER = {
    "cub": (200, 5994, 5794, 4794, 1200, 0.8, "cub/CUB_200_2011", "images"),
    "cars": (196, 8144, 8041, 6442, 1702, 0.8, "cars", "car_ims"),
    "aircraft": (100, 6667, 3333, 5267, 1400, 0.8, "aircraft/fgvc-aircraft-2013b/data", "images"),
    "nabirds": (555, 23929, 24633, 18957, 4972, 0.8, "nabirds/nabirds", "images"),
    "dogs": (120, 12000, 8580, 9600, 2400, 0.8, "dogs", "Images"),
    "flowers": (102, 2040, 6149, 1020, 1020, 0.5, "flowers/flowers-102", "jpg"),
    "pets": (37, 3680, 3669, 2941, 739, 0.8, "pets/oxford-iiit-pet", "images"),
    "food": (101, 75750, 25250, 15150, 60600, 0.2, "food/food-101", "images"),
    "vegfru": (292, 43800, 116931, 35040, 8760, 0.8, "vegfru", "images"),
    "inat17": (5089, 579184, 95986, None, None, 0.8, "inat17", "train_val_images"),
    "dafb": (3263, 368997, 94440, 322947, 46050, 0.8, "daf", "fullMin256"),
    "daf": (3263, 368997, 94440, 322947, 46050, 0.8, "daf", "faces"),
    "moe": (173, 11454, 2943, 9098, 2356, 0.8, "moe", "data"),
    "cotton": (80, 240, 240, 160, 80, 0.8, "cotton", "cotton_square_new"),
    "soylocal": (200, 600, 600, 400, 200, 0.8, "soylocal", "soybean200_square"),
    "soygene": (1110, 12763, 11143, 9562, 3201, 0.8, "soygene", "images"),
    "soyglobal": (1938, 5814, 5814, 3876, 1938, 0.8, "soyglobal", "soybean2000"),
    "soyageing": (198, 4950, 4950, 3960, 990, 0.8, "soyageing", "."),
    **{f"soyageingr{k}": (198, 990, 990, 792, 198, 0.8, "soyageing", ".") for k in (1, 3, 4, 5, 6)},
    "cub100": (100, 2903, 2999, 2315, 588, 0.8, "cub100", "images"),
    "flowers12": (12, 720, 240, 576, 144, 0.8, "flowers12", "."),
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FGIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FGIR_DATA", raising=False)


@pytest.mark.parametrize("name", sorted(MASTER))
def test_spec_matches_master_table(name):
    k, tv, te, tr, va, p, root, folder = MASTER[name]
    spec = get_spec(name)
    assert spec.num_classes == k and spec.val_fraction == p
    assert spec.default_root == root and spec.image_folder == folder
    assert not Path(spec.default_root).is_absolute()
    expected = {s: n for s, n in zip(("train_val", "test", "train", "val"), (tv, te, tr, va), strict=True)
                if n is not None}
    assert spec.counts == expected
    assert spec.converter == "" or spec.converter in converters.CONVERTERS
    if tr is not None and spec.converter not in ("daf",):  # DAF:re keeps its own train/val
        assert tr + va == tv


def test_every_dataset_registered_and_carve_counts_consistent():
    assert set(MASTER) <= set(dataset_names())
    assert "fonts" in dataset_names()
    # train counts follow the floor rule for equal-sized classes (Cotton: 3 per class -> 2 + 1).
    assert get_spec("cotton").counts["train"] == 80 * int(0.8 * 3)
    assert get_spec("soyageingr4").split_suffix == "_R4"
    assert get_spec("soyageingr4").converter_options == {"rounds": (4,)}
    assert get_spec("moe").mean == (0.5, 0.5, 0.5)
    with pytest.raises(KeyError, match="Did you mean"):
        get_spec("cub2")


# --- resolve_root -----------------------------------------------------------------------------
def _csv_root(root: Path, folder: str = "images", splits=("train_val", "test", "train", "val")) -> Path:
    rows = {"train_val": [Row(0, "a.jpg"), Row(1, "b.jpg")], "test": [Row(0, "c.jpg"), Row(1, "d.jpg")],
            "train": [Row(0, "a.jpg")], "val": [Row(1, "b.jpg")]}
    for s in splits:
        write_split(root / f"{s}.csv", rows[s])
    return root


def test_missing_root_error_message():
    with pytest.raises(FileNotFoundError) as e:
        resolve_root("cub")
    msg = str(e.value)
    assert "Dataset 'cub' needs a root: set data.root=... or FGIR_DATA" in msg
    assert "<FGIR_DATA>/cub/CUB_200_2011 with train_val.csv or the official CUB files" in msg
    assert "fgir data prepare" in msg


def test_root_that_does_not_exist(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        resolve_root("cub", tmp_path / "nope")
    monkeypatch.setenv("FGIR_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"from FGIR_DATA.*cub/CUB_200_2011"):
        resolve_root("cub")


def test_root_with_split_csvs_is_used_in_place(tmp_path):
    root = _csv_root(tmp_path / "cars")
    assert resolve_root("cars", root) == (root, root / "car_ims")
    (root / MANIFEST_JSON).write_text(json.dumps({"image_root": "/somewhere/images"}))
    assert resolve_root("cars", str(root)) == (root, Path("/somewhere/images"))


def test_root_from_fgir_data(tmp_path, monkeypatch):
    root = _csv_root(tmp_path / "data" / "pets" / "oxford-iiit-pet")
    monkeypatch.setenv("FGIR_DATA", str(tmp_path / "data"))
    assert resolve_root("pets") == (root, root / "images")


def test_partial_csvs_are_carved_into_the_cache(tmp_path):
    root = tmp_path / "cars"
    tv = [Row(c, f"{c}_{j}.jpg") for c in (1, 0) for j in range(5)]
    write_split(root / "train_val.csv", tv)
    write_split(root / "test.csv", [Row(0, "t0.jpg"), Row(1, "t1.jpg")])
    (root / "car_ims").mkdir()
    for r in tv + [Row(0, "t0.jpg"), Row(1, "t1.jpg")]:
        Image.new("RGB", (4, 4)).save(root / "car_ims" / r.dir)
    mdir, img = resolve_root("cars", root, check_counts=False)
    assert mdir == cached_manifest_dir("cars", root) and mdir.parent == tmp_path / "cache" / "manifests"
    assert img == (root / "car_ims").absolute()
    assert read_split(mdir / "train.csv") == tv[5:9] + tv[0:4]  # class by class, first floor(0.8*5)
    assert read_split(mdir / "val.csv") == [tv[9], tv[4]]
    assert read_manifest_info(mdir)["converter"] == "reference_csvs"


def _cub_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    lines = {"images": [], "image_class_labels": [], "train_test_split": []}
    i = 0
    for c in (1, 2):
        for j in range(5):
            i += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (c * 50, j * 20, 0)).save(root / "images" / rel)
            lines["images"].append(f"{i} {rel}")
            lines["image_class_labels"].append(f"{i} {c}")
            lines["train_test_split"].append(f"{i} {int(j < 3)}")
    for n, ls in lines.items():
        (root / f"{n}.txt").write_text("\n".join(ls) + "\n")
    (root / "classes.txt").write_text("1 001.Bird_1\n2 002.Bird_2\n")
    return root


def test_official_layout_is_prepared_once_into_the_cache(tmp_path, monkeypatch):
    root = _cub_tree(tmp_path / "CUB_200_2011")
    calls = []
    real = resolve.prepare
    monkeypatch.setattr(resolve, "prepare", lambda *a, **k: calls.append(a) or real(*a, **k))
    mdir, img = resolve_root("cub", root, check_counts=False)
    assert mdir.name.startswith("cub-") and img == (root / "images").absolute()
    assert read_manifest_info(mdir)["validated"] is True
    assert len(read_split(mdir / "train_val.csv")) == 6
    assert resolve_root("cub", root, check_counts=False) == (mdir, img)
    assert len(calls) == 1
    resolve_root("cub", root, check_counts=False, refresh=True)
    assert len(calls) == 2
    # the full-size spec refuses the tiny tree, naming split, expected and found counts
    with pytest.raises(ValueError, match="train_val: expected 5994, found 6"):
        resolve_root("cub", root)


def test_root_without_anything_usable(tmp_path):
    (tmp_path / "cub").mkdir()
    with pytest.raises(FileNotFoundError, match="neither the split CSVs nor a layout"):
        resolve_root("cub", tmp_path / "cub")
    (tmp_path / "moe").mkdir()
    with pytest.raises(FileNotFoundError, match="train_val.csv"):
        resolve_root("moe", tmp_path / "moe")


def test_soyageing_round_does_not_pick_the_pooled_csvs(tmp_path):
    root = _csv_root(tmp_path / "soyageing")  # pooled CSVs (tiny stand-ins)
    rows = [Row(c, f"R1/images/{c + 1}_{j}.png") for c in range(2) for j in range(5)]
    test = [Row(c, f"R1/images/{c + 1}_t.png") for c in range(2)]
    write_split(root / "train_val_R1.csv", rows)
    write_split(root / "test_R1.csv", test)
    (root / "R1" / "images").mkdir(parents=True)
    for r in rows + test:
        Image.new("L", (4, 4)).save(root / r.dir)
    mdir, img = resolve_root("soyageingr1", root, check_counts=False)
    assert mdir != root and img == root.absolute() / "."
    assert read_split(mdir / "train_val.csv") == rows
    assert len(read_split(mdir / "train.csv")) == 8 and len(read_split(mdir / "val.csv")) == 2
    assert resolve_root("soyageing", root)[0] == root


def test_builtin_set_is_built_into_its_default_root(tmp_path, monkeypatch):
    built = []

    def build(root):
        built.append(root)
        _csv_root(Path(root))

    spec = DatasetSpec(name="tiny_builtin_test", num_classes=2, default_root="tiny-v1", builtin=build)
    monkeypatch.setitem(DATASETS._items, spec.name, spec)
    mdir, img = resolve_root(spec.name)
    assert mdir == tmp_path / "cache" / "datasets" / "tiny-v1" and img == mdir / "images"
    assert built == [mdir]
    other = tmp_path / "elsewhere"
    assert resolve_root(spec.name, other) == (other, other / "images") and built[-1] == other
