"""Small shared helpers."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a unique sibling temporary path; on success it is renamed onto ``path`` (so readers
    never see a half-written file), on failure it is removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # a unique sibling name (not mkstemp, whose 0600 mode would survive the rename)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex}{os.path.splitext(path)[1]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
