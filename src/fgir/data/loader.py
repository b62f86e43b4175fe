"""Batch loaders that keep the cores busy on the model.

``ArrayLoader`` serves batches from the decoded uint8 cache: index a memory-mapped array,
augment the whole batch at once (``BatchTransform``), no worker processes competing with
the model for the two cores. ``DecodeLoader`` decodes images on the fly with DataLoader
workers (for sets too big to cache) and feeds the same batch transform. Both shard the
epoch permutation across DDP ranks and are deterministic given (seed, epoch).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .datasets import ImageReadError, ManifestDataset, _check_bad, decoded_cache
from .transforms import BatchTransform, load_resized


def epoch_indices(n: int, epoch: int, seed: int, shuffle: bool, rank: int, world: int,
                  drop_last: bool, batch_size: int) -> torch.Tensor:
    """This rank's indices for one epoch (train: padded/dropped to equal length on every rank)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        idx = torch.randperm(n, generator=g)
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
                 cache_dir: str = "", skip_bad: bool = False, progress: bool = True, max_steps: int = 0):
        self.ds, self.transform = ds, transform
        self.array, self.keep = decoded_cache(ds, stored, cache_dir, skip_bad, progress=progress and rank == 0)
        self.labels = ds.labels[torch.from_numpy(self.keep)]
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
                            self.drop_last, self.batch_size)
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
                 num_workers: int = 2, max_steps: int = 0, skip_bad: bool = False, **_):
        self.ds, self.transform, self.stored = ds, transform, stored
        self.keep = np.arange(len(ds))
        self.labels = ds.labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world, self.max_steps = seed, rank, world, max_steps
        self.local_bs = batch_size // world if drop_last else max(1, batch_size // world)
        self.num_workers, self.skip_bad = num_workers, skip_bad
        self.bad: list[int] = []
        self.epoch = 0

    def __iter__(self):
        idx = epoch_indices(len(self.ds), self.epoch, self.seed, self.shuffle, self.rank, self.world,
                            self.drop_last, self.batch_size)
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
