"""Converters from official layouts to the manifest format, on tiny trees built here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgir.data import converters as cv
from fgir.data.catalog import DatasetSpec, read_manifest_info, resolve_root
from fgir.data.manifest import ManifestError, Row, read_class_table, read_split, write_split
from fgir.registry import DATASETS

SHARED_DATA = Path(os.environ.get("FGIR_SHARED_DATA")
                   or Path(__file__).resolve().parents[2].parent / "shared" / "data")
SPLITS = ("train_val", "test", "train", "val")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FGIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FGIR_DATA", raising=False)


def img(path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (4, 4)).save(path)


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load(out: Path) -> dict[str, list[Row]]:
    return {s: read_split(out / f"{s}.csv") for s in SPLITS}


def tiny_spec(monkeypatch, name="tiny_test_set", **kw) -> DatasetSpec:
    spec = DatasetSpec(name=name, **kw)
    monkeypatch.setitem(DATASETS._items, name, spec)
    return spec


def assert_reference_carve(rows: dict[str, list[Row]], p: float) -> None:
    """datasets.md §4.2 and §4.3, checked independently of carve_train_val."""
    classes = sorted({r.class_id for r in rows["train_val"]})
    train, val = [], []
    for c in classes:
        rc = [r for r in rows["train_val"] if r.class_id == c]
        k = int(p * len(rc) + 1e-9)
        train += rc[:k]
        val += rc[k:]
    assert rows["train"] == train and rows["val"] == val
    assert not set(rows["train"]) & set(rows["val"])
    assert not {r.dir for r in rows["test"]} & {r.dir for r in rows["train_val"]}


# --- CUB ---------------------------------------------------------------------------------------
def cub_tree(root: Path, *, base: int = 1, sep: str = " ", per_class=(5, 6, 4), n_train=(3, 4, 3)) -> Path:
    """Official CUB (base 1, ' ') or the bundled subset's flavour (base 0, ', ')."""
    lines = {"images": [], "image_class_labels": [], "train_test_split": []}
    i = base
    for c, (n, t) in enumerate(zip(per_class, n_train, strict=True)):
        order = list(range(0, n, 2)) + list(range(1, n, 2))
        train_js = set(order[:t])  # interleaved flags, as in official CUB
        for j in range(n):
            rel = f"{c + 1:03d}.Bird_{c}/Bird_{c}_{j:04d}.jpg"
            img(root / "images" / rel)
            flag = int(j in train_js)
            lines["images"].append(f"{i}{sep}{rel}")
            lines["image_class_labels"].append(f"{i}{sep}{c + base}")
            lines["train_test_split"].append(f"{i}{sep}{flag}")
            i += 1
    for name, ls in lines.items():
        write(root / f"{name}.txt", ls)
    write(root / "classes.txt", [f"{c + base}{sep}{c + 1:03d}.Bird_{c}" for c in range(len(per_class))])
    return root


@pytest.mark.parametrize("base,sep", [(1, " "), (0, ", "), (1, ", "), (0, " ")])
def test_cub_bases_and_separators(tmp_path, base, sep):
    src = cub_tree(tmp_path / "CUB", base=base, sep=sep)
    out = cv.convert_cub(src, tmp_path / "out")
    rows = load(out)
    assert read_class_table(out / "classid_classname.csv") == ["001.Bird_0", "002.Bird_1", "003.Bird_2"]
    ids = src.joinpath("images.txt").read_text().splitlines()
    flag_lines = src.joinpath("train_test_split.txt").read_text().splitlines()
    flags = dict(line.replace(",", " ").split() for line in flag_lines)
    expected_tv = []
    for line in ids:
        i, rel = line.replace(",", " ").split()
        if flags[i] == "1":
            expected_tv.append(Row(int(rel[:3]) - 1, rel))  # folder NNN. - 1 = class id, never -2
    assert rows["train_val"] == expected_tv
    assert len(rows["train_val"]) + len(rows["test"]) == 15
    assert {r.class_id for r in rows["test"]} == {0, 1, 2}
    assert_reference_carve(rows, 0.8)
    info = read_manifest_info(out)
    assert info["image_root"] == str((src / "images").absolute()) and Path(info["image_root"]).is_absolute()
    assert info["converter"] == "cub" and info["source"] == str(src.absolute())


