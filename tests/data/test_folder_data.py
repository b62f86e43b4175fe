"""Own data (``data.name=folder``): class-folder trees and CSV lists, on tiny trees built here."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg
from PIL import Image

from fgir.cli.main import main as cli
from fgir.config import ConfigError, load_config
from fgir.data import resolve
from fgir.data.catalog import cached_manifest_dir, get_spec
from fgir.data.converters import ConversionError, carve_by_fractions, carve_counts
from fgir.data.datasets import ManifestDataset
from fgir.data.manifest import ManifestError, Row, read_class_table, read_manifest_info, read_split
from fgir.data.resolve import prepare_dataset, resolve_root

SPLITS = ("train_val", "test", "train", "val")
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 60), "eel": (50, 60, 220)}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FGIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FGIR_DATA", raising=False)
    resolve._REPORTED_NEW.clear()


def img(path: Path, colour=(0, 0, 0), size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def flat_tree(root: Path, per_class: dict[str, int], size: int = 8) -> Path:
    for c, n in per_class.items():
        for i in range(n):
            img(root / c / f"{i:03d}.png", COLOURS.get(c, (0, 0, 0)), size)
    return root


def split_tree(root: Path, per_split: dict[str, int], classes=("cat", "dog"), size: int = 8) -> Path:
    for s, n in per_split.items():
        for c in classes:
            for i in range(n):
                img(root / s / c / f"{s}_{i}.png", COLOURS[c], size)
    return root


def rows(mdir: Path) -> dict[str, list[Row]]:
    return {s: read_split(mdir / f"{s}.csv") for s in SPLITS}


# --- layouts -------------------------------------------------------------------------------------
def test_split_tree_keeps_its_train_val_test(tmp_path):
    root = split_tree(tmp_path / "own", {"train": 3, "val": 1, "test": 2})
    mdir, image_root = resolve_root("folder", root)
    r = rows(mdir)
    assert mdir == cached_manifest_dir("folder", root) and image_root == root.absolute()
    assert [len(r[s]) for s in SPLITS] == [8, 4, 6, 2]
    assert r["val"] == [Row(0, "val/cat/val_0.png"), Row(1, "val/dog/val_0.png")]
    assert all((image_root / x.dir).is_file() for s in SPLITS for x in r[s])


def test_split_tree_without_val_carves_val_by_the_reference_rule(tmp_path):
    root = split_tree(tmp_path / "own", {"train": 5, "test": 1})
    mdir, _ = resolve_root("folder", root)
    r = rows(mdir)
    # p = 0.8: the first floor(0.8 * 5) = 4 files of each class in path order go to train
    assert r["train"] == [Row(c, f"train/{n}/train_{i}.png") for c, n in enumerate(("cat", "dog")) for i in range(4)]
    assert r["val"] == [Row(0, "train/cat/train_4.png"), Row(1, "train/dog/train_4.png")]
    assert read_manifest_info(mdir)["split_rule"] == "carve_val"


def test_flat_tree_is_carved_per_class_by_split_fractions(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 10, "dog": 20})
    mdir, _ = resolve_root("folder", root, split_fractions=[0.6, 0.2, 0.2])
    r = rows(mdir)
    for c, n in ((0, 10), (1, 20)):
        got = tuple(len([x for x in r[s] if x.class_id == c]) for s in ("train", "val", "test"))
        assert got == carve_counts(n, (0.6, 0.2, 0.2)) == (int(0.6 * n + 0.5), int(0.2 * n + 0.5), int(0.2 * n + 0.5))
    every = {x.dir for s in ("train", "val", "test") for x in r[s]}
    assert every == {f"{c}/{i:03d}.png" for c, n in (("cat", 10), ("dog", 20)) for i in range(n)}
    assert len(every) == 30  # disjoint
    assert read_manifest_info(mdir)["split_fractions"] == [0.6, 0.2, 0.2]


@pytest.mark.parametrize("n, expected", [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (2, 0, 1)), (5, (3, 1, 1)),
                                         (10, (7, 1, 2))])
def test_carve_counts_of_small_classes(n, expected):
    assert carve_counts(n, (0.7, 0.1, 0.2)) == expected


def test_carve_of_a_class_ignores_the_other_classes(tmp_path):
    files = [f"{i:03d}.png" for i in range(12)]
    alone = carve_by_fractions(files, (0.7, 0.1, 0.2))
    assert carve_by_fractions(list(reversed(files)), (0.7, 0.1, 0.2)) == alone  # input order is irrelevant
    a, b = flat_tree(tmp_path / "a", {"cat": 12, "dog": 5}), flat_tree(tmp_path / "b", {"cat": 12, "eel": 9})
    cat = [{x.dir for x in rows(resolve_root("folder", root)[0])[s] if x.class_id == 0} for root in (a, b)
           for s in ("train", "val", "test")]
    assert cat[:3] == cat[3:] == [{f"cat/{f}" for f in alone[s]} for s in ("train", "val", "test")]


def test_csv_list_with_class_names_and_relative_or_absolute_paths(tmp_path):
    flat_tree(tmp_path / "imgs", {"cat": 5, "dog": 5})
    lines = ["path,label"] + [f"imgs/cat/{i:03d}.png,cat" for i in range(5)]
    lines += [f"{tmp_path / 'imgs' / 'dog' / f'{i:03d}.png'},dog" for i in range(5)]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    mdir, image_root = resolve_root("folder", tmp_path / "list.csv")
    r = rows(mdir)
    assert image_root == tmp_path.absolute()
    assert read_class_table(mdir / "classid_classname.csv") == ["cat", "dog"]
    assert [len(r[s]) for s in ("train", "val", "test")] == [6, 2, 2]  # 3/1/1 per class
    assert all((image_root / x.dir).is_file() for s in SPLITS for x in r[s])


def test_csv_list_with_integer_labels_and_a_split_column(tmp_path):
    flat_tree(tmp_path / "imgs", {"cat": 3, "dog": 3})
    lines = ["path,label,split"]
    for c, name in enumerate(("cat", "dog")):
        lines += [f"imgs/{name}/000.png,{c},train", f"imgs/{name}/001.png,{c},val", f"imgs/{name}/002.png,{c},test"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    mdir, _ = resolve_root("folder", tmp_path / "list.csv")
    r = rows(mdir)
    assert read_class_table(mdir / "classid_classname.csv") == ["0", "1"]
    assert r["val"] == [Row(0, "imgs/cat/001.png"), Row(1, "imgs/dog/001.png")]
    assert r["test"] == [Row(0, "imgs/cat/002.png"), Row(1, "imgs/dog/002.png")]


def test_class_names_and_ids_come_from_sorted_folder_names(tmp_path):
    root = flat_tree(tmp_path / "own", {"zebra_finch": 5, "Albatross": 5, "kiwi": 5})
    ds = ManifestDataset("folder", "train", str(root))
    assert ds.class_names == ["Albatross", "kiwi", "zebra_finch"] and ds.num_classes == 3
    assert {ds.class_names[r.class_id] for r in ds.rows} == set(ds.class_names)
    assert all(r.dir.startswith(ds.class_names[r.class_id] + "/") for r in ds.rows)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 5, "dog": 5})
    img(root / "cat" / ".thumb.png")
    img(root / "dog" / ".cache" / "x.png")
    (root / "cat" / "notes.txt").write_text("x")
    img(root / ".trash" / "y.png")
    mdir, _ = resolve_root("folder", root)
    assert read_class_table(mdir / "classid_classname.csv") == ["cat", "dog"]
    assert {x.dir for s in ("train_val", "test") for x in rows(mdir)[s]} == {
        f"{c}/{i:03d}.png" for c in ("cat", "dog") for i in range(5)}


def test_folder_spec_normalises_with_imagenet_defaults(tmp_path):
    from fgir.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from fgir.engine.build import normalization

    assert get_spec("folder").mean == () and get_spec("folder").num_classes == 0
    cfg = load_config(overrides=["data.name=folder", f"data.root={tmp_path}"])
    assert normalization(cfg, torch.nn.Identity()) == (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))


def test_a_class_with_one_image_trains_only_and_is_reported(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 10, "dog": 1})
    with pytest.warns(UserWarning, match=r"1 class\(es\) have no row in test \(e.g. \[1\] = \['dog'\]\)"):
        mdir, _ = resolve_root("folder", root)
    assert [x.dir for s in ("train", "val", "test") for x in rows(mdir)[s] if x.class_id == 1] == ["dog/000.png"]
    assert [x.dir for x in rows(mdir)["train"] if x.class_id == 1] == ["dog/000.png"]


def test_no_test_image_at_all_is_an_error(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 2, "dog": 2})
    with pytest.raises(ConversionError, match="no image went to test"):
        resolve_root("folder", root)


# --- the saved carve -------------------------------------------------------------------------------
def test_saved_carve_is_reused_and_new_images_are_reported(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 10, "dog": 10})
    mdir, _ = resolve_root("folder", root)
    before = rows(mdir)
    img(root / "cat" / "new.png")
    with pytest.warns(UserWarning, match=r"1 image\(s\) under .* are not in its saved split"):
        again, _ = resolve_root("folder", root)
    assert again == mdir and rows(again) == before


def test_refresh_carves_again_with_the_new_images(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 10, "dog": 10})
    mdir, _ = resolve_root("folder", root)
    img(root / "cat" / "new.png")
    resolve_root("folder", root, refresh=True)
    assert len(rows(mdir)["train_val"]) + len(rows(mdir)["test"]) == 21
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_root("folder", root)  # nothing new to report


def test_saved_carve_with_other_fractions_is_an_error(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 10, "dog": 10})
    resolve_root("folder", root, split_fractions=[0.7, 0.1, 0.2])
    with pytest.raises(ManifestError, match=r"carved with \[0.7, 0.1, 0.2\].*--split-fractions 0.8,0.1,0.1 --refresh"):
        resolve_root("folder", root, split_fractions=[0.8, 0.1, 0.1])


# --- bad inputs ------------------------------------------------------------------------------------
def test_empty_class_folder_is_an_error(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 3, "dog": 3})
    (root / "emu").mkdir()
    with pytest.raises(ConversionError, match=r"Class folder .*own/emu holds no image"):
        resolve_root("folder", root)


def test_a_single_class_is_an_error(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 5})
    with pytest.raises(ConversionError, match=r"found 1 class\(es\) \['cat'\]; expected at least 2"):
        resolve_root("folder", root)


def test_split_fractions_must_sum_to_one(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 5, "dog": 5})
    with pytest.raises(ValueError, match=r"split_fractions=\[0.5, 0.5, 0.5\] is not allowed.*summing to 1"):
        resolve_root("folder", root, split_fractions=[0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match=r"data.split_fractions=.* is not allowed"):
        load_config(overrides=["data.split_fractions=[0.6,0.1,0.1]"])


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root .*nope \(from data.root\) is not a folder or a .csv file"):
        resolve_root("folder", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"Dataset 'folder' needs data.root=DIR"):
        resolve_root("folder")


def test_num_classes_in_the_config_must_match(tmp_path):
    root = flat_tree(tmp_path / "own", {"cat": 5, "dog": 5})
    with pytest.raises(ManifestError, match="data.num_classes=5 but the class table of 'folder' has 2"):
        ManifestDataset("folder", "train", str(root), num_classes=5)


# --- prepare and train -----------------------------------------------------------------------------
def test_prepare_help_lists_the_dataset_names(capsys):
    with pytest.raises(SystemExit):
        cli(["data", "prepare", "--help"])
    out = capsys.readouterr().out
    assert "folder" in out and "cub100" in out and "flowers12" in out and "--refresh" in out


def test_prepare_prints_counts_and_the_train_command(tmp_path, capsys):
    root = flat_tree(tmp_path / "own", {"cat": 10, "dog": 10})
    assert cli(["data", "prepare", "folder", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"manifest prepared in {cached_manifest_dir('folder', root)}" in out
    assert "train            14" in out and "val               2" in out and "test              4" in out
    assert f"fgir train data.name=folder data.root={root.absolute()} model.name=resnet18" in out


def test_train_one_epoch_on_a_folder_tree(tmp_path):
    from fgir.engine.train import train

    root = flat_tree(tmp_path / "own", {"cat": 10, "dog": 10, "eel": 10}, size=24)
    cfg = tiny_cfg(root, tmp_path / "runs", "data.name=folder", "optim.epochs=1", "run.max_steps_per_epoch=2",
                   "data.img_size=16")
    res = train(cfg)
    assert 0.0 <= res["test_top1"] <= 100.0
    assert (Path(res["run_dir"]) / "last.safetensors").is_file()


def test_train_after_prepare_reuses_the_manifest(tmp_path, monkeypatch, capsys):
    from fgir.engine.train import train

    root = flat_tree(tmp_path / "own", {"cat": 6, "dog": 6}, size=24)
    assert cli(["data", "prepare", "folder", "--root", str(root)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert line[:2] == ["fgir", "train"]
    mdir = cached_manifest_dir("folder", root)
    stamps = {p.name: p.stat().st_mtime_ns for p in mdir.iterdir()}
    conversions = []
    monkeypatch.setattr(resolve, "prepare", lambda *a, **k: conversions.append(a))
    overrides = [a for a in line[2:] if a.startswith("data.")]  # the printed data.* settings
    cfg = tiny_cfg(root, tmp_path / "runs", *overrides, "optim.epochs=1", "run.max_steps_per_epoch=1",
                   "data.img_size=16")
    assert cfg.data.name == "folder" and Path(cfg.data.root) == root.absolute()
    train(cfg)
    assert conversions == []
    assert {p.name: p.stat().st_mtime_ns for p in mdir.iterdir()} == stamps
    assert os.listdir(mdir.parent) == [mdir.name]


def test_prepare_then_dataset_gives_identical_rows(tmp_path):
    root = split_tree(tmp_path / "own", {"train": 4, "test": 2})
    p = prepare_dataset("folder", root)
    ds = ManifestDataset("folder", "train", str(root))
    assert ds.manifest_dir == p.manifest_dir and ds.rows == read_split(p.manifest_dir / "train.csv")
    torch.testing.assert_close(ds.labels, torch.tensor([r.class_id for r in ds.rows]))
