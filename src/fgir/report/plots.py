"""Report figures: training curves, confusion matrix, most-confused pairs, per-class accuracy,
reliability diagram, worst-misclassified grid, accuracy vs cost.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
backend switch, safe in headless and multi-threaded runs) and written as PNG atomically: to a
temporary file in the target folder, then ``os.replace``. Every function returns the path.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..utils import atomic_path

MAX_TICK_LABELS = 40
MAX_NAMED_CLASSES = 120
MAX_CELL_ANNOTATIONS = 20


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> str:
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_order(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """A class order that puts classes confused with each other next to each other.

    Greedy chaining on the symmetrised, row-normalised off-diagonal confusion: start at the
    unplaced class with the most confusion, repeatedly append the unplaced class it is most
    confused with; classes never confused come last, in id order. Deterministic (ties: lowest id).
    """
    m = _as_numpy(cm).astype(np.float64)
    k = m.shape[0]
    totals = m.sum(1, keepdims=True)
    r = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    np.fill_diagonal(r, 0.0)
    s = r + r.T
    strength = s.sum(1)
    placed = np.zeros(k, dtype=bool)
    order: list[int] = []
    while True:
        free = np.flatnonzero(~placed & (strength > 0))
        if free.size == 0:
            break
        cur = int(free[np.argmax(strength[free])])
        while True:
            order.append(cur)
            placed[cur] = True
            row = np.where(placed, -1.0, s[cur])
            nxt = int(np.argmax(row))
            if row[nxt] <= 0:
                break
            cur = nxt
    order += np.flatnonzero(~placed).tolist()
    return np.asarray(order, dtype=np.int64)


def plot_confusion_matrix(cm: torch.Tensor | np.ndarray, class_names: Sequence[str] | None,
                          path: str | os.PathLike, normalize: bool = True, title: str | None = None,
                          order: str = "auto") -> str:
    """Heat map of a K x K confusion matrix (rows = true class, columns = predicted).

    Up to ``MAX_TICK_LABELS`` classes every cell is labelled with its name at a normal size; up
    to ``MAX_NAMED_CLASSES`` (about 120) every row and column still carries its name in a small
    font on a figure that grows with K; beyond that no tick labels are drawn (use the ranked
    confused-pairs table for names).

    Args:
        cm: counts, e.g. ``MetricAccumulator.compute()["confusion_matrix"]``.
        class_names: K names for the ticks (ids when None).
        path: PNG to write.
        normalize: divide each row by its total (classes without images stay 0).
        title: optional title.
        order: ``"id"`` (class-table order), ``"cluster"`` (:func:`confusion_order`: mutually
            confused classes side by side, so confusions show as blocks near the diagonal) or
            ``"auto"`` (id up to ``MAX_TICK_LABELS`` classes, cluster above).
    """
    m = _as_numpy(cm).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square K x K, got shape {m.shape}")
    k = m.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k} x {k} confusion matrix")
    if order not in ("auto", "id", "cluster"):
        raise ValueError(f"order must be 'auto', 'id' or 'cluster', got {order!r}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if order == "auto":
        order = "id" if k <= MAX_TICK_LABELS else "cluster"
    perm = confusion_order(m) if order == "cluster" else np.arange(k)
    m = m[np.ix_(perm, perm)]
    names = [names[i] for i in perm]
    if normalize:
        totals = m.sum(1, keepdims=True)
        m = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)

    named = k <= MAX_NAMED_CLASSES
    if k <= MAX_TICK_LABELS:
        fontsize = max(6.0, 10.0 - k / 8)
        side = float(max(5.0, 3.0 + 0.22 * k))
    elif named:
        fontsize, side = 5.5, 0.105 * k + 1.0  # ~one 5.5-pt line of text per row
    else:
        fontsize, side = 0.0, 14.0
    label_room = (0.075 * fontsize * max((len(n) for n in names), default=1) / 6.0) if fontsize else 0.0
    fig = _new_figure(side + label_room + 1.6, side + label_room + 0.8)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(m.max()), 1.0)
    # With many classes most confusions are small: a square-root scale keeps them visible.
    large = k > MAX_TICK_LABELS
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax) if large else Normalize(vmin=0.0, vmax=vmax)
    im = ax.imshow(m, cmap="Blues", interpolation="nearest", norm=norm)
    label = "fraction of true class" if normalize else "images"
    fig.colorbar(im, ax=ax, shrink=0.6 if named and large else 0.8,
                 label=label + (" (square-root scale)" if large else ""))
    how = "classes side by side when confused" if order == "cluster" else "class-id order"
    ax.set_xlabel(f"predicted class ({how})")
    ax.set_ylabel(f"true class ({how})")
    ax.set_title(title or f"Confusion matrix ({k} classes{', row-normalised' if normalize else ''})")
    if named:
        ax.set_xticks(range(k), names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(k), names, fontsize=fontsize)
        ax.tick_params(length=2, pad=1)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"predicted class ({how}; {k} classes, names in the confused-pairs table)")
    if k <= MAX_CELL_ANNOTATIONS:
        hi = m.max() if m.size else 0.0
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    text = f"{m[i, j]:.2f}" if normalize else f"{int(m[i, j])}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > 0.6 * hi else "black")
    return _save_png(fig, path, dpi=120 if k <= MAX_TICK_LABELS else 150)


def plot_confused_pairs(pairs: Sequence[Mapping[str, Any]], path: str | os.PathLike, top: int = 25,
                        title: str | None = None) -> str:
    """Horizontal bars of the ``top`` most-confused (true → predicted) pairs, most frequent at the top.

    Args:
        pairs: ranked dicts with ``true_name``, ``pred_name``, ``count`` and ``rate`` (fraction of
            the true class), e.g. :func:`fgir.engine.metrics.confused_pairs`.
        path: PNG to write.
        top: how many pairs to draw.
        title: optional title.
    """
    shown = list(pairs)[:top]
    n = len(shown)
    fig = _new_figure(9.5, 1.4 + 0.28 * max(n, 3))
    ax = fig.add_subplot()
    if not shown:
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", transform=ax.transAxes,
                color="gray")
        ax.set_axis_off()
    else:
        labels = [f"{r['true_name']}  →  {r['pred_name']}" for r in shown]
        counts = [int(r["count"]) for r in shown]
        y = np.arange(n)
        ax.barh(y, counts, color="tab:red", alpha=0.75)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        for yi, r in zip(y, shown):
            ax.text(r["count"], yi, f" {r['count']}  ({100 * r['rate']:.0f} % of true class)",
                    va="center", fontsize=7)
        ax.set_xlim(0, max(counts) * 1.35)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("misclassified images (true class → predicted class)")
        ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"Most-confused class pairs (top {n})")
    return _save_png(fig, path)


def plot_per_class_accuracy(per_class: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                            title: str | None = None, n_named: int = 15) -> str:
    """Per-class accuracy sorted from worst to best.

    Up to ``MAX_NAMED_CLASSES`` classes: one named horizontal bar per class (worst at the top).
    Above: the sorted accuracy curve with the ``n_named`` worst and best classes marked and
    listed by name beside it. Classes without images are left out (and counted in the title).

    Args:
        per_class: dicts with ``class_name``, ``accuracy`` (percent or None) and ``total``, e.g.
            ``MetricAccumulator.compute()["per_class"]``.
        path: PNG to write.
        title: optional title.
        n_named: how many worst / best classes to name on a large-K plot.
    """
    rows = sorted((r for r in per_class if r.get("accuracy") is not None),
                  key=lambda r: (r["accuracy"], str(r["class_name"])))
    empty = len(per_class) - len(rows)
    k = len(rows)
    accs = np.array([float(r["accuracy"]) for r in rows])
    mean = float(accs.mean()) if k else math.nan
    head = title or (f"Per-class accuracy, sorted ({k} classes, mean {mean:.2f} %"
                     + (f", {empty} without images" if empty else "") + ")")
    if k <= MAX_NAMED_CLASSES:
        fig = _new_figure(8.5, 1.3 + 0.125 * max(k, 4))
        ax = fig.add_subplot()
        y = np.arange(k)
        colors = _accuracy_colors(accs)
        ax.barh(y, accs, color=colors, height=0.8)
        fs = 8 if k <= 40 else 5.5
        ax.set_yticks(y, [f"{r['class_name']} ({r['total']})" for r in rows], fontsize=fs)
        ax.tick_params(axis="y", length=0, pad=2)
        ax.invert_yaxis()
        ax.set_ylim(k - 0.5, -0.5)
        for yi, a in zip(y, accs):
            ax.text(a + 0.5, yi, f"{a:.0f}", va="center", fontsize=fs - 1, color="dimgray")
        if k:  # the mean is in the title; a legend would cover bars
            ax.axvline(mean, color="black", linestyle="--", linewidth=1)
        ax.set_xlim(0, 106)  # room for the value after a 100 % bar
        ax.set_xticks(range(0, 101, 20))
        ax.set_xlabel("accuracy (%)   [label: class name (test images)]   dashed: mean")
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(head, fontsize=10)
        return _save_png(fig, path, dpi=120 if k <= 40 else 150)

    fig = _new_figure(13, 7)
    ax, ax_txt = fig.subplots(1, 2, width_ratios=[1.5, 1])
    x = np.arange(1, k + 1)
    ax.plot(x, accs, color="tab:blue", linewidth=1.5)
    n = min(n_named, k // 2)
    ax.scatter(x[:n], accs[:n], color="tab:red", s=14, zorder=3, label=f"worst {n}")
    ax.scatter(x[k - n:], accs[k - n:], color="tab:green", s=14, zorder=3, label=f"best {n}")
    ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.2f} %")
    ax.set_xlim(0, k + 1)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("class rank (worst → best)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(head, fontsize=10)
    ax_txt.set_axis_off()

    def lines(sel):
        return "\n".join(f"{r['accuracy']:6.1f}  {r['class_name']}" for r in sel)

    ties = int((accs == accs[0]).sum()) if k else 0
    worst_head = f"worst {n} (accuracy %, name)" + (f"; {ties} classes tie at {accs[0]:.1f} %" if ties > n else "")
    ax_txt.text(0.0, 1.0, worst_head + "\n" + lines(rows[:n]), va="top", ha="left",
                family="monospace", fontsize=8, color="darkred", transform=ax_txt.transAxes)
    ax_txt.text(0.0, 0.48, f"best {n}\n" + lines(rows[k - n:][::-1]), va="top", ha="left",
                family="monospace", fontsize=8, color="darkgreen", transform=ax_txt.transAxes)
    return _save_png(fig, path)


def _accuracy_colors(accs: np.ndarray) -> list:
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn"]
    return [cmap(0.1 + 0.8 * float(a) / 100.0) for a in accs]


def select_worst_misclassified(labels: torch.Tensor | np.ndarray, topk_ids: torch.Tensor | np.ndarray,
                               topk_probs: torch.Tensor | np.ndarray, n: int = 16) -> list[int]:
    """Positions of the ``n`` misclassified images whose (wrong) top-1 prediction is most confident.

    Args:
        labels: (N,) true class ids.
        topk_ids: (N, k) ranked predicted ids (column 0 = top-1).
        topk_probs: (N, k) their probabilities.
        n: how many to return.

    Returns:
        Row positions, highest wrong-class confidence first (ties: lower position first).
    """
    y = _as_numpy(labels).astype(np.int64).reshape(-1)
    ids = _as_numpy(topk_ids).astype(np.int64)
    probs = _as_numpy(topk_probs).astype(np.float64)
    if ids.ndim != 2 or probs.shape != ids.shape or ids.shape[0] != y.shape[0]:
        raise ValueError(f"expected labels (N,), topk_ids and topk_probs (N, k); got {y.shape}, {ids.shape}, "
                         f"{probs.shape}")
    wrong = np.flatnonzero(ids[:, 0] != y)
    ranked = wrong[np.lexsort((wrong, -probs[wrong, 0]))]
    return ranked[:max(n, 0)].tolist()


def _load_tile(path: str, size: int = 224) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return np.asarray(im)
    except (OSError, ValueError):
        return None


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def plot_worst_grid(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, cols: int = 4,
                    title: str | None = None) -> str:
    """Grid of misclassified images, one tile each with the true name and the top-3 predictions.

    Args:
        records: dicts with ``path`` (image file), ``true_name`` and ``top`` (a list of
            ``(name, probability)`` pairs, highest first); see :func:`select_worst_misclassified`.
            An unreadable image becomes a grey tile saying so.
        path: PNG to write.
        cols: tiles per row.
        title: optional title.
    """
    n = len(records)
    cols = max(1, min(cols, n or 1))
    nrows = max(1, math.ceil(n / cols))
    fig = _new_figure(max(3.3 * cols, 8.0), 3.9 * nrows + 0.4 if records else 2.0)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_axis_off()
    if not records:
        axes[0].set_axis_on()
        axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center", color="gray",
                     transform=axes[0].transAxes)
    for ax in axes[:max(n, 1)]:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax, r in zip(axes, records):
        img = _load_tile(str(r["path"]))
        if img is None:
            ax.imshow(np.full((8, 8, 3), 200, dtype=np.uint8))
            ax.text(0.5, 0.5, "image not readable", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8)
        else:
            ax.imshow(img)
        ax.set_title(f"true: {_short(str(r['true_name']), 42)}", fontsize=8.5, color="darkgreen",
                     loc="left", pad=3)
        lines = []
        for j, (name, prob) in enumerate(list(r["top"])[:3], 1):
            mark = " ✓" if name == r["true_name"] else ""
            lines.append(f"{j}. {prob:5.1%} {_short(str(name), 40)}{mark}")
        # an x label (not free text) so that the constrained layout makes room for it
        ax.set_xlabel("\n".join(lines), loc="left", fontsize=7.5, family="monospace", color="darkred",
                      labelpad=2)
    fig.suptitle(title or f"Most confident mistakes ({n} images; top-3 predictions, ✓ = true class)",
                 fontsize=11)
    return _save_png(fig, path, dpi=110)


def plot_reliability(confidence: torch.Tensor | np.ndarray, correct: torch.Tensor | np.ndarray,
                     path: str | os.PathLike, n_bins: int = 15, ece: float | None = None,
                     title: str | None = None) -> str:
    """Reliability diagram from the top-1 confidence and whether the top-1 prediction was right.

    This is all the diagram (and the ECE) needs, so it works from the accumulator's records.

    Args:
        confidence: (N,) top-1 probabilities.
        correct: (N,) booleans / 0-1.
        path: PNG to write.
        n_bins: equal-width confidence bins (15, as the reported ECE).
        ece: the ECE in percent to print (e.g. ``result["ece"]``, so the figure matches the
            metrics JSON); computed with torchmetrics (L1, ``n_bins``) when None.
        title: optional title prefix.
    """
    conf_np = _as_numpy(confidence).astype(np.float64).reshape(-1)
    correct_np = _as_numpy(correct).astype(np.float64).reshape(-1)
    if conf_np.shape != correct_np.shape:
        raise ValueError(f"confidence {conf_np.shape} and correct {correct_np.shape} must have the same length")
    if ece is None:
        from torchmetrics.functional.classification import binary_calibration_error

        ece = 100.0 * float(binary_calibration_error(torch.as_tensor(conf_np, dtype=torch.float32),
                                                     torch.as_tensor(correct_np).long(), n_bins=n_bins,
                                                     norm="l1", validate_args=False)) if conf_np.size else 0.0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf_np, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    acc_bin = np.divide(np.bincount(idx, weights=correct_np, minlength=n_bins), counts,
                        out=np.zeros(n_bins), where=counts > 0)
    conf_bin = np.divide(np.bincount(idx, weights=conf_np, minlength=n_bins), counts,
                         out=np.zeros(n_bins), where=counts > 0)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n_bins
    filled = counts > 0

    fig = _new_figure(5.5, 6.5)
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.bar(centers[filled], acc_bin[filled], width=width, edgecolor="black", color="tab:blue", alpha=0.85,
           label="accuracy in bin")
    # hatched outline only: over- and under-confident gaps stay readable on top of the blue bars
    ax.bar(centers[filled], (conf_bin - acc_bin)[filled], bottom=acc_bin[filled], width=width,
           facecolor="none", edgecolor="tab:red", hatch="///", linewidth=1.0, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    n = conf_np.size
    ax.legend(loc="best", fontsize=8)
    head = f"{title + ' — ' if title else ''}ECE {ece:.2f} % ({n_bins} bins, N = {n})"
    if n:
        head += f"\naccuracy {100 * correct_np.mean():.1f} %, mean confidence {100 * conf_np.mean():.1f} %"
    ax.set_title(head, fontsize=10)
    ax_hist.bar(centers, counts, width=width, edgecolor="black", color="tab:gray")
    ax_hist.set_xlabel("confidence of top-1 prediction")
    ax_hist.set_ylabel("images")
    return _save_png(fig, path)


def plot_reliability_diagram(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                             path: str | os.PathLike, n_bins: int = 15, title: str | None = None) -> str:
    """Reliability diagram (accuracy vs confidence of the top-1 prediction) with a count histogram.

    Args:
        probs: (N, K) probabilities (logits are softmaxed when any value lies outside [0, 1]).
        labels: (N,) integer labels.
        path: PNG to write.
        n_bins: equal-width confidence bins (15 to match the reported ECE).
        title: optional title; the ECE (torchmetrics, L1, ``n_bins``) is always shown.
    """
    p = torch.as_tensor(_as_numpy(probs), dtype=torch.float32)
    y = torch.as_tensor(_as_numpy(labels)).long()
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"expected probs (N, K) and labels (N,), got {tuple(p.shape)} and {tuple(y.shape)}")
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):
        p = p.softmax(1)
    conf, pred = p.max(1)
    return plot_reliability(conf, pred == y, path, n_bins=n_bins, title=title)


def _read_rows(jsonl_path_or_rows: str | os.PathLike | Iterable[Mapping[str, Any]],
               ) -> list[Mapping[str, Any]]:
    if isinstance(jsonl_path_or_rows, (str, os.PathLike)):
        rows = []
        with open(jsonl_path_or_rows) as f:
            for line in f:
                try:
                    row = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:  # a line cut short by a crash or a concurrent writer
                    row = None
                if isinstance(row, dict):
                    rows.append(row)
        return rows
    return list(jsonl_path_or_rows)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _dedupe_resumed(rows: list[Mapping[str, Any]], x_key: str | None,
                    ) -> tuple[list[Mapping[str, Any]], list[float]]:
    """One row per x, sorted; rows logged for the same x are merged, later values winning (a
    resumed run re-logs the epochs after its checkpoint). Also the x values where the log went
    back in time."""
    if x_key is None:
        return rows, []
    resumed, last = [], -math.inf
    by_x: dict[float, Mapping[str, Any]] = {}
    for r in rows:
        x = r.get(x_key)
        if not _is_number(x):
            continue
        if x <= last:
            resumed.append(float(x))
        last = x
        fresh = {k: v for k, v in r.items() if v is not None}  # later values win, None keeps a gap
        by_x[float(x)] = {**by_x.get(float(x), {}), **fresh}
    return [by_x[x] for x in sorted(by_x)], sorted(set(resumed))


def plot_training_curves(jsonl_path_or_rows: str | os.PathLike | Iterable[Mapping[str, Any]],
                         path: str | os.PathLike, title: str | None = None) -> str:
    """Loss, learning rate and top-1 against epoch from a metrics JSONL (or its rows).

    Rows are dicts such as ``{"epoch": 3, "train_loss": 1.2, "train_loss_ce": 1.0, "lr": 0.01,
    "val_top1": 71.5}``. Panels: every key containing ``loss`` (``train_loss`` and ``val_loss``
    solid, the ``train_loss_*`` components dashed); ``lr`` (log scale); every key containing
    ``top1``. The x axis is ``epoch`` (``step`` or the row number when absent). Missing, None or
    non-finite values leave a gap only in their own curve (e.g. ``val_*`` every N epochs); when an
    epoch was logged twice (a resumed run) the last row wins and a dotted line marks the resume.
    Unparseable lines are skipped.
    """
    rows = _read_rows(jsonl_path_or_rows)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    x_key = "epoch" if "epoch" in keys else "step" if "step" in keys else None
    rows, resumed = _dedupe_resumed(rows, x_key)
    losses = [k for k in keys if "loss" in k]
    losses.sort(key=lambda k: (k not in ("train_loss", "val_loss"), k))  # totals first
    panels = [("loss", losses, False),
              ("learning rate", [k for k in keys if k == "lr" or k.startswith("lr")], True),
              ("top-1 (%)", [k for k in keys if "top1" in k], False)]

    fig = _new_figure(14, 4.2)
    axes = fig.subplots(1, 3)
    for ax, (name, series, logy) in zip(axes, panels):
        drawn = False
        for key in series:
            pts = [(r[x_key] if x_key else i, r[key]) for i, r in enumerate(rows)
                   if _is_number(r.get(key)) and (x_key is None or _is_number(r.get(x_key)))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            component = name == "loss" and key not in ("train_loss", "val_loss")
            ax.plot(xs, ys, marker="o" if len(xs) <= 60 else None, markersize=2.5 if component else 3.5,
                    linestyle="--" if component else "-", linewidth=1.0 if component else 1.6, label=key)
            drawn = True
        if drawn:
            if logy and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
                ax.set_yscale("log")
            ax.legend(fontsize=7.5, loc="best")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        for i, x in enumerate(resumed):
            ax.axvline(x, color="gray", linestyle=":", linewidth=1, label="resumed" if i == 0 else None)
        if x_key is not None:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            xs_all = {float(r[x_key]) for r in rows if _is_number(r.get(x_key))}
            if len(xs_all) == 1:  # a single epoch: centre it instead of a sub-integer axis
                x0 = xs_all.pop()
                ax.set_xlim(x0 - 1, x0 + 1)
        ax.set_title(name)
        ax.set_xlabel(x_key or "row")
        ax.grid(alpha=0.3)
    last = rows[-1] if rows else {}
    summary = f"{len(rows)} {x_key or 'row'}{'s' if len(rows) != 1 else ''}"
    if x_key and rows:
        summary += f", last {x_key} {last.get(x_key)}"
    fig.suptitle(f"{title + ' — ' if title else ''}{summary}" + (" (resumed)" if resumed else ""), fontsize=10)
    return _save_png(fig, path)


def _pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another with lower-or-equal cost and higher-or-equal accuracy."""
    front, best = [], -math.inf
    for px, py in sorted(points, key=lambda t: (t[0], -t[1])):
        if py > best:
            front.append((px, py))
            best = py
    return front


