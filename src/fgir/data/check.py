"""`fgir data check`: exact and near-duplicate images within and across the splits of a dataset.

A test image with a copy in train inflates test accuracy (the model has seen it). Exact copies are
found by SHA-256 of the file bytes; near copies (the same photograph re-encoded, resized or
slightly recompressed) by comparing 32x32 grayscale thumbnails: each thumbnail is standardised
(zero mean, unit variance) and two images are near-duplicates when the RMS of the difference of
their standardised thumbnails, divided by 2 (so that 0 = identical, 1 = uncorrelated, at most 2 for
inverted ones, halved: ``sqrt((1 - r) / 2)`` with ``r`` the thumbnails' correlation), is below
``threshold`` (default 0.07). On the bundled Flowers-12 this finds the 60 pairs its README lists,
23 of them test-train, and the closest non-copy pair is far above the threshold.

The result lists pairs by kind (``train-train``, ``test-test``, ``test-train``, ...). ``--exclude
FILE`` writes the test images that have a copy in a training split, one manifest path per line;
``data.exclude=FILE`` removes them when a run loads its splits.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THUMB = 32
TRAINING_SPLITS = ("train", "val", "train_val")


@dataclass(frozen=True)
class Pair:
    kind: str
    """'exact' or 'near'."""
    split_a: str
    path_a: str
    split_b: str
    path_b: str
    distance: float
    """0 for exact copies; the thumbnail distance for near ones."""

    @property
    def splits(self) -> str:
        return "-".join(sorted((self.split_a, self.split_b), key=lambda s: (s != "test", s)))


def thumbnail(path: str | os.PathLike) -> np.ndarray:
    """The standardised 32x32 grayscale thumbnail (float32, 1024 values, zero mean, unit variance)."""
    from .datasets import read_image

    im = read_image(path).convert("L").resize((THUMB, THUMB), resample=2)  # bilinear
    a = np.asarray(im, dtype=np.float32).reshape(-1)
    a = a - a.mean()
    sd = float(a.std())
    return a / sd if sd > 1e-6 else a


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def near_pairs(thumbs: np.ndarray, threshold: float, chunk: int = 1024) -> list[tuple[int, int, float]]:
    """Index pairs ``(i, j, d)`` with ``i < j`` and distance ``d < threshold`` (chunked, O(N^2)
    dot products, O(N * chunk) memory)."""
    n = len(thumbs)
    out: list[tuple[int, int, float]] = []
    dim = thumbs.shape[1]
    for s in range(0, n, chunk):
        block = thumbs[s:s + chunk]
        r = block @ thumbs.T / dim  # correlations
        d = np.sqrt(np.clip((1.0 - r) / 2.0, 0.0, None))
        ii, jj = np.nonzero(d < threshold)
        for i, j in zip(ii.tolist(), jj.tolist()):
            gi = s + i
            if gi < j:
                out.append((gi, j, float(d[i, j])))
    return out


def check_dataset(name: str, root: str = "", splits: tuple[str, ...] = ("train_val", "test"),
                  threshold: float = 0.07, progress: bool = False) -> dict:
    """Duplicates of dataset ``name`` across ``splits`` (the manifest's rows; ``train_val`` is
    train + val). Returns ``{"pairs": [Pair], "images": N, "test_with_copy_in_train": [paths],
    "by_kind": {"near test-train": n, ...}}``."""
    from tqdm import tqdm

    from .datasets import ImageReadError, ManifestDataset

    if not 0 < threshold < 1:
        raise ValueError(f"--threshold {threshold} must be in (0, 1) (0.07 finds re-encoded copies).")
    items: list[tuple[str, str, Path]] = []
    seen: set[str] = set()
    for split in splits:
        try:
            ds = ManifestDataset(name, split, root, check_files=False)
        except Exception:  # noqa: BLE001  (a split the set does not have is skipped, others fail)
            if split == "val":
                continue
            raise
        for i, r in enumerate(ds.rows):
            key = f"{split}|{os.path.normpath(r.dir)}"
            if key not in seen:
                seen.add(key)
                items.append((split, r.dir, ds.path(i)))
    digests: dict[str, list[int]] = {}
    thumbs = np.zeros((len(items), THUMB * THUMB), dtype=np.float32)
    unreadable: list[str] = []
    for k, (_, _, path) in enumerate(tqdm(items, desc="hashing", disable=not progress, leave=False)):
        try:
            digests.setdefault(file_digest(path), []).append(k)
            thumbs[k] = thumbnail(path)
        except (OSError, ImageReadError) as e:
            unreadable.append(f"{path}: {e}")
    pairs: list[Pair] = []
    exact: set[tuple[int, int]] = set()
    for ks in digests.values():
        for a in range(len(ks)):
            for b in range(a + 1, len(ks)):
                i, j = ks[a], ks[b]
                exact.add((i, j))
                pairs.append(Pair("exact", items[i][0], items[i][1], items[j][0], items[j][1], 0.0))
    for i, j, d in near_pairs(thumbs, threshold):
        if (i, j) not in exact and items[i][2] != items[j][2]:
            pairs.append(Pair("near", items[i][0], items[i][1], items[j][0], items[j][1], round(d, 4)))
    leaked = sorted({p.path_a if p.split_a == "test" else p.path_b for p in pairs
                     if {p.split_a, p.split_b} & {"test"} and {p.split_a, p.split_b} & set(TRAINING_SPLITS)})
    by_kind: dict[str, int] = {}
    for p in pairs:
        k = f"{p.kind} {p.splits}"
        by_kind[k] = by_kind.get(k, 0) + 1
    return {"dataset": name, "images": len(items), "threshold": threshold, "pairs": pairs,
            "by_kind": dict(sorted(by_kind.items())), "test_with_copy_in_train": leaked,
            "unreadable": unreadable}


def write_pairs_csv(path: str | os.PathLike, pairs: list[Pair]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["kind", "splits", "split_a", "path_a", "split_b", "path_b", "distance"])
        for q in sorted(pairs, key=lambda q: (q.splits, q.distance, q.path_a)):
            w.writerow([q.kind, q.splits, q.split_a, q.path_a, q.split_b, q.path_b, f"{q.distance:.4f}"])
    os.replace(tmp, p)
    return p


def read_exclude(path: str | os.PathLike) -> set[str]:
    """``data.exclude``: manifest paths (one per line, '#' comments) removed from every split."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data.exclude={path}: file not found (write one with "
                                "`fgir data check NAME --root R --exclude FILE`).")
    out: set[str] = set()
    for line in p.read_text(encoding="utf-8-sig").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(os.path.normpath(line))
    return out