def test_cub_image_id_order_not_file_order(tmp_path):
    src = cub_tree(tmp_path / "CUB")
    for n in ("images", "image_class_labels", "train_test_split"):
        lines = (src / f"{n}.txt").read_text().splitlines()
        write(src / f"{n}.txt", lines[::-1])
    rows = load(cv.convert_cub(src, tmp_path / "out"))
    assert [r.dir for r in rows["train_val"]] == sorted(r.dir for r in rows["train_val"])


def test_cub_files_must_list_the_same_ids(tmp_path):
    src = cub_tree(tmp_path / "CUB")
    lines = (src / "train_test_split.txt").read_text().splitlines()
    write(src / "train_test_split.txt", lines[:-1])
    with pytest.raises(ValueError, match=r"different image ids.*missing from train_test_split.txt"):
        cv.convert_cub(src, tmp_path / "out")


def test_cub_bad_flag_and_labels(tmp_path):
    src = cub_tree(tmp_path / "CUB")
    lines = (src / "train_test_split.txt").read_text().splitlines()
    write(src / "train_test_split.txt", [line[:-1] + "2" for line in lines])
    with pytest.raises(ValueError, match="expected 1 \\(train\\) or 0 \\(test\\)"):
        cv.convert_cub(src, tmp_path / "out")
    src = cub_tree(tmp_path / "CUB2")
    write(src / "classes.txt", ["1 a", "2 b"])  # label 3 is not in classes.txt
    with pytest.raises(ValueError, match="not in classes.txt"):
        cv.convert_cub(src, tmp_path / "out")


def test_nabirds_rank_mapping(tmp_path):
    src = tmp_path / "nabirds"
    labels = [817, 295, 1010, 295, 817, 1010, 295, 817, 1010, 817]
    write(src / "images.txt", [f"id-{i:02d} {lab:04d}/img{i:02d}.jpg" for i, lab in enumerate(labels)])
    write(src / "image_class_labels.txt", [f"id-{i:02d} {lab}" for i, lab in enumerate(labels)])
    write(src / "train_test_split.txt", [f"id-{i:02d} {int(i < 6)}" for i in range(len(labels))])
    write(src / "classes.txt",
          ["0 Birds", "295 Common Eider (Adult male)", "817 Some, bird", "1010 Last bird"])
    for i, lab in enumerate(labels):
        img(src / "images" / f"{lab:04d}/img{i:02d}.jpg")
    out = cv.convert_nabirds(src, tmp_path / "out", val_fraction=0.5)
    rows = load(out)
    assert read_class_table(out / "classid_classname.csv") == [
        "Common Eider (Adult male)", "Some, bird", "Last bird"]
    assert rows["train_val"][:3] == [
        Row(1, "0817/img00.jpg"), Row(0, "0295/img01.jpg"), Row(2, "1010/img02.jpg")]
    assert len(rows["test"]) == 4


# --- class folders ---------------------------------------------------------------------------
def test_class_folders(tmp_path):
    src = tmp_path / "flowers"
    for split, n in (("train", 5), ("test", 2)):
        for c in ("daisy", "bluebell", "iris"):
            for j in range(n):
                img(src / split / c / f"image_{10 - j:04d}.jpg")
    (src / "train" / "daisy" / "notes.txt").write_text("x")
    (src / "README.txt").write_text("x")
    out = cv.convert_class_folders(src, tmp_path / "out")
    rows = load(out)
    assert read_class_table(out / "classid_classname.csv") == ["bluebell", "daisy", "iris"]
    assert rows["train_val"][:2] == [
        Row(0, "train/bluebell/image_0006.jpg"), Row(0, "train/bluebell/image_0007.jpg")]
    assert len(rows["train_val"]) == 15 and len(rows["test"]) == 6
    assert [len([r for r in rows["train"] if r.class_id == c]) for c in range(3)] == [4, 4, 4]
    assert_reference_carve(rows, 0.8)
    assert read_manifest_info(out)["image_root"] == str(src.absolute())
    img(src / "test" / "tulip" / "image_0001.jpg")
    with pytest.raises(ValueError, match=r"classes \['tulip'\] have test images but no training images"):
        cv.convert_class_folders(src, tmp_path / "out2")