def plot_accuracy_vs_cost(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, x: str = "gmacs",
                          y: str = "top1", label: str = "model", group: str | None = None,
                          logx: bool | None = None, pareto: bool = True, title: str | None = None) -> str:
    """Scatter of accuracy against cost (GMACs, parameters, img/s ...), one labelled point per row.

    Args:
        rows: dicts holding at least ``x``, ``y`` and ``label`` keys (rows missing them are skipped).
        path: PNG to write.
        x, y, label: the keys to plot and to annotate with.
        group: optional key colouring points by series (e.g. ``"method"``).
        logx: log-scaled x axis; default when the x values span more than 20x.
        pareto: draw the front of rows not beaten at lower-or-equal cost (assumes lower x is better).
        title: optional title.
    """
    pts = [r for r in rows if _is_number(r.get(x)) and _is_number(r.get(y))]
    fig = _new_figure(7, 5)
    ax = fig.add_subplot()
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in pts:
        groups.setdefault(r.get(group) if group else None, []).append(r)
    for g, members in groups.items():
        ax.scatter([r[x] for r in members], [r[y] for r in members], s=30, zorder=3,
                   label=str(g) if group else None)
    for r in pts:
        ax.annotate(str(r.get(label, "")), (r[x], r[y]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    if pts and pareto and len(pts) > 1:
        front = _pareto_front([(float(r[x]), float(r[y])) for r in pts])
        ax.plot(*zip(*front), "--", color="gray", linewidth=1, zorder=2, label="Pareto front")
    xs = [float(r[x]) for r in pts]
    if logx is None:
        logx = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 20
    if logx:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the point labels
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save_png(fig, path)
