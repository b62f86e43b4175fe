"""Built-in fine-grained demo set that needs no download: font identification.

One class per TrueType face that matplotlib ships (DejaVu Sans/Serif/Mono with their bold and
oblique faces, STIX General, Computer Modern). Every image is a short random string of letters
and digits, rendered with PIL in dark ink on a light, mildly coloured background, at a random
size and position with a slight rotation, noise and blur. Classes such as a regular face and its
oblique, or DejaVu Serif, STIX General and Computer Modern Roman, differ only in small stroke
details, which makes the set a small fine-grained problem.

The set is generated from a fixed seed (the same seed gives byte-identical PNGs), written once
into a cache folder (``default_fonts_root()``) and reused: ``BUILD.json`` records the generator
version and parameters, and a build with matching parameters returns at once. The build goes
into a temporary sibling folder that is renamed into place at the end, so an interrupted build
never leaves a half-written set.

Horizontal flips turn glyphs into mirror images that no face draws: train this set without
``hflip``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from .catalog import DatasetSpec, cache_home, register_dataset
from .manifest import Row, write_class_table, write_split

if TYPE_CHECKING:
    import numpy as np  # numpy is imported where images are drawn: `fgir --help` stays light

GENERATOR = "fgir.data.demo.fonts"
GENERATOR_VERSION = 1
"""Bump when the rendered images change; it is part of the cache folder name and BUILD.json."""

# Faces with complete Latin letters and digits, in class-id order. Skipped on purpose: the
# symbol-only faces (cmex10, cmsy10, STIXSiz*, STIXNonUni*, LastResortHE) and the Display faces,
# which in matplotlib hold only a handful of glyphs and draw Latin text as blanks.
FONT_FACES: tuple[str, ...] = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "STIXGeneral",
    "STIXGeneralBol",
    "STIXGeneralItalic",
    "STIXGeneralBolIta",
    "cmr10",
    "cmb10",
    "cmti10",
    "cmmi10",
    "cmss10",
    "cmtt10",
)
NUM_FONT_CLASSES = len(FONT_FACES)

DEFAULT_PER_CLASS = (200, 50, 60)
"""Images per class for (train, val, test); train / (train + val) = 0.8, the catalog's carve-out."""
DEFAULT_SIZE = 80
"""Native image side in pixels (a 64 px training crop is resize_ratio 0.8)."""

SPLITS = ("train", "val", "test")

# Rendering ranges (changing any of them changes the images: bump GENERATOR_VERSION).
CAP_HEIGHT = (0.12, 0.18)
"""Height of a capital as a fraction of the image side, the same in pixels for every face."""
MAX_ROTATION = 4.0
"""Degrees either way; well under the 10-15 degree slant of the oblique and italic faces."""
BLUR_PROB, BLUR_RADIUS = 0.2, (0.3, 0.5)
LINE_CHARS = (6, 10)
"""Letters and digits per line before cutting the line to fit the image width."""
LINES_P = (0.0, 0.3, 0.7)
"""Probabilities of 1, 2, ... lines (fewer where they do not fit)."""
ALPHABET = string.ascii_letters + string.digits


class FontFaceError(RuntimeError):
    """A face of the font set is missing from matplotlib or does not render Latin text."""


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_path(face: str) -> Path:
    return font_dir() / f"{face}.ttf"


def default_fonts_root() -> Path:
    return cache_home() / "datasets" / f"fonts-v{GENERATOR_VERSION}"


def missing_faces(faces: tuple[str, ...] | None = None) -> list[str]:
    return [f for f in (FONT_FACES if faces is None else faces) if not font_path(f).is_file()]


@cache
def _font(face: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path(face)), size)


