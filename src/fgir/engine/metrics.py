"""Accuracy metrics over a complete test split (spec evaluation.md §4).

:class:`MetricAccumulator` collects, per image, the label, the top-5 predictions with their
probabilities and the negative log-likelihood of the true class (on CPU, a few numbers per image,
so K x N probability matrices are never kept). :meth:`MetricAccumulator.compute` turns them into
top-1 / top-5, per-class accuracy, mean per-class accuracy, class deviation, macro-F1, ECE, NLL
and the confusion matrix, using torchmetrics for the confusion matrix, F1 and calibration error.

Under ``torch.distributed`` every rank calls ``compute()`` (or ``sync()``): the per-image records
of all ranks are all-gathered (padded to the longest rank, then trimmed), so every rank sees the
whole test set. When image ids are given, duplicates (``DistributedSampler`` pads the last
batch by repeating images) are dropped so each test image counts exactly once.
"""

from __future__ import annotations

import csv
import os
import statistics
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..utils import atomic_path

ECE_BINS = 15
_TOPK = 5


def _dist_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same trailing shape on every rank, any length) over all ranks, rank order."""
    world = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    t = t.to(device).contiguous()
    n = torch.tensor([t.shape[0]], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    padded = torch.cat([t, t.new_zeros((longest - t.shape[0], *t.shape[1:]))])
    buffers = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(buffers, padded)
    return torch.cat([b[:m] for b, m in zip(buffers, lengths)]).cpu()


def _atomic_write_text(path: str | os.PathLike, rows: Iterable[Sequence[Any]]) -> str:
    """Write CSV rows (any iterable, consumed lazily) to a temporary sibling, then rename onto ``path``."""
    path = os.fspath(path)
    with atomic_path(path) as tmp, open(tmp, "x", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


class MetricAccumulator:
    """Accumulates predictions batch by batch and computes the §4 metrics.

    Args:
        num_classes: K, from the dataset's class table (not from the labels seen).
        class_names: optional K names used in ``per_class`` and the per-class CSV.
        input_type: ``"auto"`` (probabilities if every row is in [0, 1] and sums to 1, else
            logits), ``"logits"`` or ``"probs"``.

    Example:
        >>> acc = MetricAccumulator(num_classes=200)
        >>> for batch in loader:                                       # doctest: +SKIP
        ...     acc.update(model(batch["image"]), batch["label"], ids=batch["index"])
        >>> result = acc.compute()                                    # doctest: +SKIP
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 input_type: str = "auto") -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries but num_classes={num_classes}; "
                             "pass one name per class id")
        if input_type not in ("auto", "logits", "probs"):
            raise ValueError(f"input_type must be 'auto', 'logits' or 'probs', got {input_type!r}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.input_type = input_type
        self.k = min(_TOPK, num_classes)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._labels: list[torch.Tensor] = []
        self._topk_ids: list[torch.Tensor] = []
        self._topk_probs: list[torch.Tensor] = []
        self._nll: list[torch.Tensor] = []
        self._ids: list[Any] = []
        self._has_ids: bool | None = None
        self._synced = False
        self.duplicates_dropped = 0

    def __len__(self) -> int:
        return sum(t.shape[0] for t in self._labels)

    def _to_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and log-probabilities (float32) of a (B, K) batch."""
        x = x.detach().float()
        is_probs = self.input_type == "probs"
        if self.input_type == "auto":
            is_probs = bool(((x >= 0) & (x <= 1)).all()) and bool(
                torch.allclose(x.sum(1), torch.ones(x.shape[0], device=x.device), atol=1e-2))
        if is_probs:
            return x, torch.log(x.clamp_min(1e-12))
        logp = F.log_softmax(x, dim=1)
        return logp.exp(), logp

    @torch.no_grad()
    def update(self, logits_or_probs: torch.Tensor, labels: torch.Tensor,
               ids: Sequence[Any] | torch.Tensor | None = None) -> None:
        """Add one batch.

        Args:
            logits_or_probs: (B, K) logits or probabilities (see ``input_type``).
            labels: (B,) hard integer labels (``batch["label"]``, not mixed soft targets).
            ids: optional B image ids (dataset indices or names) for the predictions CSV and
                for de-duplication across ranks.
        """
        if self._synced:
            raise RuntimeError("update() after sync()/compute() in a distributed run would mix local and "
                               "gathered records; call reset() first")
        if logits_or_probs.ndim != 2 or logits_or_probs.shape[1] != self.num_classes:
            raise ValueError(f"expected (B, {self.num_classes}) logits or probabilities, "
                             f"got shape {tuple(logits_or_probs.shape)}")
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.is_floating_point():
            raise TypeError(f"labels must be a 1-D integer tensor of class ids, got shape "
                            f"{tuple(labels.shape)} dtype {labels.dtype}; "
                            "pass batch['label'], not soft targets")
        if labels.shape[0] != logits_or_probs.shape[0]:
            raise ValueError(f"{logits_or_probs.shape[0]} predictions but {labels.shape[0]} labels")
        labels = labels.detach().long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}], got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        has_ids = ids is not None
        if self._has_ids is None:
            self._has_ids = has_ids
        elif self._has_ids != has_ids:
            raise ValueError("pass ids for every batch or for none")
        if has_ids:
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
            if len(ids) != labels.shape[0]:
                raise ValueError(f"{len(ids)} ids for {labels.shape[0]} images")
            self._ids.extend(ids)

        probs, logp = self._to_probs(logits_or_probs)
        top_p, top_i = probs.topk(self.k, dim=1)
        nll = -logp.gather(1, labels.to(logp.device)[:, None]).squeeze(1)
        self._labels.append(labels.cpu())
        self._topk_ids.append(top_i.cpu())
        self._topk_probs.append(top_p.cpu())
        self._nll.append(nll.cpu())

    def _cat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self._labels:
            return (torch.zeros(0, dtype=torch.long), torch.zeros(0, self.k, dtype=torch.long),
                    torch.zeros(0, self.k), torch.zeros(0))
        return (torch.cat(self._labels), torch.cat(self._topk_ids), torch.cat(self._topk_probs),
                torch.cat(self._nll))

    def sync(self) -> None:
        """All-gather the records of every rank (collective: call on all ranks). No-op without DDP."""
        if self._synced or _dist_world_size() == 1:
            return
        labels, top_i, top_p, nll = self._cat()
        longs = _all_gather_cat(torch.cat([labels[:, None], top_i], dim=1))
        floats = _all_gather_cat(torch.cat([top_p, nll[:, None]], dim=1))
        flags = [None] * dist.get_world_size()
        dist.all_gather_object(flags, bool(self._has_ids))
        ids = None
        if any(flags):
            if not all(flags):
                raise ValueError("some ranks passed ids and others did not")
            gathered: list[list[Any]] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, self._ids)
            ids = [i for part in gathered for i in part]
        if ids is not None:  # DistributedSampler repeats images to even out ranks: keep first copies
            seen: set[Any] = set()
            keep = []
            for j, i in enumerate(ids):
                if i not in seen:
                    seen.add(i)
                    keep.append(j)
            self.duplicates_dropped = len(ids) - len(keep)
            index = torch.tensor(keep, dtype=torch.long)
            longs, floats, ids = longs[index], floats[index], [ids[j] for j in keep]
        self._labels, self._topk_ids = [longs[:, 0]], [longs[:, 1:]]
        self._topk_probs, self._nll = [floats[:, :-1]], [floats[:, -1]]
        self._ids = ids if ids is not None else []
        self._synced = True

    def predictions(self) -> dict[str, Any]:
        """Per-image records: ``image_id`` (list), ``label``, ``topk_ids`` (N, k), ``topk_probs``, ``nll``."""
        if _dist_world_size() > 1 and not self._synced:
            warnings.warn("torch.distributed is initialised but the accumulator has not been synced: only "
                          "this rank's images are returned; call compute() or sync() on every rank first",
                          stacklevel=2)
        labels, top_i, top_p, nll = self._cat()
        ids = list(self._ids) if self._has_ids else list(range(labels.shape[0]))
        return {"image_id": ids, "label": labels, "topk_ids": top_i, "topk_probs": top_p, "nll": nll}

    def compute(self, sync: bool | None = None) -> dict[str, Any]:
        """All metrics over every image seen (on every rank when ``torch.distributed`` is initialised).

        Args:
            sync: gather across ranks first; default: whenever the world size is > 1.

        Returns:
            A dict with ``top1``, ``top5`` (only when K >= 5), ``mean_per_class_acc``,
            ``class_deviation`` (sample std, n-1, over classes with test images; ``None`` with
            fewer than two: NaN is not valid JSON), ``macro_f1`` (torchmetrics; classes neither
            present nor predicted are left out), ``ece`` (15 bins, L1) — all in percent,
            unrounded — plus ``nll`` (mean, nats), ``num_images``, ``num_classes``,
            ``empty_classes`` (ids with no test image),
            ``per_class`` (K dicts: class_id, class_name, correct, total, accuracy; accuracy is
            None for empty classes) and ``confusion_matrix`` (K x K int64, rows = true class,
            columns = predicted).
        """
        # Imported here so that importing fgir.engine stays fast (torchmetrics takes seconds to import).
        from torchmetrics.functional.classification import (
            binary_calibration_error,
            multiclass_confusion_matrix,
            multiclass_f1_score,
        )

        if sync is None:
            sync = _dist_world_size() > 1
        if sync:
            self.sync()
        labels, top_i, top_p, nll = self._cat()
        n, k_cls = labels.shape[0], self.num_classes
        if n == 0:
            raise ValueError("no images were accumulated; call update() before compute()")
        pred = top_i[:, 0]
        cm = multiclass_confusion_matrix(pred, labels, num_classes=k_cls, validate_args=False).long()
        correct_c = cm.diagonal()
        total_c = cm.sum(1)
        correct = int(correct_c.sum())

        names = self.class_names or [str(c) for c in range(k_cls)]
        per_class, accs, empty = [], [], []
        for c in range(k_cls):
            tot, cor = int(total_c[c]), int(correct_c[c])
            acc = 100.0 * cor / tot if tot else None
            if acc is None:
                empty.append(c)
            else:
                accs.append(acc)
            per_class.append({"class_id": c, "class_name": names[c], "correct": cor, "total": tot,
                              "accuracy": acc})
        if empty:
            shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
            warnings.warn(f"{len(empty)} of {k_cls} classes have no test images and are skipped in the mean "
                          f"per-class accuracy and class deviation (class ids: {shown})", stacklevel=2)

        correct_flags = (pred == labels)
        result: dict[str, Any] = {"top1": 100.0 * correct / n}
        if k_cls >= _TOPK:
            result["top5"] = 100.0 * int((top_i == labels[:, None]).any(1).sum()) / n
        result["mean_per_class_acc"] = statistics.fmean(accs)
        result["class_deviation"] = statistics.stdev(accs) if len(accs) > 1 else None
        result["macro_f1"] = 100.0 * float(multiclass_f1_score(
            pred, labels, num_classes=k_cls, average="macro", validate_args=False))
        # Equal to MulticlassCalibrationError(n_bins=15, norm="l1") on the full probabilities: that
        # metric only uses the top-1 confidence and whether the top-1 prediction is right.
        result["ece"] = 100.0 * float(binary_calibration_error(
            top_p[:, 0].float().contiguous(), correct_flags.long(), n_bins=ECE_BINS, norm="l1",
            validate_args=False))
        result["nll"] = float(nll.double().mean())
        result.update(num_images=n, num_classes=k_cls, empty_classes=empty, per_class=per_class,
                      confusion_matrix=cm)
        return result


LONGTAIL_THRESHOLDS = (20, 100)
"""Default [t, h] of :func:`longtail_accuracy`: tail < 20, medium 20-100, head > 100 training
images per class (the buckets proposed for DAF:re, spec animesion.md §7.2)."""


def longtail_accuracy(per_class: Sequence[Mapping[str, Any]], train_counts: Sequence[int] | torch.Tensor,
                      thresholds: Sequence[int] = LONGTAIL_THRESHOLDS) -> dict[str, Any]:
    """Head / medium / tail accuracy by training-set frequency.

    A class with n training images is ``tail`` when n < t, ``medium`` when t <= n <= h and ``head``
    when n > h (``thresholds = (t, h)``). Each bucket's accuracy is the mean per-class accuracy of
    its classes that have evaluated images (so a bucket's many-image classes do not dominate it).

    Args:
        per_class: ``compute()["per_class"]`` (class_id, total, accuracy; accuracy None = no images).
        train_counts: K training-image counts, indexed by class id.
        thresholds: ``(t, h)`` with 0 < t <= h.

    Returns:
        ``{bucket}_acc`` (percent; ``None`` for a bucket without evaluated classes, so final.json
        holds a valid JSON ``null`` rather than ``NaN``), ``{bucket}_classes``
        (classes in the bucket), ``{bucket}_images`` (evaluated images of those classes) for head,
        medium and tail, ``longtail_tail_below`` = t, ``longtail_head_above`` = h and
        ``longtail_buckets``, the rule in words.
    """
    t, h = (int(v) for v in thresholds)
    if not 0 < t <= h:
        raise ValueError(f"long-tail thresholds must satisfy 0 < t <= h, got {list(thresholds)}.")
    counts = [int(c) for c in (train_counts.tolist() if isinstance(train_counts, torch.Tensor) else train_counts)]
    if len(counts) != len(per_class):
        raise ValueError(f"{len(counts)} training counts for {len(per_class)} classes.")
    out: dict[str, Any] = {}
    for name, inside in (("head", lambda n: n > h), ("medium", lambda n: t <= n <= h), ("tail", lambda n: n < t)):
        rows = [r for r in per_class if inside(counts[r["class_id"]])]
        accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
        out[f"{name}_acc"] = statistics.fmean(accs) if accs else None
        out[f"{name}_classes"] = len(rows)
        out[f"{name}_images"] = sum(int(r["total"]) for r in rows)
    out["longtail_tail_below"], out["longtail_head_above"] = t, h
    out["longtail_buckets"] = (f"by training images per class: head > {h}, medium {t}-{h}, tail < {t}; "
                               "accuracy = mean per-class accuracy of the bucket")
    return out


def write_per_class_csv(path: str | os.PathLike, result: dict[str, Any]) -> str:
    """CSV ``class_id, class_name, correct, total, accuracy`` (accuracy in percent, blank if no images)."""
    rows: list[list[Any]] = [["class_id", "class_name", "correct", "total", "accuracy"]]
    for r in result["per_class"]:
        rows.append([r["class_id"], r["class_name"], r["correct"], r["total"],
                     "" if r["accuracy"] is None else repr(r["accuracy"])])
    return _atomic_write_text(path, rows)


def image_path_for(image_id: Any, image_paths: Mapping[Any, Any] | Sequence[Any] | None) -> str:
    """The path recorded for ``image_id`` (a dataset index or a name); the id itself when unknown."""
    if image_paths is None:
        return str(image_id)
    if isinstance(image_paths, Mapping):
        return str(image_paths.get(image_id, image_id))
    if isinstance(image_id, int) and 0 <= image_id < len(image_paths):
        return str(image_paths[image_id])
    return str(image_id)


def predictions_header(k: int) -> list[str]:
    """Columns of the predictions CSV for ``k`` ranked predictions."""
    return (["image_id", "path", "true_id", "true_name", "pred_id", "pred_name", "prob", "correct"]
            + [f"top{j}_{f}" for j in range(1, k + 1) for f in ("name", "prob")])


def write_predictions_csv(path: str | os.PathLike, accumulator: MetricAccumulator,
                          class_names: Sequence[str] | None = None,
                          image_paths: Mapping[Any, Any] | Sequence[Any] | None = None) -> str:
    """One row per image: ``image_id, path, true_id, true_name, pred_id, pred_name, prob, correct``
    and ``top{k}_name, top{k}_prob`` for k = 1..min(5, K), ranked by probability (6 decimals).
    ``image_id, true_id, pred_id, prob`` are the reference per-image CSV's ``image_id, class_id,
    pred_id, prob`` (spec evaluation.md §4; ``prob`` = probability of the predicted class).

    Args:
        path: CSV to write (atomically; rows are generated one at a time).
        accumulator: the filled accumulator.
        class_names: K names (default: the accumulator's, else the ids as text).
        image_paths: the image path of each image id: a sequence indexed by dataset index (the
            ids ``run_inference`` records) or a mapping id -> path. Without it ``path`` holds the id.

    In a distributed run call ``accumulator.compute()`` (or ``sync()``) on every rank first and
    write from one rank.
    """
    p = accumulator.predictions()
    names = list(class_names or accumulator.class_names or [str(c) for c in range(accumulator.num_classes)])
    k = p["topk_ids"].shape[1]

    def rows() -> Iterator[list[Any]]:
        yield predictions_header(k)
        for image_id, y, ids, probs in zip(p["image_id"], p["label"].tolist(), p["topk_ids"].tolist(),
                                           p["topk_probs"].tolist()):
            row: list[Any] = [image_id, image_path_for(image_id, image_paths), y, names[y], ids[0], names[ids[0]],
                              f"{probs[0]:.6f}", int(ids[0] == y)]
            for c, q in zip(ids, probs):
                row += [names[c], f"{q:.6f}"]
            yield row

    return _atomic_write_text(path, rows())


def confused_pairs(confusion_matrix: torch.Tensor | Sequence[Sequence[int]],
                   class_names: Sequence[str] | None = None, top: int | None = None) -> list[dict[str, Any]]:
    """Off-diagonal cells of a confusion matrix ranked from the most frequent confusion down.

    Args:
        confusion_matrix: K x K counts, rows = true class, columns = predicted.
        class_names: K names (ids as text when None).
        top: keep only the first ``top`` pairs.

    Returns:
        Dicts ``true_id, true_name, pred_id, pred_name, count, rate`` (rate = count / images of
        the true class, as a fraction), sorted by count, then rate (both descending), then ids.
        Cells with count 0 are left out.
    """
    cm = torch.as_tensor(confusion_matrix).long()
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square K x K, got shape {tuple(cm.shape)}")
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k} x {k} confusion matrix")
    off = cm.clone()
    off.fill_diagonal_(0)
    totals = cm.sum(1).tolist()
    t_idx, p_idx = torch.nonzero(off > 0, as_tuple=True)
    pairs = [{"true_id": t, "true_name": names[t], "pred_id": q, "pred_name": names[q],
              "count": int(off[t, q]), "rate": int(off[t, q]) / totals[t]}
             for t, q in zip(t_idx.tolist(), p_idx.tolist())]
    pairs.sort(key=lambda r: (-r["count"], -r["rate"], r["true_id"], r["pred_id"]))
    return pairs[:top] if top is not None else pairs


def write_confused_pairs_csv(path: str | os.PathLike, pairs: Iterable[Mapping[str, Any]]) -> str:
    """CSV ``rank, true_id, true_name, pred_id, pred_name, count, rate`` from :func:`confused_pairs`."""
    def rows() -> Iterator[list[Any]]:
        yield ["rank", "true_id", "true_name", "pred_id", "pred_name", "count", "rate"]
        for i, r in enumerate(pairs, 1):
            yield [i, r["true_id"], r["true_name"], r["pred_id"], r["pred_name"], r["count"], f"{r['rate']:.6f}"]

    return _atomic_write_text(path, rows())


def summary_line(result: dict[str, Any]) -> str:
    """One human line, accuracies to 2 decimals: ``top1 91.23 | top5 98.80 | mpca 90.95 ± 6.10 | ...``."""
    parts = [f"top1 {result['top1']:.2f}"]
    if "top5" in result:
        parts.append(f"top5 {result['top5']:.2f}")
    dev = result["class_deviation"]
    parts.append(f"mpca {result['mean_per_class_acc']:.2f} ± " + ("–" if dev is None else f"{dev:.2f}"))
    if "head_acc" in result:
        parts.append(f"head/med/tail (>{result['longtail_head_above']}/{result['longtail_tail_below']}-"
                     f"{result['longtail_head_above']}/<{result['longtail_tail_below']} train imgs) "
                     + "/".join("–" if result[f"{b}_acc"] is None else f"{result[f'{b}_acc']:.2f}"
                                for b in ("head", "medium", "tail")))
    parts.append(f"macro-F1 {result['macro_f1']:.2f}")
    parts.append(f"ECE {result['ece']:.2f}")
    parts.append(f"NLL {result['nll']:.4f}")
    parts.append(f"N {result['num_images']}")
    return " | ".join(parts)
