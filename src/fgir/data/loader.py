"""Batch loaders that keep the cores busy on the model.

``ArrayLoader`` serves batches from the decoded uint8 cache: index a memory-mapped array,
augment the whole batch at once (``BatchTransform``), no worker processes competing with
the model for the two cores. ``DecodeLoader`` decodes images on the fly with DataLoader
workers (for sets too big to cache) and feeds the same batch transform. Both shard the
epoch permutation across DDP ranks and are deterministic given (seed, epoch).

``data.sampler`` chooses how a training epoch draws its images (:func:`sampling_weights`):
``uniform`` is a shuffled pass over every image; ``class_balanced`` (each class equally likely)
and ``sqrt`` (class probability proportional to the square root of its image count) draw the
same number of images with replacement. The draw is one global sequence from a generator seeded
by (seed, epoch), sharded across ranks like the permutation, so DDP ranks see disjoint parts of
one draw and a resumed run draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .datasets import ImageReadError, ManifestDataset, _check_bad, decoded_cache
from .transforms import BatchTransform, load_resized

SAMPLERS = ("uniform", "class_balanced", "sqrt")
"""Choices of ``data.sampler``."""


def sampling_weights(labels: torch.Tensor, sampler: str) -> torch.Tensor | None:
    """Per-image draw weights of ``sampler`` for images with class ``labels`` (None = uniform pass).

    ``class_balanced``: weight 1/n_c, so every class present is drawn with probability 1/K;
    ``sqrt``: weight 1/sqrt(n_c), so class c is drawn with probability sqrt(n_c) / sum sqrt(n_k).
    Within a class every image is equally likely.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"data.sampler={sampler!r} is not allowed; expected one of {', '.join(SAMPLERS)}.")
    if sampler == "uniform" or len(labels) == 0:
        return None
    n_c = torch.bincount(labels).double()[labels]
    return 1.0 / n_c if sampler == "class_balanced" else n_c.rsqrt()


