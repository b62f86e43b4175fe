"""`fgir report`: one Markdown and one HTML page comparing finished runs.

Inputs are run folders and multi-seed folders (``fgir train --seeds``; aggregated as mean ± sample
std over the finished seeds). The page holds a metrics table (test top-1/top-5, mean per-class
accuracy, macro-F1, ECE, head/medium/tail accuracy when present, parameters, GMACs, training
time), the accuracy-vs-GMACs scatter with seed error bars, the training curves overlaid (val
top-1 and train loss per epoch) and links to each run's own figures.

A path that is not a run folder is an error (nothing is written); a run without test metrics
(no ``final.json``: still training, stopped, or trained without a test split) is left out with a
warning.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.seeds import SEEDS_JSON, is_multi_seed, mean_std, seed_dirs
from ..utils import atomic_path
from .plots import _dedupe_resumed, _is_number, _new_figure, _read_rows, _save_png

ACCURACY_KEYS = ("top1", "top5", "mean_per_class_acc", "macro_f1")
"""Higher is better; in percent."""
LOWER_BETTER = ("ece",)
GROUP_ORDER = ("many", "head", "medium", "few", "tail")
"""Long-tail group accuracies (``<split>_head_acc`` ...) are shown when a run reports them."""
COLUMN_NAMES = {"top1": "top-1", "top5": "top-5", "mean_per_class_acc": "mean/class", "macro_f1": "macro-F1",
                "ece": "ECE ↓", "params": "params (M)", "gmacs": "GMACs", "train_time_s": "train time"}
RUN_FIGURES = (("curves.png", "curves"), ("{split}_confusion_matrix.png", "confusion matrix"),
               ("{split}_per_class.png", "per-class accuracy"), ("{split}_reliability.png", "reliability"),
               ("{split}_confused_pairs.png", "confused pairs"), ("{split}_worst.png", "worst mistakes"))
SCATTER_PNG, CURVES_PNG = "accuracy_vs_gmacs.png", "curves.png"


@dataclass
class RunSummary:
    """One row of the report: a run folder, or a multi-seed folder aggregated over its seeds."""

    label: str
    path: Path
    runs: list[Path]
    """The run folders behind the row (one, or one per finished seed)."""
    seeds: list[int]
    split: str
    config: dict
    metrics: dict[str, dict] = field(default_factory=dict)
    """``{short key: {"mean", "std", "n", "values"}}``; accuracies in percent."""
    gmacs: float | None = None
    multi_seed: bool = False
    unfinished: list[int] = field(default_factory=list)

    @property
    def model(self) -> str:
        m = self.config.get("model") or {}
        plugins = [p.get("name", "?") if isinstance(p, dict) else str(p) for p in m.get("plugins") or []]
        return "+".join([str(m.get("name", "?")), *plugins])

    @property
    def dataset(self) -> str:
        return str((self.config.get("data") or {}).get("name", "?"))

    @property
    def img_size(self) -> int | None:
        return (self.config.get("data") or {}).get("img_size")

    def row(self) -> dict:
        """A flat dict (report.json)."""
        out: dict[str, Any] = {"label": self.label, "path": str(self.path), "model": self.model,
                               "dataset": self.dataset, "img_size": self.img_size, "split": self.split,
                               "seeds": self.seeds, "n": len(self.runs), "gmacs": self.gmacs}
        for k, m in self.metrics.items():
            out[k] = m["mean"]
            out[f"{k}_std"] = m["std"]
        return out


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(run_dir: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _test_split(final: dict) -> str:
    return (final.get("protocol") or {}).get("reported_on") or "test"


def _has_test_metrics(final: dict | None) -> bool:
    return bool(final) and _is_number(final.get(f"{_test_split(final)}_top1"))


def _short_metrics(final: dict) -> dict[str, float]:
    """The numbers the report compares, by short key (``top1``, ``head_acc``, ``params``, ...)."""
    split = _test_split(final)
    out = {k[len(split) + 1:]: float(v) for k, v in final.items()
           if k.startswith(f"{split}_") and _is_number(v)}
    for k in ("params", "params_trainable", "train_time_s", "epochs"):
        if _is_number(final.get(k)):
            out[k] = float(final[k])
    return out


def _aggregate(values: dict[int | str, dict[str, float]]) -> dict[str, dict]:
    keys: list[str] = []
    for v in values.values():
        keys += [k for k in v if k not in keys]
    out = {}
    for k in keys:
        vals = {str(s): v[k] for s, v in values.items() if k in v}
        mean, std = mean_std(list(vals.values()))
        out[k] = {"mean": mean, "std": std, "n": len(vals), "values": vals}
    return out


def _count_gmacs(run_dir: Path) -> float | None:
    from ..benchmarks.flops import count_macs
    from ..engine.checkpoint import load_model, read_meta, resolve_checkpoint

    ck = resolve_checkpoint(run_dir)
    meta = read_meta(ck)
    model = load_model(ck, "cpu")
    return count_macs(model, int(meta.get("model_img_size") or meta["img_size"])) / 1e9


def load_run(path: str | os.PathLike, count_macs: bool = True,
             warn: Callable[[str], None] = print) -> RunSummary | None:
    """Read one report input: a run folder or a multi-seed folder.

    Returns None (after ``warn``) for a run without test metrics. Raises ``FileNotFoundError`` for
    a missing path and ``ValueError`` for a folder that holds no run.
    """
    from ..engine.train import holds_run

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"report: {p} does not exist.")
    if not p.is_dir():
        raise ValueError(f"report: {p} is not a folder; give run folders (runs/<name>) or multi-seed folders.")
    if is_multi_seed(p):
        found = seed_dirs(p)
        listed = (_read_json(p / SEEDS_JSON) or {}).get("seeds_requested") or list(found)
        finals = {s: _read_json(d / "final.json") for s, d in found.items() if s in listed}
        done = {s: f for s, f in finals.items() if _has_test_metrics(f)}
        unfinished = sorted(set(listed) - set(done))
        if not done:
            warn(f"{p}: no seed has test metrics (seed{'s' if len(listed) != 1 else ''} "
                 f"{', '.join(map(str, listed)) or 'none'}: unfinished, or trained without data.test_split); "
                 "left out of the report.")
            return None
        splits = {_test_split(f) for f in done.values()}
        if len(splits) > 1:
            raise ValueError(f"report: the seeds of {p} report on different splits ({', '.join(sorted(splits))}).")
        if unfinished:
            warn(f"{p}: seed{'s' if len(unfinished) != 1 else ''} {', '.join(map(str, unfinished))} without test "
                 f"metrics (unfinished); aggregated over {len(done)} seed{'s' if len(done) != 1 else ''}.")
        runs = [found[s] for s in sorted(done)]
        summary = RunSummary(label=p.name, path=p, runs=runs, seeds=sorted(done), split=splits.pop(),
                             config=_read_config(runs[0]), multi_seed=True, unfinished=unfinished,
                             metrics=_aggregate({s: _short_metrics(done[s]) for s in sorted(done)}))
    elif holds_run(p):
        final = _read_json(p / "final.json")
        if not _has_test_metrics(final):
            why = "no final.json: still training, interrupted or failed" if final is None else \
                "final.json has no test metrics: trained without data.test_split"
            warn(f"{p}: no test metrics ({why}); left out of the report.")
            return None
        cfg = _read_config(p)
        seed = (cfg.get("run") or {}).get("seed")
        summary = RunSummary(label=p.name, path=p, runs=[p], seeds=[seed] if seed is not None else [],
                             split=_test_split(final), config=cfg,
                             metrics=_aggregate({0: _short_metrics(final)}))
    else:
        raise ValueError(f"report: {p} is not a run folder (no config.yaml, metrics.jsonl, last.safetensors or "
                         "final.json) nor a multi-seed folder (no seeds.json or seed<S>/ runs).")
    if count_macs:
        _add_gmacs(summary, warn)
    return summary


def _add_gmacs(summary: RunSummary, warn: Callable[[str], None]) -> None:
    try:
        summary.gmacs = _count_gmacs(summary.runs[0])
    except Exception as e:  # noqa: BLE001  (a model torchprofile cannot trace keeps its row, without GMACs)
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        warn(f"{summary.path}: GMACs not counted ({type(e).__name__}{': ' + reason if reason else ''}).")


def _unique_labels(summaries: list[RunSummary]) -> None:
    """Folder names, extended with parent folders until every label is distinct."""
    depth = 1
    while len({s.label for s in summaries}) < len(summaries) and depth < 6:
        depth += 1
        for s in summaries:
            s.label = "/".join(s.path.resolve().parts[-depth:])


def collect_runs(paths: Sequence[str | os.PathLike], count_macs: bool = True,
                 warn: Callable[[str], None] = print) -> list[RunSummary]:
    """:func:`load_run` for every path (checked first, so a bad path fails before any counting)."""
    if not paths:
        raise ValueError("report: give at least one run folder.")
    seen: set[Path] = set()
    for p in paths:
        rp = Path(p).resolve()
        if rp in seen:
            raise ValueError(f"report: {p} is listed twice.")
        seen.add(rp)
    out = [s for p in paths if (s := load_run(p, count_macs=False, warn=warn)) is not None]
    if not out:
        raise ValueError("report: none of the runs has test metrics; nothing to compare.")
    if count_macs:
        for s in out:
            _add_gmacs(s, warn)
    _unique_labels(out)
    return out


# ----------------------------------------------------------------------------- table
def metric_columns(summaries: list[RunSummary]) -> list[str]:
    """Metric keys shown, in order: accuracies, ECE, long-tail groups (when any run has them)."""
    have = {k for s in summaries for k in s.metrics}
    cols = [k for k in (*ACCURACY_KEYS, "ece") if k in have]
    groups = sorted((k for k in have if re.match(rf"({'|'.join(GROUP_ORDER)})(_acc)?$", k)),
                    key=lambda k: GROUP_ORDER.index(k.split("_")[0]))
    return cols + groups


def _column_name(key: str) -> str:
    if key in COLUMN_NAMES:
        return COLUMN_NAMES[key]
    return key.replace("_acc", " acc.").replace("_", " ")


def format_time(seconds: float, std: float | None = None) -> str:
    """``42 s``, ``12.3 min`` or ``1.50 h`` (with ``± std`` in the same unit)."""
    if seconds < 120:
        unit, div, fmt = "s", 1, ".1f" if seconds < 10 else ".0f"
    else:
        unit, div, fmt = ("min", 60, ".1f") if seconds < 7200 else ("h", 3600, ".2f")
    text = f"{seconds / div:{fmt}}"
    if std is not None:
        text += f" ± {std / div:{fmt}}"
    return f"{text} {unit}"


def _cell(m: dict | None, digits: int = 2) -> str:
    if m is None:
        return "–"
    if m["std"] is None:
        return f"{m['mean']:.{digits}f}"
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def _best(summaries: list[RunSummary], key: str) -> float | None:
    vals = [s.metrics[key]["mean"] for s in summaries if key in s.metrics]
    if len(vals) < 2:
        return None
    return min(vals) if key in LOWER_BETTER else max(vals)


def _shared(summaries: list[RunSummary]) -> dict[str, str]:
    """Settings every row shares (dataset, input size, test split): said once, not as columns."""
    out = {}
    for key, get in (("data", lambda s: s.dataset), ("px", lambda s: str(s.img_size or "–")),
                     ("split", lambda s: s.split)):
        values = {get(s) for s in summaries}
        if len(values) == 1:
            out[key] = values.pop()
    return out


def table_rows(summaries: list[RunSummary]) -> tuple[list[str], list[list[tuple[str, bool]]], int]:
    """Header, rows (each cell ``(text, is_best_in_column)``) and the number of leading text
    columns of the metrics table. Dataset, input size and split are columns only where rows differ."""
    cols = metric_columns(summaries)
    shared = _shared(summaries)
    text = [("run", lambda s: s.label), ("model", lambda s: s.model), ("data", lambda s: s.dataset),
            ("px", lambda s: str(s.img_size or "–")), ("split", lambda s: s.split)]
    text = [(name, get) for name, get in text if name not in shared]
    head = [name for name, _ in text] + ["seeds", *[_column_name(k) for k in cols], "params (M)", "GMACs",
                                         "train time"]
    best = {k: _best(summaries, k) for k in cols}
    rows = []
    for s in summaries:
        row = [(get(s), False) for _, get in text]
        row.append((str(len(s.runs)) if s.multi_seed else "1", False))
        for k in cols:
            m = s.metrics.get(k)
            row.append((_cell(m), m is not None and best[k] is not None and m["mean"] == best[k]))
        p = s.metrics.get("params")
        row.append((f"{p['mean'] / 1e6:.3g}" if p else "–", False))
        row.append((f"{s.gmacs:.4g}" if s.gmacs is not None else "–", False))
        t = s.metrics.get("train_time_s")
        row.append((format_time(t["mean"], t["std"]) if t else "–", False))
        rows.append(row)
    return head, rows, len(text)


# ----------------------------------------------------------------------------- figures
def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_accuracy_vs_gmacs(summaries: list[RunSummary], path: str | os.PathLike, metric: str = "top1") -> str:
    """Accuracy against GMACs, one labelled point per row, error bars = sample std over seeds.

    Rows without GMACs are left out (the x axis falls back to parameters when no row has GMACs).
    """
    use_macs = any(s.gmacs is not None for s in summaries)
    fig = _new_figure(7.5, 5)
    ax = fig.add_subplot()
    drawn, xs = 0, []
    for s, color in zip(summaries, _colors(len(summaries))):
        m = s.metrics.get(metric)
        x = s.gmacs if use_macs else (s.metrics["params"]["mean"] / 1e6 if "params" in s.metrics else None)
        if m is None or x is None:
            continue
        ax.errorbar([x], [m["mean"]], yerr=[m["std"]] if m["std"] is not None else None, fmt="o", color=color,
                    ecolor=color, elinewidth=1.5, capsize=4, markersize=7, zorder=3,
                    label=f"{s.label} (n={len(s.runs)})" if s.multi_seed else s.label)
        ax.annotate(s.label, (x, m["mean"]), textcoords="offset points", xytext=(7, 5), fontsize=8.5)
        drawn += 1
        xs.append(float(x))
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.margins(x=0.2, y=0.15)
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.01, not 10^-2
    elif xs and max(xs) == min(xs):  # one cost: centre it instead of a range of rounding noise
        ax.set_xlim(xs[0] * 0.5, xs[0] * 1.5)
    ax.set_xlabel("GMACs per image (multiply-accumulates at the model's input size)" if use_macs
                  else "parameters (M)")
    ax.set_ylabel(f"test {_column_name(metric)} (%)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{_column_name(metric)} vs {'GMACs' if use_macs else 'parameters'}"
                 + (" (error bars: sample std over seeds)" if any(s.multi_seed for s in summaries) else ""),
                 fontsize=10)
    return _save_png(fig, path)


def _epoch_series(run_dir: Path, key: str) -> dict[float, float]:
    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return {}
    rows, _ = _dedupe_resumed(_read_rows(p), "epoch")
    return {float(r["epoch"]): float(r[key]) for r in rows if _is_number(r.get(key)) and _is_number(r.get("epoch"))}


def curve(summary: RunSummary, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Epochs, mean and (multi-seed, where 2+ seeds logged the epoch) sample std of ``key``."""
    series = [_epoch_series(r, key) for r in summary.runs]
    epochs = sorted(set().union(*series)) if series else []
    mean, std = [], []
    for e in epochs:
        vals = [s[e] for s in series if e in s]
        mu, sd = mean_std(vals)
        mean.append(mu)
        std.append(sd if sd is not None else math.nan)
    x, m, sd = np.array(epochs), np.array(mean), np.array(std)
    return x, m, (sd if len(summary.runs) > 1 else None)


