"""Report figures: confusion matrix, reliability diagram, training curves, accuracy vs cost.

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


def plot_confusion_matrix(cm: torch.Tensor | np.ndarray, class_names: Sequence[str] | None,
                          path: str | os.PathLike, normalize: bool = True, title: str | None = None) -> str:
    """Heat map of a K x K confusion matrix (rows = true class, columns = predicted).

    Args:
        cm: counts, e.g. ``MetricAccumulator.compute()["confusion_matrix"]``.
        class_names: K names for the ticks (ids when None); tick labels are hidden when K > 40.
        path: PNG to write.
        normalize: divide each row by its total (classes without images stay 0).
        title: optional title.
    """
    m = _as_numpy(cm).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square K x K, got shape {m.shape}")
    k = m.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k} x {k} confusion matrix")
    if normalize:
        totals = m.sum(1, keepdims=True)
        m = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    side = float(min(16.0, max(5.0, 3.0 + 0.22 * k)))
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(m.max()), 1.0)
    # With many classes most confusions are small: a square-root scale keeps them visible.
    large = k > MAX_TICK_LABELS
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax) if large else Normalize(vmin=0.0, vmax=vmax)
    im = ax.imshow(m, cmap="Blues", interpolation="nearest", norm=norm)
    label = "fraction of true class" if normalize else "images"
    fig.colorbar(im, ax=ax, shrink=0.8, label=label + (" (square-root scale)" if large else ""))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"Confusion matrix ({k} classes{', row-normalised' if normalize else ''})")
    if k <= MAX_TICK_LABELS:
        names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=90, fontsize=max(5, 10 - k // 8))
        ax.set_yticks(range(k), names, fontsize=max(5, 10 - k // 8))
    else:  # names would be unreadable: a few class-id ticks only
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.set_xlabel("predicted class id")
        ax.set_ylabel("true class id")
    if k <= MAX_CELL_ANNOTATIONS:
        hi = m.max() if m.size else 0.0
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    text = f"{m[i, j]:.2f}" if normalize else f"{int(m[i, j])}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > 0.6 * hi else "black")
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
    from torchmetrics.functional.classification import multiclass_calibration_error

    p = torch.as_tensor(_as_numpy(probs), dtype=torch.float32)
    y = torch.as_tensor(_as_numpy(labels)).long()
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"expected probs (N, K) and labels (N,), got {tuple(p.shape)} and {tuple(y.shape)}")
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):
        p = p.softmax(1)
    conf, pred = p.max(1)
    correct = (pred == y).double().numpy()
    conf_np = conf.double().numpy()
    ece = 100.0 * float(multiclass_calibration_error(p, y, num_classes=p.shape[1], n_bins=n_bins, norm="l1"))

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf_np, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    acc_bin = np.divide(np.bincount(idx, weights=correct, minlength=n_bins), counts,
                        out=np.zeros(n_bins), where=counts > 0)
    conf_bin = np.divide(np.bincount(idx, weights=conf_np, minlength=n_bins), counts,
                         out=np.zeros(n_bins), where=counts > 0)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n_bins
    filled = counts > 0

    fig = _new_figure(5.5, 6.5)
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.bar(centers[filled], acc_bin[filled], width=width, edgecolor="black", color="tab:blue",
           label="accuracy")
    ax.bar(centers[filled], (conf_bin - acc_bin)[filled], bottom=acc_bin[filled], width=width,
           color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title + ' — ' if title else ''}ECE {ece:.2f} % ({n_bins} bins, N = {len(y)})")
    ax_hist.bar(centers, counts, width=width, edgecolor="black", color="tab:gray")
    ax_hist.set_xlabel("confidence of top-1 prediction")
    ax_hist.set_ylabel("images")
    return _save_png(fig, path)


def _read_rows(jsonl_path_or_rows: str | os.PathLike | Iterable[Mapping[str, Any]],
               ) -> list[Mapping[str, Any]]:
    if isinstance(jsonl_path_or_rows, (str, os.PathLike)):
        with open(jsonl_path_or_rows) as f:
            return [json.loads(line) for line in f if line.strip()]
    return list(jsonl_path_or_rows)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_training_curves(jsonl_path_or_rows: str | os.PathLike | Iterable[Mapping[str, Any]],
                         path: str | os.PathLike, title: str | None = None) -> str:
    """Loss, learning rate and top-1 against epoch from a metrics JSONL (or its rows).

    Rows are dicts such as ``{"epoch": 3, "train_loss": 1.2, "lr": 0.01, "val_top1": 71.5}``.
    Panels: every key ending in ``loss``; ``lr`` (and keys starting with ``lr``); every key
    containing ``top1``. The x axis is ``epoch`` (``step`` or the row number when absent);
    a row missing a key simply has no point on that curve.
    """
    rows = _read_rows(jsonl_path_or_rows)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    x_key = "epoch" if "epoch" in keys else "step" if "step" in keys else None
    panels = [("loss", [k for k in keys if k.endswith("loss")], False),
              ("learning rate", [k for k in keys if k == "lr" or k.startswith("lr")], True),
              ("top-1 (%)", [k for k in keys if "top1" in k], False)]

    fig = _new_figure(13, 4)
    axes = fig.subplots(1, 3)
    for ax, (name, series, logy) in zip(axes, panels):
        drawn = False
        for key in series:
            pts = [(r[x_key] if x_key else i, r[key]) for i, r in enumerate(rows)
                   if _is_number(r.get(key)) and (x_key is None or _is_number(r.get(x_key)))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) <= 60 else None, markersize=3, label=key)
            drawn = True
        if drawn:
            if logy and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
                ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(name)
        ax.set_xlabel(x_key or "row")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
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