# --- reference CSVs ----------------------------------------------------------------------------
def test_reference_csvs_headerless_and_malformed_class_table(tmp_path):
    src = tmp_path / "ref"
    src.mkdir()
    (src / "train_val.csv").write_text("".join(f"{c},{c}_{j}.jpg\n" for c in (1, 0) for j in range(5)))
    (src / "test.csv").write_text("class_id,dir\n0,t0.jpg\n1,t1.jpg\n")
    (src / "classid_classname.csv").write_text(
        "class_id,class_name\n0,AM General Hummer SUV 2000',,,\n1,Audi',,,\n")
    out = cv.convert_reference_csvs(src, tmp_path / "out", val_fraction=0.8, image_folder="car_ims")
    rows = load(out)
    assert len(rows["train_val"]) == 10 and rows["train_val"][0] == Row(1, "1_0.jpg")
    assert read_class_table(out / "classid_classname.csv") == ["AM General Hummer SUV 2000", "Audi"]
    assert (out / "classid_classname.csv").read_text().splitlines()[1] == "0,AM General Hummer SUV 2000"
    assert_reference_carve(rows, 0.8)
    assert read_manifest_info(out)["image_root"] == str((src / "car_ims").absolute())


def test_reference_csvs_keep_published_train_val_and_round_names(tmp_path):
    src = tmp_path / "soyageing"
    tv = [Row(c, f"R3/images/{c + 1}_{j}.png") for c in range(2) for j in range(5)]
    write_split(src / "train_val_R3.csv", tv)
    write_split(src / "test_R3.csv", [Row(0, "R3/images/t0.png"), Row(1, "R3/images/t1.png")])
    write_split(src / "train_R3.csv.csv", [tv[0], tv[5]])  # published, deliberately not the carve
    write_split(src / "val_R3.csv.csv", tv[1:5] + tv[6:])
    out = cv.convert_reference_csvs(src, tmp_path / "out", suffix="_R3")
    rows = load(out)
    assert rows["train"] == [tv[0], tv[5]] and not read_manifest_info(out)["carved"]
    assert read_class_table(out / "classid_classname.csv") == ["1", "2"]  # synthesised, 1-based labels


# --- other official layouts -------------------------------------------------------------------
def test_aircraft(tmp_path):
    src = tmp_path / "data"
    names = ["A340-500", "707-320", "DC-10", "Cessna 172"]
    tv = [f"{100 + i} {names[i % 4]}" for i in range(12)]
    te = [f"{200 + i} {names[i % 4]}" for i in range(4)]
    write(src / "images_variant_trainval.txt", tv)
    write(src / "images_variant_test.txt", te)
    write(src / "variants.txt", names)
    out = cv.convert_aircraft(src, tmp_path / "out")
    assert read_class_table(out / "classid_classname.csv") == ["707-320", "A340-500", "Cessna 172", "DC-10"]
    rows = load(out)
    assert rows["train_val"][:2] == [Row(1, "100.jpg"), Row(0, "101.jpg")]
    assert_reference_carve(rows, 0.8)


def test_pets(tmp_path):
    src = tmp_path / "oxford-iiit-pet"
    breeds = ["Abyssinian", "american_bulldog", "Bengal"]
    tv = [f"{b}_{j} {c + 1} {1 + c % 2} {c + 1}" for j in range(1, 5) for c, b in enumerate(breeds)]
    write(src / "annotations" / "trainval.txt", ["#Image CLASS-ID SPECIES BREED ID", *tv])
    write(src / "annotations" / "test.txt", [f"{b}_9 {c + 1} 1 1" for c, b in enumerate(breeds)])
    out = cv.convert_pets(src, tmp_path / "out")
    assert read_class_table(out / "classid_classname.csv") == breeds
    rows = load(out)
    assert rows["train_val"][:2] == [Row(0, "Abyssinian_1.jpg"), Row(1, "american_bulldog_1.jpg")]
    assert rows["test"][2] == Row(2, "Bengal_9.jpg")