def _glyph(face: str, ch: str, size: int = 32) -> np.ndarray:
    import numpy as np
    from PIL import Image, ImageDraw

    im = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(im).text((size // 2, size // 4), ch, font=_font(face, size), fill=255)
    return np.asarray(im)


def _ink_height(a: np.ndarray) -> int:
    import numpy as np

    rows = np.flatnonzero(a.max(axis=1) > 64)
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def check_face(face: str) -> None:
    """Raise `FontFaceError` unless ``face`` exists and draws real Latin letters and digits.

    Checked: every letter and digit leaves ink, differs from the face's glyph for an unmapped
    code point (tofu) and from the other characters, and lower-case letters look like letters
    (an 'x' is shorter than an 'l', a 'b' and an 'h')."""
    p = font_path(face)
    if not p.is_file():
        raise FontFaceError(f"Font face '{face}' is not in matplotlib's font folder {font_dir()} "
                            f"(this matplotlib version ships a different set of faces).")
    tofu = {_glyph(face, c).tobytes() for c in ("\U0010fffd", "\ue8ff")}
    glyphs = {c: _glyph(face, c) for c in ALPHABET}
    blank = [c for c, g in glyphs.items() if g.max() < 128]
    if blank:
        raise FontFaceError(f"Font face '{face}' draws no ink for {''.join(blank)!r}.")
    notdef = [c for c, g in glyphs.items() if g.tobytes() in tofu]
    if notdef:
        raise FontFaceError(f"Font face '{face}' has no glyphs for {''.join(notdef)!r} (renders tofu).")
    distinct = len({g.tobytes() for g in glyphs.values()})
    if distinct < len(ALPHABET) - 2:
        raise FontFaceError(f"Font face '{face}' draws only {distinct} distinct glyphs for "
                            f"{len(ALPHABET)} letters and digits.")
    hx = _ink_height(glyphs["x"])
    if not all(hx < 0.85 * _ink_height(glyphs[c]) for c in "lbh"):
        raise FontFaceError(f"Font face '{face}' does not draw Latin letters (its 'x' is as tall "
                            f"as its 'l', 'b' and 'h').")


def check_faces(faces: tuple[str, ...] | None = None) -> None:
    faces = FONT_FACES if faces is None else faces
    missing = missing_faces(faces)
    if missing:
        raise FontFaceError(f"Font face(s) {', '.join(missing)} not found in matplotlib's font "
                            f"folder {font_dir()}; the 'fonts' demo set needs all of "
                            f"{len(faces)} faces.")
    for f in faces:
        check_face(f)


# ----------------------------------------------------------------------------------- rendering


def _rng(seed: int, face_index: int, split: str, i: int) -> np.random.Generator:
    import numpy as np

    # One stream per image: a smaller build is a prefix of a larger one with the same seed.
    return np.random.default_rng([seed, face_index, SPLITS.index(split), i])


@cache
def _cap_ratio(face: str) -> float:
    """Height of a capital H over the point size."""
    return _ink_height(_glyph(face, "H", 100)) / 100.0


def _random_line(rng: np.random.Generator, font, width: float) -> str:
    n = int(rng.integers(LINE_CHARS[0], LINE_CHARS[1] + 1))
    line = "".join(ALPHABET[j] for j in rng.integers(0, len(ALPHABET), n))
    while len(line) > 2 and font.getlength(line) > width:
        line = line[:-1]
    return line


def render_sample(face: str, rng: np.random.Generator, size: int = DEFAULT_SIZE):
    """One RGB image (PIL) of random text in ``face``, drawn from ``rng``.

    The font size is drawn so that a capital is `CAP_HEIGHT` of the image side in every face;
    two or three lines (`LINES_P`) of 6-10 letters and digits (cut to fit the width) form a block
    that is placed at a random position (a pixel or two may fall off an edge), rotated by up to
    `MAX_ROTATION` degrees, sometimes slightly blurred, and drawn in dark ink on a light, mildly
    coloured background with a faint shading ramp. Many small glyphs per image give a classifier
    enough evidence at 64 px; larger glyphs with fewer per image learned more slowly."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    # Same capital height in pixels for every face: glyph shapes, not em sizes, tell faces apart.
    cap = size * rng.uniform(*CAP_HEIGHT)
    pt = max(6, int(round(cap / _cap_ratio(face))))
    font = _font(face, pt)
    n_lines = int(rng.choice(len(LINES_P), p=LINES_P)) + 1
    while n_lines > 1 and (n_lines - 1) * 1.7 * cap + 1.3 * cap > 0.95 * size:
        n_lines -= 1
    lines = [_random_line(rng, font, 0.95 * size) for _ in range(n_lines)]
    # Lines are set on baselines a fixed multiple of the cap height apart (font line metrics
    # differ too much between faces, the Computer Modern ones especially), on a roomy canvas that
    # is then cut to the ink.
    pitch = cap * rng.uniform(1.45, 1.7)
    canvas = Image.new("L", (2 * size, 2 * size), 0)
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((size // 4, size // 2 + k * pitch), line, font=font, fill=255, anchor="ls")
    box = canvas.getbbox() or (0, 0, 1, 1)
    ink = canvas.crop(box)
    w, h = ink.size
    slack = size // 32
    px = int(round(rng.uniform(-slack, max(0, size - w) + slack)))
    py = int(round(rng.uniform(-slack, max(0, size - h) + slack)))
    mask = Image.new("L", (size, size), 0)
    mask.paste(ink, (px, py))
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    mask = mask.rotate(angle, resample=Image.BILINEAR, center=(px + w / 2, py + h / 2))
    if rng.random() < BLUR_PROB:
        mask = mask.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*BLUR_RADIUS))))

    bg = rng.uniform(205, 250) + rng.uniform(-12, 12, 3)
    ink_rgb = rng.uniform(10, 80) + rng.uniform(-20, 20, 3)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    gx, gy = rng.uniform(-10, 10, 2)
    shade = (gx * ramp[None, :] + gy * ramp[:, None])[..., None]
    a = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    img = (bg + shade) * (1.0 - a) + ink_rgb * a
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------- building


def _build_key(seed: int, per_class: tuple[int, int, int], size: int) -> dict:
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "seed": int(seed),
            "per_class": [int(n) for n in per_class], "size": int(size), "faces": list(FONT_FACES)}


def _read_build(root: Path) -> dict | None:
    try:
        return json.loads((root / "BUILD.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_built(root: Path, key: dict) -> bool:
    info = _read_build(root)
    if info is None or {k: info.get(k) for k in key} != key:
        return False
    names = ("train.csv", "val.csv", "train_val.csv", "test.csv", "classid_classname.csv")
    return all((root / n).is_file() for n in names)


def _write_set(tmp: Path, seed: int, per_class: tuple[int, int, int], size: int) -> dict:
    images = tmp / "images"
    rows: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for ci, face in enumerate(FONT_FACES):
        (images / face).mkdir(parents=True)
        for split, n in zip(SPLITS, per_class, strict=True):
            for i in range(n):
                rel = f"{face}/{split}_{i:04d}.png"
                render_sample(face, _rng(seed, ci, split, i), size).save(images / rel, optimize=False)
                rows[split].append(Row(ci, rel))
    rows["train_val"] = [r for ci in range(len(FONT_FACES))
                         for s in ("train", "val") for r in rows[s] if r.class_id == ci]
    for split in ("train", "val", "train_val", "test"):
        write_split(tmp / f"{split}.csv", rows[split])
    write_class_table(tmp / "classid_classname.csv", list(FONT_FACES))
    return {s: len(rows[s]) for s in ("train_val", "test", "train", "val")}


def build_fonts(root: str | os.PathLike | None = None, *, seed: int = 0,
                per_class: tuple[int, int, int] = DEFAULT_PER_CLASS, size: int = DEFAULT_SIZE,
                force: bool = False) -> Path:
    """Materialise the font set at ``root`` (default `default_fonts_root()`) and return it.

    Writes ``images/<face>/<split>_<nnnn>.png``, the split CSVs (``train``, ``val``,
    ``train_val`` = train then val per class in class order, ``test``), ``classid_classname.csv``
    and ``BUILD.json``. A root whose ``BUILD.json`` matches the parameters is returned as it is
    unless ``force``. A non-empty root that is not an fgir font set is never overwritten."""
    root = Path(root) if root is not None else default_fonts_root()
    root = root.expanduser().absolute()
    per_class = tuple(int(n) for n in per_class)
    if len(per_class) != 3 or min(per_class) < 1:
        raise ValueError(f"per_class must be three positive counts (train, val, test), got {per_class}.")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}.")
    key = _build_key(seed, per_class, size)
    if not force and _is_built(root, key):
        return root
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and _read_build(root) is None)):
        raise FileExistsError(f"{root} exists and is not an fgir font set (no BUILD.json); "
                              f"refusing to overwrite it. Choose another root or remove it.")
    check_faces()

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(root)
    tmp = _fresh_sibling(root, "tmp")
    old: Path | None = None
    try:
        t0 = time.perf_counter()
        counts = _write_set(tmp, seed, per_class, size)
        info = dict(key, counts=counts, num_classes=NUM_FONT_CLASSES,
                    build_seconds=round(time.perf_counter() - t0, 2))
        (tmp / "BUILD.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if root.exists():  # an older build (other parameters, or force): move it aside first
            old = _fresh_sibling(root, "old")
            os.replace(root, old / "set")
        try:
            os.replace(tmp, root)
        except OSError:
            if _is_built(root, key):  # another process finished the same build first
                return root
            if old is not None and not root.exists():
                os.replace(old / "set", root)
            raise
    finally:
        for p in (tmp, old):
            if p is not None and p.exists():
                shutil.rmtree(p, ignore_errors=True)
    return root


def _fresh_sibling(root: Path, tag: str) -> Path:
    """A new empty folder next to ``root`` (same file system, so renames are atomic)."""
    p = root.parent / f".{root.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"
    p.mkdir()
    return p


def _remove_stale_siblings(root: Path, age_s: float = 3600.0) -> None:
    """Remove temporary folders left by builds that were killed (older than ``age_s``)."""
    now = time.time()
    for tag in ("tmp", "old"):
        for p in root.parent.glob(f".{root.name}.{tag}-*"):
            try:
                if p.is_dir() and now - p.stat().st_mtime > age_s:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def _default_counts() -> dict:
    tr, va, te = (n * NUM_FONT_CLASSES for n in DEFAULT_PER_CLASS)
    return {"train_val": tr + va, "test": te, "train": tr, "val": va}


FONT_DATASET = register_dataset(DatasetSpec(
    name="fonts",
    num_classes=NUM_FONT_CLASSES,
    image_folder="images",
    counts=_default_counts(),
    val_fraction=DEFAULT_PER_CLASS[0] / (DEFAULT_PER_CLASS[0] + DEFAULT_PER_CLASS[1]),
    builtin=build_fonts,
    description=(f"Built-in font identification: {NUM_FONT_CLASSES} TrueType faces shipped with "
                 f"matplotlib (DejaVu, STIX, Computer Modern), random text at {DEFAULT_SIZE} px; "
                 f"generated locally, no download. Train without horizontal flips."),
))