def epoch_indices(n: int, epoch: int, seed: int, shuffle: bool, rank: int, world: int,
                  drop_last: bool, batch_size: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's indices for one epoch (train: padded/dropped to equal length on every rank).

    With ``weights`` (and ``shuffle``) the epoch is ``n`` draws with replacement in proportion to
    them instead of a permutation."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        idx = (torch.randperm(n, generator=g) if weights is None
               else torch.multinomial(weights, n, replacement=True, generator=g))
    else:
        idx = torch.arange(n)
    if world > 1:
        if drop_last:
            per = n // world
            idx = idx[: per * world]
        idx = idx[rank::world]
    if drop_last:
        local_bs = batch_size // world
        idx = idx[: (len(idx) // local_bs) * local_bs] if len(idx) >= local_bs else idx
    return idx


class ArrayLoader:
    def __init__(self, ds: ManifestDataset, transform: BatchTransform, batch_size: int, stored: int,
                 shuffle: bool, drop_last: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 cache_dir: str = "", skip_bad: bool = False, progress: bool = True, max_steps: int = 0,
                 sampler: str = "uniform"):
        self.ds, self.transform = ds, transform
        self.array, self.keep = decoded_cache(ds, stored, cache_dir, skip_bad, progress=progress and rank == 0)
        self.labels = ds.labels[torch.from_numpy(self.keep)]
        self.weights = sampling_weights(self.labels, sampler)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world, self.max_steps = seed, rank, world, max_steps
        self.local_bs = batch_size // world if drop_last else max(1, batch_size // world)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_images(self) -> int:
        return len(self.keep)

    def __len__(self) -> int:
        n = len(epoch_indices(len(self.keep), 0, self.seed, False, self.rank, self.world, self.drop_last,
                              self.batch_size))
        steps = n // self.local_bs if self.drop_last else math.ceil(n / self.local_bs)
        return min(steps, self.max_steps) if self.max_steps else steps

    def __iter__(self):
        idx = epoch_indices(len(self.keep), self.epoch, self.seed, self.shuffle, self.rank, self.world,
                            self.drop_last, self.batch_size, self.weights)
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch * 31 + self.rank)
        for step in range(len(self)):
            sel = idx[step * self.local_bs:(step + 1) * self.local_bs]
            if len(sel) == 0:
                break
            rows = np.sort(self.keep[sel.numpy()])  # sorted reads are faster on a memmap
            order = np.argsort(np.argsort(self.keep[sel.numpy()]))
            x = torch.from_numpy(np.ascontiguousarray(self.array[rows][order])).permute(0, 3, 1, 2)
            y = self.labels[sel]
            ids = torch.from_numpy(self.keep[sel.numpy()])
            yield {"image": self.transform(x, gen), "target": y, "label": y, "index": ids}


class _DecodeDataset(torch.utils.data.Dataset):
    """Decodes one row; an unreadable image comes back as its error message, so the loader
    (not a worker process) decides whether to skip it or stop."""

    def __init__(self, ds: ManifestDataset, stored: int):
        self.ds, self.stored = ds, stored

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        try:
            img = self.ds.load(i)
        except ImageReadError as e:
            return None, i, str(e)
        return torch.from_numpy(load_resized(img, self.stored)).permute(2, 0, 1), i, ""


def _collate_decoded(items):
    """(images of the readable rows, their row ids, [(row id, error) of the unreadable ones])."""
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [(i, err) for x, i, err in items if x is None]
    x = torch.stack([g[0] for g in good]) if good else None
    return x, torch.tensor([g[1] for g in good], dtype=torch.long), bad


class DecodeLoader(ArrayLoader):
    """Same batches as ArrayLoader, decoded on the fly by DataLoader workers.

    With ``skip_bad`` an unreadable image is dropped from its batch (the batch is one image
    shorter; the epoch permutation, hence determinism given (seed, epoch), is unchanged), its row
    is added to ``bad`` (sorted row indices found unreadable so far), and each epoch that met one
    warns like the cached path does. Without it the first unreadable image stops the epoch with
    an ``ImageReadError`` naming the file.
    """

    def __init__(self, ds: ManifestDataset, transform: BatchTransform, batch_size: int, stored: int,
                 shuffle: bool, drop_last: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 num_workers: int = 2, max_steps: int = 0, skip_bad: bool = False, sampler: str = "uniform",
                 **_):
        self.ds, self.transform, self.stored = ds, transform, stored
        self.keep = np.arange(len(ds))
        self.labels = ds.labels
        self.weights = sampling_weights(self.labels, sampler)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world, self.max_steps = seed, rank, world, max_steps
        self.local_bs = batch_size // world if drop_last else max(1, batch_size // world)
        self.num_workers, self.skip_bad = num_workers, skip_bad
        self.bad: list[int] = []
        self.epoch = 0

    def __iter__(self):
        idx = epoch_indices(len(self.ds), self.epoch, self.seed, self.shuffle, self.rank, self.world,
                            self.drop_last, self.batch_size, self.weights)
        batches = [idx[i * self.local_bs:(i + 1) * self.local_bs].tolist() for i in range(len(self))]
        dl = torch.utils.data.DataLoader(_DecodeDataset(self.ds, self.stored), batch_sampler=batches,
                                         num_workers=self.num_workers, persistent_workers=False,
                                         collate_fn=_collate_decoded)
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch * 31 + self.rank)
        bad: list[int] = []
        try:
            for x, ids, errors in dl:
                if errors:
                    if not self.skip_bad:
                        raise ImageReadError(f"{errors[0][1]}. Set data.skip_bad=true to skip and count "
                                             "unreadable images.")
                    bad += [i for i, _ in errors]
                    if x is None:
                        if self.world > 1:  # a rank that skips a step would leave the others waiting
                            raise ImageReadError(f"Every image of a batch is unreadable: rows {bad[-len(errors):]} "
                                                 f"of {self.ds.name}/{self.ds.split}.")
                        continue
                y = self.labels[ids]
                yield {"image": self.transform(x, gen), "target": y, "label": y, "index": ids}
        finally:
            if bad:
                self.bad = sorted(set(self.bad) | set(bad))
                _check_bad(sorted(bad), self.ds, skip_bad=True)