@pytest.mark.parametrize("fmt", ["json", "txt"])
def test_food101(tmp_path, fmt):
    src = tmp_path / "food-101"
    train = {"churros": [f"churros/{i}" for i in range(5)], "apple_pie": [f"apple_pie/{i}" for i in range(5)]}
    test = {"churros": ["churros/99"], "apple_pie": ["apple_pie/99"]}
    for split, d in (("train", train), ("test", test)):
        if fmt == "json":
            write(src / "meta" / f"{split}.json", [json.dumps(d)])
        else:
            write(src / "meta" / f"{split}.txt", [e for es in d.values() for e in es])
    write(src / "meta" / "classes.txt", ["churros", "apple_pie"])
    out = cv.convert_food101(src, tmp_path / "out")
    assert read_class_table(out / "classid_classname.csv") == ["apple_pie", "churros"]
    rows = load(out)
    assert rows["train_val"][0] == Row(1, "churros/0.jpg")
    assert len(rows["train"]) == 2 and len(rows["val"]) == 8  # p = 0.2: train is the small part
    assert_reference_carve(rows, 0.2)


def test_vegfru(tmp_path):
    src = tmp_path / "vegfru"
    lists = {"train": 3, "val": 2, "test": 2}
    tops = [("veg200_images", "Chinese_artichoke"), ("fru92_images", "apple")]
    for split, n in lists.items():
        write(src / "vegfru_list" / f"vegfru_{split}.txt",
              [f"{top}/{name}/{split}_{j}.jpg {c}" for j in range(n) for c, (top, name) in enumerate(tops)])
    out = cv.convert_vegfru(src, tmp_path / "out")
    rows = load(out)
    assert read_class_table(out / "classid_classname.csv") == ["Chinese_artichoke", "apple"]
    assert rows["train_val"][0] == Row(0, "Chinese_artichoke/train_0.jpg") and len(rows["train_val"]) == 10
    assert rows["train_val"][-1] == Row(1, "apple/val_1.jpg")


def test_inat17(tmp_path):
    src = tmp_path / "inat17"
    cats = [{"id": 0, "name": "Marmota flaviventris"}, {"id": 1, "name": "Other species"}]
    for split, n in (("train", 5), ("val", 1)):
        images = [{"id": f"{split}{c}{j}", "file_name": f"train_val_images/Mammalia/sp{c}/{split}{j}.jpg"}
                  for c in (0, 1) for j in range(n)]
        anns = [{"image_id": im["id"], "category_id": int(im["id"][len(split)])} for im in images]
        coco = {"images": images, "annotations": anns, "categories": cats}
        write(src / f"{split}2017.json", [json.dumps(coco)])
    out = cv.convert_inat17(src, tmp_path / "out")
    rows = load(out)
    assert rows["train_val"][0] == Row(0, "Mammalia/sp0/train0.jpg") and len(rows["test"]) == 2
    assert read_class_table(out / "classid_classname.csv")[0] == "Marmota flaviventris"


def test_daf_labels_keep_their_train_val(tmp_path):
    src = tmp_path / "daf"
    lab = {"train": [(c, f"0{c:03d}/{c}{j}.jpg") for c in range(2) for j in range(4)],
           "val": [(c, f"0{c:03d}/{c}v.jpg") for c in range(2)],
           "test": [(c, f"0{c:03d}/{c}t.jpg") for c in range(2)]}
    for s, rs in lab.items():  # DAF:re label files have no header
        write(src / "labels" / f"{s}.csv", [f"{c},{d}" for c, d in rs])
    out = cv.convert_daf(src, tmp_path / "out", image_folder="fullMin256")
    rows = load(out)
    assert rows["train"] == [Row(*r) for r in lab["train"]] and rows["val"] == [Row(*r) for r in lab["val"]]
    assert rows["train_val"] == rows["train"] + rows["val"]
    assert read_manifest_info(out)["image_root"].endswith("daf/fullMin256")


