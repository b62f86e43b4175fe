"""Per-image tags for the multi-task tagging extension (Animesion, spec ``animesion.md`` §2.6-2.7, §3.6, §6).

* Tags live next to a dataset as a side JSON ``{image dir (as in the split CSVs): [tag, ...]}``
  (:func:`read_tags_json`, :func:`write_tags_json`); DAF:re's ``labels/{split}_tags.csv`` (a
  ``tags_cat0`` column holding a Python list literal) converts with :func:`read_tags_csv`, which
  parses the literal with :func:`ast.literal_eval`, never ``eval``.
* The tag vocabulary is a JSON list of tokens (never a pickle): ``[PAD]`` 0, ``[UNUSED]`` 1,
  ``[CLS]`` 2, ``[SEP]`` 3, ``[UNK]`` 4, then every tag seen at least ``min_count`` times, most
  frequent first (ties by name) (:func:`build_vocab`, :func:`save_vocab`, :func:`load_vocab`).
* :class:`TagTokenizer` encodes a tag list as ``[CLS] + ids(tags[:L-2]) + [SEP] + [PAD]...`` of
  length ``L`` (16 by default); unknown tags map to ``[UNK]``.
"""

from __future__ import annotations

import ast
import csv
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["PAD", "UNUSED", "CLS", "SEP", "UNK", "SPECIAL_TOKENS", "TagTokenizer", "build_vocab", "save_vocab",
           "load_vocab", "tag_query", "read_tags_csv", "read_tags_json", "write_tags_json"]

SPECIAL_TOKENS = ("[PAD]", "[UNUSED]", "[CLS]", "[SEP]", "[UNK]")
PAD, UNUSED, CLS, SEP, UNK = range(5)
VOCAB_FORMAT = "fgir-tag-vocab/1"


def build_vocab(tag_lists: Iterable[Sequence[str]], min_count: int = 2) -> list[str]:
    """The special tokens, then the tags seen at least ``min_count`` times (most frequent first, ties by name)."""
    counts = Counter(t for tags in tag_lists for t in tags)
    kept = sorted((t for t, n in counts.items() if n >= min_count and t not in SPECIAL_TOKENS),
                  key=lambda t: (-counts[t], t))
    return list(SPECIAL_TOKENS) + kept


def save_vocab(tokens: Sequence[str], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.write_text(json.dumps({"format": VOCAB_FORMAT, "tokens": list(tokens)}, ensure_ascii=False, indent=0))
    return p


def load_vocab(path: str | os.PathLike) -> list[str]:
    """A vocabulary written by :func:`save_vocab` (clear errors for anything else, a pickle included)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tag vocabulary {p} not found; write one with fgir.data.tags.save_vocab.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"tag vocabulary {p} is not JSON ({e}); pickled vocabularies (vocab.pkl) are never "
                         "loaded: rebuild it from the tags with fgir.data.tags.build_vocab.") from e
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if data.get("format") != VOCAB_FORMAT or not isinstance(tokens, list) or \
            tuple(tokens[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"tag vocabulary {p} is not a {VOCAB_FORMAT} file whose tokens start with {SPECIAL_TOKENS}.")
    return tokens


def read_tags_json(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{image dir: [tags]}`` from a side JSON."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tags file {p} not found (a JSON {{image dir: [tag, ...]}} next to the split CSVs).")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(t, str) for t in v)
                                             for v in data.values()):
        raise ValueError(f"tags file {p} must map image paths to lists of tag strings.")
    return {os.path.normpath(k): list(v) for k, v in data.items()}


def write_tags_json(tags: Mapping[str, Sequence[str]], path: str | os.PathLike) -> Path:
    p = Path(path)
    p.write_text(json.dumps({k: list(v) for k, v in tags.items()}, ensure_ascii=False))
    return p


def read_tags_csv(path: str | os.PathLike, column: str = "tags_cat0") -> dict[str, list[str]]:
    """DAF:re ``labels/{split}_tags.csv`` (header row with ``dir`` and ``column``, the tags as a Python
    list literal) -> ``{dir: [tags]}``; a malformed literal is an error naming the file and line."""
    p = Path(path)
    out: dict[str, list[str]] = {}
    with p.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("dir", column) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{p}: no column(s) {missing} in the header {reader.fieldnames}.")
        for line, row in enumerate(reader, start=2):
            try:
                tags = ast.literal_eval(row[column]) if row[column].strip() else []
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"{p}:{line}: {column}={row[column][:60]!r} is not a list literal ({e}).") from e
            if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
                raise ValueError(f"{p}:{line}: {column} must be a list of strings, got {row[column][:60]!r}.")
            out[os.path.normpath(row["dir"])] = list(tags)
    return out


class TagTokenizer:
    """Tag-level tokenizer (spec §3.6 ``tag``): ``[CLS] + tag ids (first L-2) + [SEP] + [PAD]...``."""

    def __init__(self, tokens: Sequence[str], max_len: int = 16):
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 ([CLS], one tag, [SEP]), got {max_len}.")
        if tuple(tokens[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a tag vocabulary starts with {SPECIAL_TOKENS}.")
        self.tokens, self.max_len = list(tokens), int(max_len)
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, tags: Sequence[str]) -> list[int]:
        body = [self.ids.get(t, UNK) for t in list(tags)[: self.max_len - 2]]
        ids = [CLS] + body + [SEP]
        return ids + [PAD] * (self.max_len - len(ids))

    def encode_batch(self, tag_lists: Iterable[Sequence[str]]) -> torch.Tensor:
        return torch.tensor([self.encode(t) for t in tag_lists], dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tag ids -> the sorted unique tags, special tokens dropped."""
        return sorted({self.tokens[i] for i in ids if len(SPECIAL_TOKENS) <= i < len(self.tokens)})

    def query(self, batch: int, replace: str = "constant", generator: torch.Generator | None = None) -> torch.Tensor:
        return tag_query(batch, self.max_len, self.vocab_size, replace, generator)


def tag_query(batch: int, max_len: int, vocab_size: int, replace: str = "constant",
              generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """The inference query (spec §6): [CLS], then ``max_len - 2`` query positions (id 1 for
    ``constant``, uniform ids in [0, V-1) for ``random``), then [SEP]."""
    if replace == "random":
        body = torch.randint(0, vocab_size - 1, (batch, max_len - 2), generator=generator)
    else:
        body = torch.full((batch, max_len - 2), UNUSED, dtype=torch.long)
    ids = torch.cat([torch.full((batch, 1), CLS), body, torch.full((batch, 1), SEP)], dim=1)
    return ids.to(device) if device is not None else ids
