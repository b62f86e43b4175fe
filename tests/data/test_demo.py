"""The built-in font demo set: faces, tiny builds, split files, caching, determinism."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fgir.data import demo
from fgir.data.catalog import get_spec
from fgir.data.manifest import Row, carve_train_val, read_class_table, read_split

TINY = (3, 2, 2)
SIZE = 32
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return demo.build_fonts(tmp_path_factory.mktemp("fonts") / "set", per_class=TINY, size=SIZE)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "images").rglob("*.png"))}


def test_face_list_is_fixed_and_present():
    assert demo.NUM_FONT_CLASSES == len(demo.FONT_FACES) == len(set(demo.FONT_FACES)) == 22
    assert demo.missing_faces() == []
    for face in demo.FONT_FACES:
        assert demo.font_path(face).is_file(), face


@pytest.mark.parametrize("face", demo.FONT_FACES)
def test_every_face_renders_latin_text(face):
    demo.check_face(face)  # ink, no tofu, distinct glyphs, letter proportions
    img = np.asarray(demo.render_sample(face, np.random.default_rng(0), 48), dtype=np.int16)
    assert img.shape == (48, 48, 3)
    assert img.max() - img.min() > 100  # dark text on a light background


@pytest.mark.parametrize("face", ["cmsy10", "cmex10", "DejaVuSansDisplay", "LastResortHE-Regular"])
def test_symbol_and_blank_faces_are_rejected(face):
    if not demo.font_path(face).is_file():
        pytest.skip(f"{face} not shipped by this matplotlib")
    with pytest.raises(demo.FontFaceError):
        demo.check_face(face)


def test_missing_face_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "FONT_FACES", demo.FONT_FACES + ("NoSuchFace-Regular",))
    with pytest.raises(demo.FontFaceError, match="NoSuchFace-Regular"):
        demo.build_fonts(tmp_path / "set", per_class=(1, 1, 1), size=SIZE)
    assert not (tmp_path / "set").exists()


def test_spec_is_registered():
    spec = get_spec("fonts")
    assert spec is demo.FONT_DATASET
    assert spec.num_classes == len(demo.FONT_FACES)
    assert spec.builtin is demo.build_fonts
    tr, va, te = (n * spec.num_classes for n in demo.DEFAULT_PER_CLASS)
    assert spec.counts == {"train_val": tr + va, "test": te, "train": tr, "val": va}
    # The catalog's train/val carve-out rule reproduces the written split.
    n_tr, n_va, _ = demo.DEFAULT_PER_CLASS
    tv = [Row(c, f"{c}/{i}") for c in range(spec.num_classes) for i in range(n_tr + n_va)]
    train, val = carve_train_val(tv, spec.val_fraction)
    assert (len(train), len(val)) == (tr, va)


def test_default_root_is_versioned(monkeypatch, tmp_path):
    monkeypatch.setenv("FGIR_CACHE", str(tmp_path))
    assert demo.default_fonts_root() == tmp_path / "datasets" / "fonts-v1"


def test_tiny_build_layout_and_counts(tiny):
    k = len(demo.FONT_FACES)
    names = read_class_table(tiny / "classid_classname.csv")
    assert names == list(demo.FONT_FACES)
    assert "DejaVuSans-Oblique" in names
    rows = {s: read_split(tiny / f"{s}.csv") for s in (*SPLITS, "train_val")}
    for split, n in zip(SPLITS, TINY, strict=True):
        assert len(rows[split]) == n * k
        for cid in range(k):
            assert sum(r.class_id == cid for r in rows[split]) == n
    for split in SPLITS:
        for r in rows[split]:
            face, fname = r.dir.split("/")
            assert face == names[r.class_id]
            assert fname.startswith(f"{split}_") and fname.endswith(".png")
            assert (tiny / "images" / r.dir).is_file()
    # train_val = train then val, class by class
    expect = [r for c in range(k) for s in ("train", "val") for r in rows[s] if r.class_id == c]
    assert rows["train_val"] == expect
    dirs = {s: {r.dir for r in rows[s]} for s in SPLITS}
    assert not dirs["train"] & dirs["val"] and not dirs["train"] & dirs["test"]
    assert not dirs["val"] & dirs["test"]
    assert len(list((tiny / "images").rglob("*.png"))) == sum(TINY) * k
    info = json.loads((tiny / "BUILD.json").read_text())
    assert info["seed"] == 0 and info["per_class"] == list(TINY) and info["size"] == SIZE
    assert info["version"] == demo.GENERATOR_VERSION
    assert info["counts"] == {"train_val": 5 * k, "test": 2 * k, "train": 3 * k, "val": 2 * k}
    from PIL import Image

    with Image.open(tiny / "images" / rows["test"][0].dir) as im:
        assert im.mode == "RGB" and im.size == (SIZE, SIZE)
    assert not [p for p in tiny.parent.iterdir() if p.name != tiny.name]  # no temp folders left


def test_rebuild_is_cached(tiny):
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    assert demo.build_fonts(tiny, per_class=TINY, size=SIZE) == tiny
    after = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    assert after == before


def test_same_seed_same_bytes_and_prefix(tmp_path, tiny):
    again = demo.build_fonts(tmp_path / "again", per_class=TINY, size=SIZE)
    assert _hashes(again) == _hashes(tiny)
    # A smaller build with the same seed is a prefix of a larger one.
    small = demo.build_fonts(tmp_path / "small", per_class=(1, 1, 1), size=SIZE)
    big = _hashes(tiny)
    assert all(big[k] == v for k, v in _hashes(small).items())
    other = demo.build_fonts(tmp_path / "other", seed=1, per_class=(1, 1, 1), size=SIZE)
    assert _hashes(other) != _hashes(small)


def test_changed_parameters_or_force_rebuild(tmp_path):
    root = demo.build_fonts(tmp_path / "set", per_class=(1, 1, 1), size=SIZE)
    stamp = (root / "BUILD.json").stat().st_mtime_ns
    demo.build_fonts(root, per_class=(2, 1, 1), size=SIZE)
    assert len(read_split(root / "train.csv")) == 2 * len(demo.FONT_FACES)
    assert not (root / "images" / "cmr10" / "train_0002.png").exists()
    stamp2 = (root / "BUILD.json").stat().st_mtime_ns
    assert stamp2 != stamp
    demo.build_fonts(root, per_class=(2, 1, 1), size=SIZE, force=True)
    assert (root / "BUILD.json").stat().st_mtime_ns != stamp2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_foreign_folder_is_not_overwritten(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        demo.build_fonts(root, per_class=(1, 1, 1), size=SIZE, force=True)
    assert (root / "notes.txt").read_text() == "keep me"


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = demo.render_sample

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(demo, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        demo.build_fonts(tmp_path / "set", per_class=(1, 1, 1), size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_folders_are_cleared(tmp_path):
    stale = tmp_path / ".set.tmp-1-deadbeef"
    (stale / "images").mkdir(parents=True)
    os.utime(stale, (0, 0))
    fresh = tmp_path / ".set.tmp-2-cafef00d"  # possibly a build running right now: kept
    fresh.mkdir()
    demo.build_fonts(tmp_path / "set", per_class=(1, 1, 1), size=SIZE)
    assert not stale.exists() and fresh.exists()