def test_ufgir_file_name_rule(tmp_path):
    src = tmp_path / "cotton"
    for lab in (1, 2):
        for idx, split in ((1, "train"), (2, "test"), (3, "train"), (4, "test"), (5, "train"), (6, "test")):
            img(src / "cotton_square_new" / f"{lab}_{idx}_{split}.png", "P")
    (src / "cotton_square_new" / "readme.txt").write_text("x")
    out = cv.convert_ufgir(src, tmp_path / "out", image_folder="cotton_square_new")
    rows = load(out)
    assert rows["train_val"][:3] == [
        Row(0, "1_1_train.png"), Row(0, "1_3_train.png"), Row(0, "1_5_train.png")]
    assert rows["test"][-1] == Row(1, "2_6_test.png")
    assert [len(rows["train"]), len(rows["val"])] == [4, 2]  # 2 train / 1 val per class
    assert read_class_table(out / "classid_classname.csv") == ["1", "2"]
    img(src / "cotton_square_new" / "leaf.png")
    with pytest.raises(ValueError, match="not named <label>_<index>_<train|test>"):
        cv.convert_ufgir(src, tmp_path / "out2", image_folder="cotton_square_new")


def test_soygene(tmp_path):
    src = tmp_path / "soygene"
    write(src / "anno" / "train.txt", [f"{c}_{j}.jpg {c}" for c in (1, 2) for j in range(5)])
    write(src / "anno" / "test.txt", [f"{c}_t.jpg {c}" for c in (2, 1)])
    rows = load(cv.convert_soygene(src, tmp_path / "out"))
    assert rows["train_val"][0] == Row(0, "1_0.jpg")
    assert rows["test"] == [Row(1, "2_t.jpg"), Row(0, "1_t.jpg")]


def test_soyageing_val_is_the_last_round(tmp_path):
    src = tmp_path / "soyageing"
    rounds = (1, 3, 4, 5, 6)
    for r in rounds:
        for s in ("train", "test"):
            write(src / f"R{r}" / "anno" / f"{s}.txt",
                  [f"yd{c}_R{r}_{j}_{s}.png {c}" for c in (1, 2) for j in range(5)])
    rows = load(cv.convert_soyageing(src, tmp_path / "out"))
    assert len(rows["train_val"]) == 50 and rows["train_val"][0] == Row(0, "R1/images/yd1_R1_0_train.png")
    assert {r.dir.split("/")[0] for r in rows["val"]} == {"R6"}
    assert "R6" not in {r.dir.split("/")[0] for r in rows["train"]}
    one = load(cv.convert_soyageing(src, tmp_path / "r3", rounds=(3,)))
    assert {r.dir.split("/")[0] for r in one["train_val"]} == {"R3"} and len(one["val"]) == 2


# --- MATLAB layouts: logic tested with loadmat's squeeze_me=True output shapes ----------------
def _records(**fields):
    n = len(next(iter(fields.values())))
    a = np.empty(n, dtype=[(k, object) for k in fields])
    for k, v in fields.items():
        a[k] = v
    return a


