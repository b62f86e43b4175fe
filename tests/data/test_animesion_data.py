"""DAF:re and moeImouto converters (spec animesion.md §2, §11 items 1-8) on trees built here."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fgir.cli.main import main
from fgir.data import converters as cv
from fgir.data.catalog import get_spec, read_manifest_info, versioned_name
from fgir.data.converters.daf import FACES85, dafre_split_counts, split_dafre
from fgir.data.datasets import ImageReadError, ManifestDataset, decoded_cache
from fgir.data.manifest import Row, read_class_table, read_split

# A long-tailed per-class size vector (images per class -> number of classes) whose DAF:re split
# gives exactly the spec's totals: 3,263 classes, 463,437 images, 322,947 / 46,050 / 94,440, and
# the spec's per-class extremes (val 1..1,068, test 5..2,137; n = 10,683 is the largest class).
DAFRE_PROFILE = {20: 1370, 64: 1790, 1299: 83, 10683: 20}
DAFRE_TOTALS = {"train": 322947, "val": 46050, "test": 94440}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FGIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FGIR_DATA", raising=False)


def img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (200, 10, 10)).save(path)


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def bucket(danbooru_id: int) -> str:
    return f"0{danbooru_id % 1000:03d}"


@pytest.mark.parametrize(("n", "expected"), [(20, (14, 1, 5)), (25, (17, 3, 5)), (30, (21, 2, 7)),
                                              (100, (70, 10, 20))])
def test_dafre_split_counts_follow_the_float_rule(n, expected):
    assert dafre_split_counts(n) == expected


def test_split_dafre_ids_by_danbooru_id_and_file_order():
    # id 900 (22 images) comes first in the file, id 7 (20 images) later; id 3 has 19 and is dropped.
    rows = [(900, f"a{j}.jpg") for j in range(22)] + [(3, f"c{j}.jpg") for j in range(19)]
    rows += [(7, f"b{j}.jpg") for j in range(20)]
    rows.insert(5, rows.pop())  # the last image of id 7 sits among id 900's rows in the file
    out, kept, report = split_dafre(rows)
    assert kept == [7, 900]
    b = [d for i, d in rows if i == 7]  # id 7 in file order
    assert [r.dir for r in out["train"] if r.class_id == 0] == b[:14]
    assert [r.dir for r in out["val"] if r.class_id == 0] == b[14:15]
    assert [r.dir for r in out["test"] if r.class_id == 0] == b[15:]
    assert [len([r for r in out[s] if r.class_id == 1]) for s in ("train", "val", "test")] == [15, 2, 5]
    assert report["dropped_classes"] == 1 and report["dropped_rows"] == 19


@pytest.fixture(scope="module")
def faces85_rows() -> list[tuple[int, str]]:
    """The rows of a danbooru2018_faces_85.csv with the spec's class-size profile plus small classes
    that the filter drops; the ids are not in file order."""
    sizes = [n for n, c in DAFRE_PROFILE.items() for _ in range(c)]
    ids = [10_000 + 37 * ((c * 1871) % len(sizes)) for c in range(len(sizes))]  # a permutation of the ids
    rows = []
    for c, (did, n) in enumerate(zip(ids, sizes, strict=True)):
        rows += [(did, f"{bucket(did)}/{did}{j:05d}.jpg") for j in range(n)]
        if c % 1000 == 0:  # a class under the threshold
            rows += [(did + 1, f"{bucket(did + 1)}/{did + 1}{j:05d}.jpg") for j in range(19)]
    return rows


@pytest.fixture(scope="module")
def dafre_split(faces85_rows):
    return split_dafre(faces85_rows)


def _per_class(rows: list[Row]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in rows:
        out[r.class_id] = out.get(r.class_id, 0) + 1
    return out


def test_dafre_rule_gives_every_class_in_every_split_with_the_spec_extremes(dafre_split):
    out, kept, _ = dafre_split
    assert len(kept) == 3263 and {s: len(rs) for s, rs in out.items()} == DAFRE_TOTALS
    val, test, train = (_per_class(out[s]) for s in ("val", "test", "train"))
    assert len(val) == len(test) == len(train) == 3263
    assert (min(val.values()), max(val.values())) == (1, 1068)
    assert (min(test.values()), max(test.values())) == (5, 2137)


@pytest.mark.slow  # 463,437 rows through the converter and the manifest checks
def test_dafre_from_faces85_reproduces_the_spec_counts(faces85_rows, tmp_path):
    write(tmp_path / FACES85, [f"{i},{d}" for i, d in faces85_rows])
    info = read_manifest_info(cv.prepare("daf", tmp_path, tmp_path / "m", check_files=False))
    assert info["num_classes"] == 3263 and info["dafre_source"] == FACES85
    assert {s: info["counts"][s] for s in DAFRE_TOTALS} == DAFRE_TOTALS
    assert info["counts"]["train_val"] == 368997 and sum(DAFRE_TOTALS.values()) == 463437
    assert "kept 463437 images of 3263 classes with >= 20 images (dropped 76 images of 4" in info["report"][0]


@pytest.mark.slow  # 463,437 rows through the converter and the manifest checks
def test_dafre_label_files_counted_without_images(dafre_split, tmp_path):
    # The published layout: header-less labels/{train,val,test}.csv and classid_classname.csv.
    src = tmp_path / "dafre"
    for s, rows in dafre_split[0].items():
        lines = [f"{r.class_id},{r.dir}" for r in rows]
        if s == "val":
            lines[0] = "0,0933/194933.jpg"
        write(src / "labels" / f"{s}.csv", lines)
    names = ["morrigan_aensland", "uchiha_sasuke"] + [f"c{i}" for i in range(2, 3263)]
    write(src / "labels" / "classid_classname.csv", [f"{i},{n}" for i, n in enumerate(names)])
    assert main(["data", "prepare", "dafre", "--root", str(src), "--out", str(tmp_path / "m"),
                 "--no-verify-images"]) == 0
    m = tmp_path / "m"
    assert read_split(m / "val.csv")[0] == Row(0, "0933/194933.jpg")
    assert read_class_table(m / "classid_classname.csv")[:2] == ["morrigan_aensland", "uchiha_sasuke"]
    info = read_manifest_info(m)
    assert info["counts"] == {"train_val": 368997, "test": 94440, "train": 322947, "val": 46050}
    assert info["dataset"] == "daf" and info["image_root"].endswith("dafre/faces") and not info["checked_files"]


def _tiny_dafre(root: Path, n_classes: int = 2, n: int = 20, images: bool = True) -> None:
    rows = []
    for c in range(n_classes):
        did = 100 + c
        rows += [(did, f"{bucket(did)}/{did}{j:03d}.jpg") for j in range(n)]
    write(root / FACES85, [f"{i},{d}" for i, d in rows])
    if images:
        for _, d in rows:
            img(root / "fullMin256" / d)


def test_dafre_version_full_resolves_under_fullMin256(tmp_path, capsys):
    _tiny_dafre(tmp_path / "dafre")
    assert main(["data", "prepare", "dafre", "--version", "full", "--root", str(tmp_path / "dafre"),
                 "--no-check-counts"]) == 0
    out = capsys.readouterr().out
    assert "'dafb' (dafre --version full)" in out and "kept 40 images of 2 classes" in out
    ds = ManifestDataset("dafb", "test", str(tmp_path / "dafre"))
    assert ds.path(0) == tmp_path / "dafre" / "fullMin256" / "0100" / "100015.jpg"
    assert len(ds) == 10 and ds.num_classes == 2


def test_versioned_name_refuses_unknown_and_contradicting_versions():
    assert versioned_name("dafre") == "daf" and versioned_name("dafre", "full") == "dafb"
    with pytest.raises(ValueError, match="not a version of 'dafre'; expected one of faces, full"):
        versioned_name("dafre", "fullMin256")
    with pytest.raises(ValueError, match="contradicts 'daf'"):
        versioned_name("daf", "full")
    with pytest.raises(ValueError, match="applies to dafre only"):
        versioned_name("cub", "full")


def test_dafre_missing_images_are_one_error_with_the_count(tmp_path, capsys):
    _tiny_dafre(tmp_path / "dafre")
    for j in (3, 4):
        (tmp_path / "dafre" / "fullMin256" / "0100" / f"100{j:03d}.jpg").unlink()
    assert main(["data", "prepare", "dafre", "--version", "full", "--root", str(tmp_path / "dafre"),
                 "--no-check-counts"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of 40 listed images are missing under" in err[0]


def test_dafre_duplicate_label_rows_name_both_lines(tmp_path, capsys):
    src = tmp_path / "dafre"
    write(src / "labels" / "train.csv", ["0,0001/1.jpg", "0,0001/2.jpg", "1,0002/3.jpg"])
    write(src / "labels" / "val.csv", ["0,0001/4.jpg", "1,0002/5.jpg"])
    write(src / "labels" / "test.csv", ["0,0001/6.jpg", "1,0001/2.jpg"])
    assert main(["data", "prepare", "daf", "--root", str(src), "--no-check-counts", "--no-verify-images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "test.csv:2: '0001/2.jpg' is already listed at" in err[0] and "train.csv:2 (1 repeated row(s)" in err[0]


def test_dafre_duplicate_crop_rows_are_an_error(tmp_path):
    write(tmp_path / FACES85, ["5,0005/1.jpg", "5,0005/2.jpg", "5,0005/1.jpg"])
    with pytest.raises(cv.ConversionError, match=r"faces_85.csv:3: '0005/1.jpg' is already listed at line 1"):
        cv.convert_daf(tmp_path, tmp_path / "out")


def test_dafre_corrupt_images_stop_or_are_counted(tmp_path):
    _tiny_dafre(tmp_path / "dafre")
    bad = tmp_path / "dafre" / "fullMin256" / "0101" / "101017.jpg"  # a test image of class 1
    bad.write_bytes(b"not a jpeg")
    assert main(["data", "prepare", "dafre", "--version", "full", "--root", str(tmp_path / "dafre"),
                 "--no-check-counts"]) == 0
    ds = ManifestDataset("dafb", "test", str(tmp_path / "dafre"))
    with pytest.raises(ImageReadError, match="101017.jpg"):
        decoded_cache(ds, 8, progress=False)
    with pytest.warns(UserWarning, match=r"Skipping 1 unreadable image\(s\)"):
        _, keep = decoded_cache(ds, 8, skip_bad=True, progress=False)
    assert len(keep) == len(ds) - 1


# ------------------------------------------------------------------------------------ moeImouto
MOE_CLASSES = ["103_reinforce_zwei", "001_hatsune_miku", "190_kawashima_ami"]


def test_moeimouto_published_csvs_give_the_spec_counts(tmp_path):
    # 173 classes, 14,395 images; per class int(0.8 n) / the rest gives 11,452 / 2,943.
    sizes = [55] * 93 + [116] * 80
    train, test = [], []
    for c, n in enumerate(sizes):
        k = int(0.8 * n)
        rows = [f"{c},{c:03d}_char/face_{j}.png" for j in range(n)]
        train += rows[:k]
        test += rows[k:]
    assert (len(train), len(test)) == (11452, 2943)
    write(tmp_path / "train.csv", train)
    write(tmp_path / "test.csv", test)
    write(tmp_path / "classid_classname.csv", [f"{c},{c:03d}_char" for c in range(173)])
    out = cv.prepare("moeimouto", tmp_path, tmp_path / "m", check_files=False)
    info = read_manifest_info(out)
    assert info["num_classes"] == 173 and info["moe_source"] == "csv"
    assert info["counts"]["train_val"] == 11452 and info["counts"]["test"] == 2943
    assert info["counts"]["train"] + info["counts"]["val"] == 11452
    assert {r.class_id for r in read_split(out / "test.csv")} == set(range(173))
    assert get_spec("moeimouto").mean == (0.5, 0.5, 0.5)


def test_moeimouto_folders_follow_the_class_table_and_count_skips(tmp_path, capsys):
    root = tmp_path / "moe"
    for c, name in enumerate(MOE_CLASSES):
        for j in range(10 + c):
            img(root / "data" / name / f"face_{j:02d}.png")
    img(root / "data" / "999_not_listed" / "face_0.png")
    (root / "data" / MOE_CLASSES[0] / "notes.txt").write_text("x")
    write(root / "classid_classname.csv", [f"{c},{n}" for c, n in enumerate(MOE_CLASSES)])
    assert main(["data", "prepare", "moeimouto", "--root", str(root), "--no-check-counts"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 folder(s) not in classid_classname.csv (e.g. ['999_not_listed'])" in out
    ds = ManifestDataset("moeimouto", "test", str(root))
    assert ds.class_names == MOE_CLASSES
    # class 0 (10 images): first 8 -> train_val, last 2 -> test; class 2 (12): 9 / 3
    assert [r.dir for r in ds.rows if r.class_id == 0] == ["103_reinforce_zwei/face_08.png",
                                                           "103_reinforce_zwei/face_09.png"]
    assert sum(r.class_id == 2 for r in ds.rows) == 3


def test_moeimouto_class_without_images_is_an_error(tmp_path):
    root = tmp_path / "moe"
    img(root / "data" / MOE_CLASSES[0] / "face_0.png")
    write(root / "classid_classname.csv", [f"{c},{n}" for c, n in enumerate(MOE_CLASSES[:2])])
    with pytest.raises(cv.ConversionError, match=r"1 class\(es\) of .*classid_classname.csv have no image"):
        cv.convert_moeimouto(root, tmp_path / "out")
