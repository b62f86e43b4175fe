"""Manifests as users and spreadsheets write them, and manifests that try to leave the dataset."""

from __future__ import annotations

import pytest
from PIL import Image

from fgir.data.datasets import ManifestDataset, SplitLeakWarning
from fgir.data.manifest import ManifestError, Row, check_paths, read_split


def _root(tmp_path, train_lines, test_lines=("0,a/0.png", "1,b/0.png")):
    """A minimal manifest root (CSV-only layout of the bundled class-folder set's spec)."""
    root = tmp_path / "set"
    for d in ("a", "b"):
        (root / d).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / d / f"{i}.png")
    (root / "classid_classname.csv").write_text("class_id,class_name\n0,a\n1,b\n")
    for split, lines in (("train", train_lines), ("val", ("0,a/2.png",)), ("test", test_lines),
                         ("train_val", train_lines)):
        (root / f"{split}.csv").write_text("class_id,dir\n" + "\n".join(lines) + "\n")
    return root


def test_bom_and_crlf_load(tmp_path):
    p = tmp_path / "s.csv"
    p.write_bytes("\ufeffclass_id,dir\r\n0,a/1.png\r\n1,b/1.png\r\n".encode())
    assert read_split(p) == [Row(0, "a/1.png"), Row(1, "b/1.png")]


def test_non_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "s.csv"
    p.write_bytes(b"class_id,dir\n0,a/1.png\n1,b/\xe9t\xe9.png\n")
    with pytest.raises(ManifestError, match=r"s\.csv:3: not UTF-8"):
        read_split(p)


@pytest.mark.parametrize("bad", ["../../../../etc/passwd", "/etc/passwd", "a/../../outside.png"])
def test_paths_outside_the_image_root_are_refused_with_file_and_line(tmp_path, bad):
    p = tmp_path / "s.csv"
    p.write_text(f"class_id,dir\n0,a/1.png\n0,{bad}\n")
    with pytest.raises(ManifestError, match=r"s\.csv:3: image path .* outside the image root"):
        check_paths(read_split(p), tmp_path / "images", str(p))


def test_dotdot_that_stays_inside_is_accepted(tmp_path):
    check_paths([Row(0, "a/../b/1.png", 2)], tmp_path, "x.csv")


def test_dataset_refuses_an_escaping_row(tmp_path):
    root = _root(tmp_path, ["0,a/1.png", "1,../../secret.png"])
    with pytest.raises(ManifestError, match=r"train\.csv:3: image path '../../secret.png'"):
        ManifestDataset("flowers12", "train", str(root), check_files=False)


def test_duplicate_rows_are_reported_on_load(tmp_path):
    root = _root(tmp_path, ["0,a/1.png", "0,a/1.png", "1,b/1.png"])
    with pytest.warns(SplitLeakWarning, match="listed more than once"):
        ManifestDataset("flowers12", "train", str(root))


def test_train_image_also_in_test_is_reported_on_load(tmp_path):
    root = _root(tmp_path, ["0,a/1.png", "1,b/0.png"])
    with pytest.warns(SplitLeakWarning, match="also in test.csv"):
        ManifestDataset("flowers12", "train", str(root))