def test_mat_layouts_with_a_stub_loadmat(tmp_path, monkeypatch):
    mats = {
        "cars_annos.mat": {
            "annotations": _records(relative_im_path=[f"car_ims/{i:06d}.jpg" for i in range(1, 9)],
                                    **{"class": [np.array(1 + i % 2) for i in range(8)]},
                                    test=[np.array(int(i >= 6)) for i in range(8)]),
            "class_names": np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012"], dtype=object)},
        "train_list.mat": {
            "file_list": np.array([f"n0{c}-Breed_{c}/n0{c}_{j}.jpg" for c in (1, 2) for j in range(5)],
                                  dtype=object),
            "labels": np.array([1] * 5 + [2] * 5)},
        "test_list.mat": {
            "file_list": np.array(["n01-Breed_1/n01_9.jpg", "n02-Breed_2/n02_9.jpg"], dtype=object),
            "labels": np.array([1, 2])},
        "imagelabels.mat": {"labels": np.array([1, 2, 1, 2, 1, 2, 1, 2], dtype=np.uint8)},
        "setid.mat": {"trnid": np.array([1, 2]), "valid": np.array([4, 3]), "tstid": np.array([5, 6, 7, 8])},
    }
    for name in mats:
        (tmp_path / name).write_bytes(b"MATLAB stub")
    monkeypatch.setattr(cv.mat, "_loadmat", lambda p: mats[p.name])
    cars = load(cv.convert_cars(tmp_path, tmp_path / "cars"))
    assert cars["train_val"][:2] == [Row(0, "000001.jpg"), Row(1, "000002.jpg")] and len(cars["test"]) == 2
    assert read_class_table(tmp_path / "cars" / "classid_classname.csv")[1] == "Acura RL Sedan 2012"
    dogs_out = cv.convert_dogs(tmp_path, tmp_path / "dogs")
    dogs = load(dogs_out)
    assert dogs["train_val"][0] == Row(0, "n01-Breed_1/n01_0.jpg") and len(dogs["train"]) == 8
    assert read_class_table(dogs_out / "classid_classname.csv") == ["Breed_1", "Breed_2"]
    fl = load(cv.convert_flowers102(tmp_path, tmp_path / "fl"))
    assert fl["train_val"] == [Row(0, "image_00001.jpg"), Row(1, "image_00002.jpg"),
                               Row(1, "image_00004.jpg"), Row(0, "image_00003.jpg")]
    # p = 0.5 reproduces the official split: trnid -> train, valid -> val
    assert fl["train"] == [Row(0, "image_00001.jpg"), Row(1, "image_00002.jpg")]
    assert fl["val"] == [Row(0, "image_00003.jpg"), Row(1, "image_00004.jpg")]


def test_mat_layout_without_scipy_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "imagelabels.mat").write_bytes(b"x")
    (tmp_path / "setid.mat").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ValueError, match=r"imagelabels.mat needs SciPy.*pip install scipy"):
        cv.convert_flowers102(tmp_path, tmp_path / "out")


# --- prepare: detection, counts, invariants ---------------------------------------------------
def test_prepare_checks_counts_naming_split_expected_found(tmp_path, monkeypatch):
    src = cub_tree(tmp_path / "CUB")
    with pytest.raises(ValueError) as e:
        cv.prepare("cub", src, tmp_path / "out")
    msg = str(e.value)
    assert "classes: expected 200, found 3" in msg and "train_val: expected 5994, found 10" in msg
    assert "test: expected 5794, found 5" in msg and "check_counts=False" in msg
    assert not read_manifest_info(tmp_path / "out").get("validated")
    out = cv.prepare("cub", src, tmp_path / "out", check_counts=False)
    assert read_manifest_info(out)["validated"] and read_manifest_info(out)["dataset"] == "cub"
    # default out_dir: <cache>/manifests/<name>
    tiny_spec(monkeypatch, num_classes=3, converter="cub", counts={"train_val": 10, "test": 5, "val": 2})
    with pytest.raises(ValueError, match="val: expected 2, found 3"):
        cv.prepare("tiny_test_set", src)
    tiny_spec(monkeypatch, num_classes=3, converter="cub",
              counts={"train_val": 10, "test": 5, "train": 7, "val": 3})
    assert cv.prepare("tiny_test_set", src) == tmp_path / "cache" / "manifests" / "tiny_test_set"


