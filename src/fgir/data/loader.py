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

from .datasets import ManifestDataset, decoded_cache
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
    def __init__(self, ds: ManifestDataset, stored: int):
        self.ds, self.stored = ds, stored

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return torch.from_numpy(load_resized(self.ds.load(i), self.stored)).permute(2, 0, 1), i


class DecodeLoader(ArrayLoader):
    """Same batches as ArrayLoader, decoded on the fly by DataLoader workers."""

    def __init__(self, ds: ManifestDataset, transform: BatchTransform, batch_size: int, stored: int,
                 shuffle: bool, drop_last: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 num_workers: int = 2, max_steps: int = 0, **_):
        self.ds, self.transform, self.stored = ds, transform, stored
        self.keep = np.arange(len(ds))
        self.labels = ds.labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world, self.max_steps = seed, rank, world, max_steps
        self.local_bs = batch_size // world if drop_last else max(1, batch_size // world)
        self.num_workers = num_workers
        self.epoch = 0

    def __iter__(self):
        idx = epoch_indices(len(self.ds), self.epoch, self.seed, self.shuffle, self.rank, self.world,
                            self.drop_last, self.batch_size)
        batches = [idx[i * self.local_bs:(i + 1) * self.local_bs].tolist() for i in range(len(self))]
        dl = torch.utils.data.DataLoader(_DecodeDataset(self.ds, self.stored), batch_sampler=batches,
                                         num_workers=self.num_workers, persistent_workers=False)
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch * 31 + self.rank)
        for x, ids in dl:
            y = self.labels[ids]
            yield {"image": self.transform(x, gen), "target": y, "label": y, "index": ids}