def plot_curves_overlay(summaries: list[RunSummary], path: str | os.PathLike,
                        panels: Sequence[tuple[str, str]] = (("val_top1", "val top-1 (%)"),
                                                             ("train_loss", "train loss"))) -> str:
    """Training curves of every row overlaid: one panel per metric against epoch; multi-seed rows
    show the mean over seeds with a ±1 sample-std band."""
    fig = _new_figure(13, 4.6)
    axes = fig.subplots(1, len(panels))
    colors = _colors(len(summaries))
    for ax, (key, name) in zip(np.atleast_1d(axes), panels):
        drawn = False
        for s, color in zip(summaries, colors):
            x, m, sd = curve(s, key)
            if not len(x):
                continue
            ax.plot(x, m, marker="o" if len(x) <= 40 else None, markersize=3, linewidth=1.6, color=color,
                    label=f"{s.label} (mean of {len(s.runs)})" if s.multi_seed else s.label)
            if sd is not None and np.isfinite(sd).any():
                band = np.nan_to_num(sd)
                if len(x) == 1:  # one epoch: a band has no width, draw the std as an error bar
                    ax.errorbar(x, m, yerr=band, fmt="none", ecolor=color, capsize=4)
                else:
                    ax.fill_between(x, m - band, m + band, color=color, alpha=0.18, linewidth=0)
            drawn = True
        if drawn:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(s.multi_seed for s in summaries):
        fig.suptitle("multi-seed runs: mean over seeds, band = ±1 sample std", fontsize=9)
    return _save_png(fig, path)