def test_prepare_strict_invariants(tmp_path, monkeypatch):
    src = tmp_path / "ref"
    tv = [Row(0, f"a{j}.jpg") for j in range(5)] + [Row(1, "b0.jpg")]  # class 1: floor(0.8) = 0 train rows
    write_split(src / "train_val.csv", tv)
    write_split(src / "test.csv", [Row(0, "a0.jpg"), Row(1, "t1.jpg")])  # a0 leaks into test
    for r in tv + [Row(1, "t1.jpg")]:
        img(src / "images" / r.dir)
    tiny_spec(monkeypatch, num_classes=2, image_folder="images")
    with pytest.raises(ValueError) as e:
        cv.prepare("tiny_test_set", src, tmp_path / "out")
    assert "1 test image(s) are also in train_val" in str(e.value)
    assert "class(es) have no row in train" in str(e.value) and "strict=False" in str(e.value)
    with pytest.warns(UserWarning, match="also in train_val"):
        cv.prepare("tiny_test_set", src, tmp_path / "out", strict=False)
    (src / "images" / "a3.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 of 7 listed images are missing under .*images"):
        cv.prepare("tiny_test_set", src, tmp_path / "out")


def test_validate_detects_broken_train_val(tmp_path, monkeypatch):
    spec = tiny_spec(monkeypatch, num_classes=1)
    rows = [Row(0, f"{j}.jpg") for j in range(5)]
    write_split(tmp_path / "train_val.csv", rows)
    write_split(tmp_path / "test.csv", [Row(0, "t.jpg")])
    write_split(tmp_path / "train.csv", rows[:4])
    write_split(tmp_path / "val.csv", rows[3:4])
    with pytest.raises(ManifestError, match=r"train and val share 1 row.*train ∪ val differs"):
        cv.validate_manifest(tmp_path, spec, check_files=False)


def test_prepare_without_source_or_converter(tmp_path):
    (tmp_path / "moe").mkdir()
    with pytest.raises(FileNotFoundError, match="no converter for 'moe'"):
        cv.prepare("moe", tmp_path / "moe")
    (tmp_path / "cub").mkdir()
    with pytest.raises(FileNotFoundError, match="the official CUB files"):
        cv.prepare("cub", tmp_path / "cub")


def test_every_catalog_converter_is_registered():
    from fgir.data.catalog import dataset_names, get_spec

    for name in dataset_names():
        conv = get_spec(name).converter
        assert conv == "" or conv in cv.CONVERTERS, name


# --- the bundled sets ---------------------------------------------------------------------------
needs_shared = pytest.mark.skipif(not all((SHARED_DATA / s).is_dir() for s in ("cub100", "flowers12")),
                                  reason=f"bundled data not found at {SHARED_DATA} (set FGIR_SHARED_DATA)")


@pytest.mark.data
@needs_shared
def test_prepare_bundled_cub100(tmp_path, monkeypatch):
    out = cv.prepare("cub100", SHARED_DATA / "cub100", tmp_path / "cub100")
    rows = load(out)
    assert [len(rows[s]) for s in SPLITS] == [2903, 2999, 2315, 588]
    names = read_class_table(out / "classid_classname.csv")
    assert len(names) == 100
    assert names[:3] == ["Black_footed_Albatross", "Groove_billed_Ani", "Parakeet_Auklet"]
    assert rows["train_val"][0] == Row(0, "Black_footed_Albatross/0000.jpg")  # 0-based: nothing subtracted
    assert all(r.dir.split("/")[0] == names[r.class_id] for s in SPLITS for r in rows[s])
    assert_reference_carve(rows, 0.8)
    assert read_manifest_info(out)["image_root"] == str((SHARED_DATA / "cub100" / "images").absolute())
    monkeypatch.setenv("FGIR_DATA", str(SHARED_DATA))
    mdir, image_root = resolve_root("cub100")
    assert image_root == (SHARED_DATA / "cub100" / "images").absolute()
    assert load(mdir) == rows


@pytest.mark.data
@needs_shared
def test_prepare_bundled_flowers12(tmp_path):
    out = cv.prepare("flowers12", SHARED_DATA / "flowers12", tmp_path / "flowers12")
    rows = load(out)
    assert [len(rows[s]) for s in SPLITS] == [720, 240, 576, 144]
    assert len(read_class_table(out / "classid_classname.csv")) == 12
    assert rows["train_val"][0].dir.startswith("train/bluebell/") and rows["test"][0].dir.startswith("test/")
    assert_reference_carve(rows, 0.8)
