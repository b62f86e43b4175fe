"""A tiny trained checkpoint shared by the web-demo tests (trained once per session; not a conftest so
that `from conftest import ...` keeps meaning tests/conftest.py)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

_RUNS: dict[str, Path] = {}


def tiny_run(tmp_path_factory, tiny_root: Path) -> Path:
    """A test_resnet run trained for two short epochs on the 3-class tiny set (32 px)."""
    if "cnn" not in _RUNS:
        from conftest import tiny_cfg

        from fgir.engine.train import train

        out = tmp_path_factory.mktemp("serve-run")
        _RUNS["cnn"] = Path(train(tiny_cfg(tiny_root, out, "data.test_split=", "run.name=serve"))["run_dir"])
    return _RUNS["cnn"]


def png_claiming(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims ``width x height`` pixels (a decompression bomb
    as far as any decoder that trusts the header is concerned)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length + type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)
