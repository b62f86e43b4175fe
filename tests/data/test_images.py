"""Every image a user has loads as the RGB the model should see, or fails naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fgir.data.datasets import ImageReadError, read_image


def test_16bit_greyscale_png_is_scaled_not_white(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    a = np.asarray(read_image(tmp_path / "g16.png"))
    assert a.shape == (64, 64, 3)
    assert a[0, 0, 0] == 0 and a[-1, -1, 0] == 255 and 100 < a[32, 32, 0] < 156


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.size == (20, 40)  # portrait after the EXIF rotation


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "RGBA", "L", "1", "I", "F", "YCbCr"])
def test_every_mode_loads_as_rgb(tmp_path, mode):
    base = Image.new("RGB", (16, 16), (10, 200, 30))
    im = base.convert(mode)
    ext = "tiff" if mode in ("CMYK", "I", "F", "YCbCr") else "png"
    if mode == "YCbCr":
        ext = "jpg"
    im.save(tmp_path / f"x.{ext}")
    out = read_image(tmp_path / f"x.{ext}")
    assert out.mode == "RGB" and out.size == (16, 16)


def test_transparency_composited_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert np.asarray(read_image(tmp_path / "t.png")).min() == 255


def test_decompression_bomb_is_a_named_bad_image(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 px is "too large" now
    with pytest.raises(ImageReadError, match=r"big\.png.*Decompression"):
        read_image(tmp_path / "big.png")


def test_truncated_file_names_the_file(tmp_path):
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match=r"t\.jpg"):
        read_image(tmp_path / "t.jpg")