# ----------------------------------------------------------------------------- pages
def _rel(target: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix()


def run_figures(run_dir: Path, split: str) -> list[tuple[str, Path]]:
    """``(name, path)`` of the figures a run folder holds (curves, confusion matrix, ...)."""
    out = []
    for pattern, name in RUN_FIGURES:
        p = run_dir / pattern.format(split=split)
        if p.is_file():
            out.append((name, p))
    return out


def _describe(s: RunSummary) -> str:
    c = s.config
    o, d = c.get("optim") or {}, c.get("data") or {}
    epochs = o.get("epochs", "?")
    bits = [f"{s.model} on {s.dataset} at {d.get('img_size', '?')} px", f"{epochs} epoch{'' if epochs == 1 else 's'}",
            f"{o.get('opt', '?')} lr {o.get('lr', '?')}", f"batch {o.get('batch_size', '?')}",
            f"test split '{s.split}'"]
    if s.multi_seed:
        bits.append(f"seeds {', '.join(map(str, s.seeds))}")
        if s.unfinished:
            bits.append(f"unfinished (left out): {', '.join(map(str, s.unfinished))}")
    elif s.seeds:
        bits.append(f"seed {s.seeds[0]}")
    return "; ".join(bits)


def _per_seed_rows(s: RunSummary, cols: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["seed", *[_column_name(k) for k in cols], "train time"]
    rows = []
    for seed in s.seeds:
        key = str(seed)
        cells = [f"{s.metrics[k]['values'][key]:.2f}" if k in s.metrics and key in s.metrics[k]["values"] else "–"
                 for k in cols]
        t = s.metrics.get("train_time_s", {}).get("values", {}).get(key)
        rows.append([str(seed), *cells, format_time(t) if t is not None else "–"])
    return head, rows


def _intro(summaries: list[RunSummary]) -> list[str]:
    n_ms = sum(s.multi_seed for s in summaries)
    shared = _shared(summaries)
    common = [f"dataset {shared['data']}" if "data" in shared else "",
              f"{shared['px']} px" if "px" in shared else "", f"'{shared['split']}' split" if "split" in shared else ""]
    common = [c for c in common if c]
    return [f"{len(summaries)} run{'s' if len(summaries) != 1 else ''}"
            + (f" ({n_ms} multi-seed)" if n_ms else "")
            + (f", all on {', '.join(common)}" if common and len(summaries) > 1 else "")
            + f"; generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by fgir report.",
            "Test metrics of each run's reported checkpoint (final.json), in percent except GMACs and time. "
            "Multi-seed rows: mean ± sample standard deviation (n−1) over the finished seeds. "
            "GMACs: multiply-accumulates of one image through the deployed model at its input size "
            "(torchprofile conventions; FLOPs ≈ 2 × MACs). Bold: best in the column."]


def render_markdown(summaries: list[RunSummary], out_dir: Path) -> str:
    head, rows, n_text = table_rows(summaries)
    lines = ["# Run comparison", "", *_intro(summaries), "", "## Metrics", ""]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join("---" if i < n_text else "---:" for i in range(len(head))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"**{t}**" if b else t.replace("|", "\\|") for t, b in row) + " |")
    lines += ["", "## Accuracy vs GMACs", "", f"![accuracy vs GMACs]({SCATTER_PNG})", "",
              "## Training curves", "", f"![training curves]({CURVES_PNG})", "", "## Runs", ""]
    cols = metric_columns(summaries)
    for s in summaries:
        lines += [f"### {s.label}", "", f"[{s.path}]({_rel(s.path, out_dir)}): {_describe(s)}.", ""]
        for r in s.runs:
            figs = run_figures(r, s.split)
            prefix = f"{r.name}: " if s.multi_seed else ""
            if figs:
                lines.append(f"- {prefix}" + " · ".join(f"[{n}]({_rel(p, out_dir)})" for n, p in figs))
        if s.multi_seed:
            h, rr = _per_seed_rows(s, cols)
            lines += ["", "| " + " | ".join(h) + " |", "|" + "|".join(["---"] + ["---:"] * (len(h) - 1)) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rr]
        lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 1.5rem auto;
       max-width: 1320px; padding: 0 1.2rem; color: #1f2328; line-height: 1.45; }
span.sd { color: #57606a; font-size: .8em; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de;
     padding-bottom: .25rem; font-size: 1.3rem; } h3 { margin: 1.4rem 0 .3rem; font-size: 1.05rem; }
p.note { color: #57606a; font-size: .9rem; margin: .2rem 0; }
table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .5rem; white-space: nowrap; }
th { background: #f6f8fa; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fbfcfd; } td.best { font-weight: 700; background: #e9f6ec !important; }
.wrap { overflow-x: auto; } img.fig { max-width: 100%; border: 1px solid #eaeef2; }
ul.figs { margin: .2rem 0 .5rem; padding-left: 1.2rem; font-size: .9rem; }
code { background: #f6f8fa; padding: .1rem .3rem; border-radius: 4px; font-size: .85rem; }
"""


def _img_tag(path: Path, alt: str, embed: bool, out_dir: Path) -> str:
    if embed:
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    else:
        src = html.escape(_rel(path, out_dir))
    return f'<img class="fig" src="{src}" alt="{html.escape(alt)}">'


def _html_table(head: list[str], rows: list[list[tuple[str, bool]]], n_text: int) -> str:
    e = html.escape
    out = ["<div class=\"wrap\"><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for i, (t, best) in enumerate(row):
            cls = " ".join(c for c in ("num" if i >= n_text else "", "best" if best else "") if c)
            text = e(t)
            if " ± " in t:  # the std smaller and grey, so the means line up and the table stays narrow
                mean, sd = t.split(" ± ", 1)
                text = f"{e(mean)} <span class=\"sd\">±{e(sd)}</span>"
            cells.append(f"<td{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def render_html(summaries: list[RunSummary], out_dir: Path, embed: bool = True) -> str:
    e = html.escape
    head, rows, n_text = table_rows(summaries)
    intro = _intro(summaries)
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
             "<title>fgir report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Run comparison</h1>", *[f"<p class=\"note\">{e(t)}</p>" for t in intro],
             "<h2>Metrics</h2>", _html_table(head, rows, n_text=n_text),
             "<h2>Accuracy vs GMACs</h2>", _img_tag(out_dir / SCATTER_PNG, "accuracy vs GMACs", embed, out_dir),
             "<h2>Training curves</h2>", _img_tag(out_dir / CURVES_PNG, "training curves", embed, out_dir),
             "<h2>Runs</h2>"]
    cols = metric_columns(summaries)
    for s in summaries:
        parts.append(f"<h3>{e(s.label)}</h3>")
        parts.append(f"<p class=\"note\"><a href=\"{e(_rel(s.path, out_dir))}\"><code>{e(str(s.path))}</code></a>: "
                     f"{e(_describe(s))}.</p>")
        items = []
        for r in s.runs:
            figs = run_figures(r, s.split)
            if figs:
                links = " · ".join(f"<a href=\"{e(_rel(p, out_dir))}\">{e(n)}</a>" for n, p in figs)
                items.append(f"<li>{e(r.name) + ': ' if s.multi_seed else ''}{links}</li>")
        if items:
            parts.append("<ul class=\"figs\">" + "".join(items) + "</ul>")
        if s.multi_seed:
            h, rr = _per_seed_rows(s, cols)
            parts.append(_html_table(h, [[(c, False) for c in r] for r in rr], n_text=1))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(paths: Sequence[str | os.PathLike], out: str | os.PathLike, count_macs: bool = True,
                 embed: bool = True, warn: Callable[[str], None] = print) -> dict[str, Path]:
    """Compare runs: write ``report.md``, ``report.html``, ``report.json``, ``accuracy_vs_gmacs.png``
    and ``curves.png`` into ``out``.

    Args:
        paths: run folders and multi-seed folders.
        out: output folder (created).
        count_macs: count each row's GMACs from its checkpoint (else the scatter uses parameters).
        embed: embed the two report figures in the HTML (one portable file); the per-run figures
            are always relative links.
        warn: called with a line for each run left out (no test metrics) or partly aggregated.

    Returns:
        ``{"md", "html", "json", "scatter", "curves"}`` paths.
    """
    summaries = collect_runs(paths, count_macs=count_macs, warn=warn)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"scatter": Path(plot_accuracy_vs_gmacs(summaries, out_dir / SCATTER_PNG)),
             "curves": Path(plot_curves_overlay(summaries, out_dir / CURVES_PNG))}
    for key, name, text in (("md", "report.md", render_markdown(summaries, out_dir)),
                            ("html", "report.html", render_html(summaries, out_dir, embed=embed)),
                            ("json", "report.json", json.dumps([s.row() for s in summaries], indent=2))):
        with atomic_path(out_dir / name) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
        files[key] = out_dir / name
    return files
