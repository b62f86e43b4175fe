"""Multi-seed runs: one config trained with several seeds, each into its own run folder under one
parent, and the mean ± sample standard deviation (n−1) of every number in their ``final.json``.

Layout: ``<run.output_dir>/<name>/seed<S>/`` (an ordinary run folder per seed) plus
``<name>/seeds.json`` and ``<name>/seeds.md`` (the aggregate, rewritten after every seed). Running
the same command again skips finished seeds, resumes interrupted ones with ``train(resume=...)``
and starts missing ones. A sweep file runs several config variants, each as a multi-seed run.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..config import Config, ConfigError, load_config
from ..utils import atomic_path

SEEDS_JSON = "seeds.json"
SEEDS_MD = "seeds.md"
_SEED_DIR = re.compile(r"^seed(\d+)$")

INFO_KEYS = ("epochs", "params", "params_trainable")
"""Numbers of ``final.json`` that describe the run rather than measure it (aggregated in seeds.json,
listed once in seeds.md)."""
CONSTANT_SUFFIXES = ("_num_images", "_num_classes", "_classes", "_images", "_below", "_above")
"""Test keys that count or configure rather than measure (class/image counts, long-tail thresholds)."""

METRIC_NAMES = {"top1": "top-1 (%)", "top5": "top-5 (%)", "mean_per_class_acc": "mean per-class acc. (%)",
                "class_deviation": "class deviation", "macro_f1": "macro-F1 (%)", "ece": "ECE (%)",
                "nll": "NLL", "head_acc": "head acc. (%)", "medium_acc": "medium acc. (%)",
                "tail_acc": "tail acc. (%)", "train_time_s": "train time (s)"}


def check_seeds(seeds: Iterable[int]) -> list[int]:
    """The seeds as a list; an empty list, a negative, non-integer or repeated seed is an error."""
    out: list[int] = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"seeds: each seed must be an integer >= 0, got {s!r}.")
        if s in out:
            raise ConfigError(f"seeds: seed {s} is listed twice ({' '.join(map(str, seeds))}); list each seed once.")
        out.append(s)
    if not out:
        raise ConfigError("seeds: give at least one seed, e.g. --seeds 0 1 2.")
    return out


def multi_seed_name(cfg: Config) -> str:
    """``run.name``, or ``<data.name>_<model.name>[_<task.name>]`` (the run name without ``_s<seed>``)."""
    if cfg.run.name:
        return cfg.run.name
    task = "" if cfg.task.name == "classification" else f"_{cfg.task.name}"
    return f"{cfg.data.name}_{cfg.model.name}{task}"


def seed_config(cfg: Config, seed: int, parent: str | os.PathLike) -> Config:
    """A copy of ``cfg`` for one seed: ``run.seed=seed``, written to ``<parent>/seed<seed>``."""
    c = copy.deepcopy(cfg)
    c.run.seed, c.run.output_dir, c.run.name = int(seed), str(parent), f"seed{seed}"
    return c.validate()


def seed_dirs(parent: str | os.PathLike) -> dict[int, Path]:
    """``{seed: folder}`` of the ``seed<S>`` sub-folders of ``parent`` that hold a run, by seed."""
    from .train import holds_run

    p = Path(parent)
    found = {}
    if p.is_dir():
        for child in p.iterdir():
            m = _SEED_DIR.match(child.name)
            if m and holds_run(child):
                found[int(m.group(1))] = child
    return dict(sorted(found.items()))


def is_multi_seed(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a multi-seed parent (``seeds.json``, or ``seed<S>`` run folders)."""
    p = Path(folder)
    return (p / SEEDS_JSON).is_file() or bool(seed_dirs(p))


def _read_final(run_dir: Path) -> dict | None:
    try:
        res = json.loads((run_dir / "final.json").read_text())
    except (OSError, ValueError):
        return None
    return res if isinstance(res, dict) else None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n−1; ``None`` for a single value)."""
    vals = [float(v) for v in values]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate_finals(finals: dict[int, dict]) -> dict:
    """Mean ± sample std over seeds of every number found in the ``final.json`` dicts.

    Args:
        finals: ``{seed: final.json contents}``.

    Returns:
        ``{"seeds": [...], "reported_on": split, "metrics": {key: {"mean", "std", "n", "values"}}}``;
        a key missing from some seeds is aggregated over the seeds that have it (its ``n`` says so).
    """
    splits = {(f.get("protocol") or {}).get("reported_on") for f in finals.values()} - {None}
    if len(splits) > 1:
        raise ValueError(f"the seeds report on different splits ({', '.join(sorted(splits))}); aggregate "
                         "runs evaluated on the same test split.")
    keys: list[str] = []
    for f in finals.values():
        keys += [k for k, v in f.items() if _number(v) and k not in keys]
    metrics = {}
    for k in keys:
        vals = [(s, float(f[k])) for s, f in finals.items() if _number(f.get(k))]
        mean, std = mean_std([v for _, v in vals])
        metrics[k] = {"mean": mean, "std": std, "n": len(vals), "values": {str(s): v for s, v in vals}}
    return {"seeds": sorted(finals), "reported_on": splits.pop() if splits else None, "metrics": metrics}


def aggregate_seeds(parent: str | os.PathLike, seeds: Sequence[int] | None = None) -> dict:
    """Aggregate the finished ``seed<S>`` runs of a multi-seed parent (see :func:`aggregate_finals`).

    Args:
        parent: the multi-seed folder.
        seeds: the seeds asked for (default: every ``seed<S>`` run found); the ones without a
            ``final.json`` are listed under ``"unfinished"``.
    """
    parent = Path(parent)
    found = seed_dirs(parent)
    wanted = list(seeds) if seeds is not None else list(found)
    finals, unfinished = {}, []
    for s in wanted:
        res = _read_final(found[s]) if s in found else None
        if res is None:
            unfinished.append(s)
        else:
            finals[s] = res
    out = {"parent": str(parent), "seeds_requested": wanted, "unfinished": unfinished, **aggregate_finals(finals)}
    out["runs"] = {str(s): f"seed{s}" for s in finals}
    return out


def metric_label(key: str, split: str | None) -> str:
    """Readable name of a final.json key (``test_top1`` -> ``top-1 (%)``)."""
    short = key[len(split) + 1:] if split and key.startswith(f"{split}_") else key
    return METRIC_NAMES.get(short, short)


def format_mean_std(m: dict, digits: int = 2) -> str:
    """``mean ± std`` (``mean`` alone for one value)."""
    if m["std"] is None:
        return f"{m['mean']:.{digits}f}"
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def shown_metrics(agg: dict) -> list[str]:
    """The keys a summary table shows: the test metrics, then the training time."""
    split = agg.get("reported_on")
    keys = [k for k in agg["metrics"] if split and k.startswith(f"{split}_") and not k.endswith(CONSTANT_SUFFIXES)]
    return keys + [k for k in ("train_time_s",) if k in agg["metrics"]]


def seeds_markdown(agg: dict, title: str = "") -> str:
    """The ``seeds.md`` table: one row per metric, mean ± sample std, then each seed's value."""
    seeds = agg["seeds"]
    split = agg.get("reported_on")
    lines = [f"# {title or Path(agg['parent']).name}: {len(seeds)} seed{'s' if len(seeds) != 1 else ''}", ""]
    info = {k: agg["metrics"][k]["mean"] for k in INFO_KEYS if k in agg["metrics"]}
    desc = [f"seeds {', '.join(map(str, seeds)) or 'none finished'}"]
    if split:
        desc.append(f"metrics on the {split} split")
        n = agg["metrics"].get(f"{split}_num_images")
        if n:
            desc[-1] += f" ({int(n['mean']):,} images)"
    if "params" in info:
        desc.append(f"{int(info['params']):,} parameters")
    if "epochs" in info:
        desc.append(f"{info['epochs']:g} epoch{'s' if info['epochs'] != 1 else ''}")
    lines.append("; ".join(desc) + ". Mean ± sample standard deviation (n−1) over the seeds.")
    if agg.get("unfinished"):
        lines.append(f"\nNot finished (left out): seed {', '.join(map(str, agg['unfinished']))}.")
    lines.append("")
    head = ["metric", "mean ± std", *[f"seed {s}" for s in seeds]]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for k in shown_metrics(agg):
        m = agg["metrics"][k]
        digits = 1 if k == "train_time_s" else 2
        cells = [f"{m['values'][str(s)]:.{digits}f}" if str(s) in m["values"] else "–" for s in seeds]
        lines.append("| " + " | ".join([metric_label(k, split), format_mean_std(m, digits), *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_seeds_summary(parent: str | os.PathLike, seeds: Sequence[int] | None = None,
                        config: Config | None = None) -> dict:
    """Aggregate the seeds of ``parent`` and write ``seeds.json`` and ``seeds.md`` (atomically)."""
    from ..config import to_dict

    parent = Path(parent)
    agg = aggregate_seeds(parent, seeds)
    if config is not None:
        c = to_dict(config)
        c["run"].pop("seed", None)
        agg["config"] = c
    elif (parent / SEEDS_JSON).is_file():  # keep the config an earlier call recorded
        try:
            agg["config"] = json.loads((parent / SEEDS_JSON).read_text()).get("config")
        except ValueError:
            pass
    with atomic_path(parent / SEEDS_JSON) as tmp:
        Path(tmp).write_text(json.dumps(agg, indent=2))
    with atomic_path(parent / SEEDS_MD) as tmp:
        Path(tmp).write_text(seeds_markdown(agg))
    return agg


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train_seeds(cfg: Config, seeds: Iterable[int], overwrite: bool = False, resume_override: bool = False,
                parent: str | os.PathLike | None = None, train_fn: Callable[..., dict] | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Train ``cfg`` once per seed into ``<parent>/seed<S>`` and aggregate the results.

    Resumable: a finished seed (every epoch done and ``final.json`` present) is skipped, an
    interrupted one continues from its last checkpoint, a missing one starts. A seed folder
    trained with a different config is an error (unless ``resume_override``), checked for every
    seed before anything trains.

    Args:
        cfg: the config; its ``run.seed`` is replaced by each seed.
        seeds: the seeds (distinct integers >= 0).
        overwrite: retrain every seed from scratch, replacing its folder.
        resume_override: accept config changes when continuing or skipping existing seeds.
        parent: the multi-seed folder (default: ``run.output_dir/<run.name or data_model[_task]>``).
        train_fn: the training function (default :func:`fgir.engine.train.train`).
        log: where progress lines go.

    Returns:
        The aggregate written to ``seeds.json`` (see :func:`aggregate_seeds`).
    """
    from . import train as train_mod

    seeds = check_seeds(seeds)
    train_fn = train_fn or train_mod.train
    cfg.validate()
    parent = Path(parent) if parent is not None else Path(cfg.run.output_dir) / multi_seed_name(cfg)
    if train_mod.holds_run(parent):
        raise ConfigError(f"{parent} holds a single run (config.yaml, metrics or final.json), not seed folders; "
                          "give the multi-seed run another run.name.")
    plan = []
    for s in seeds:
        c, d = seed_config(cfg, s, parent), parent / f"seed{s}"
        if overwrite or not train_mod.holds_run(d):
            plan.append((s, c, d, "new"))
            continue
        done = train_mod._finished_result(d, c) is not None
        changes = train_mod.resume_changes(d, c)
        if not done:
            changes.pop("optim.epochs", None)  # more epochs: the resume re-plans the schedule
        if changes and not resume_override:
            listed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:6])
            raise ConfigError(f"{d} was trained with another config ({listed}); seeds of one multi-seed run share "
                              "one config. Use another run.name, --overwrite to retrain every seed, or "
                              "--resume-override to keep them.")
        plan.append((s, c, d, "done" if done else "resume"))
    what = {"done": "finished, skipped", "resume": "resumes", "new": "new"}
    log(f"multi-seed run {parent}: " + "; ".join(f"seed {s} {what[a]}" for s, _, _, a in plan))
    for s, c, d, action in plan:
        if action == "done":
            continue
        log(f"--- seed {s} ({d}) ---")
        if action == "resume":
            train_fn(c, resume=str(d), resume_override=resume_override)
        else:
            train_fn(c, overwrite=overwrite)
        if _is_main():
            write_seeds_summary(parent, seeds, config=cfg)
    if not _is_main():
        return {}
    agg = write_seeds_summary(parent, seeds, config=cfg)
    log(f"wrote {parent / SEEDS_JSON} and {parent / SEEDS_MD}")
    return agg


# ----------------------------------------------------------------------------- sweeps
def load_sweep(path: str | os.PathLike) -> tuple[list[int], dict[str, list[str]]]:
    """Read a sweep file: ``seeds`` (optional list) and ``variants`` ({name: overrides}).

    Each variant's overrides are a list of ``key=value`` strings or a mapping ``{key: value}``;
    its name becomes the run folder of that multi-seed run::

        seeds: [1, 10, 100]
        variants:
          lr0.01: [optim.lr=0.01]
          lr0.1: {optim.lr: 0.1, optim.warmup_epochs: 1}
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise FileNotFoundError(f"--sweep {p}: cannot read it ({e.strerror or e}).") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"--sweep {p}: not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict) or set(data) - {"seeds", "variants"} or "variants" not in data:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"--sweep {p}: expected a mapping with 'variants' ({{name: overrides}}) and optional "
                          f"'seeds' (a list), got {got}.")
    seeds = data.get("seeds") or []
    if not isinstance(seeds, list):
        raise ConfigError(f"--sweep {p}: 'seeds' must be a list of integers, got {seeds!r}.")
    variants = data["variants"]
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"--sweep {p}: 'variants' must map names to overrides, got {variants!r}.")
    out: dict[str, list[str]] = {}
    for name, ov in variants.items():
        name = str(name)
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ConfigError(f"--sweep {p}: variant name {name!r} must be a plain folder name.")
        if isinstance(ov, dict):
            ov = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in ov.items()]
        elif ov is None:
            ov = []
        if not isinstance(ov, list) or not all(isinstance(o, str) and "=" in o for o in ov):
            raise ConfigError(f"--sweep {p}: variant {name!r}: overrides must be a list of key=value strings or a "
                              f"mapping, got {ov!r}.")
        if any(o.split("=", 1)[0].strip() in ("run.seed", "run.name") for o in ov):
            raise ConfigError(f"--sweep {p}: variant {name!r} sets run.seed or run.name; the sweep sets both "
                              "(seeds from 'seeds', the folder from the variant name).")
        out[name] = ov
    return check_seeds(seeds) if seeds else [], out


def run_sweep(sweep: str | os.PathLike, files: Sequence[str] = (), overrides: Sequence[str] = (),
              seeds: Sequence[int] | None = None, overwrite: bool = False, resume_override: bool = False,
              train_fn: Callable[..., dict] | None = None, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Train every variant of a sweep file as a multi-seed run (``run.output_dir/<variant>``).

    ``seeds`` (e.g. from ``--seeds``) replaces the file's seeds. Every variant's config is built
    and validated before the first one trains. Returns ``{variant: aggregate}``.
    """
    file_seeds, variants = load_sweep(sweep)
    use = check_seeds(seeds) if seeds else file_seeds
    if not use:
        raise ConfigError(f"--sweep {sweep}: no seeds: list them under 'seeds' in the file or pass --seeds.")
    cfgs = {name: load_config(list(files), [*overrides, *ov, f"run.name={name}"]) for name, ov in variants.items()}
    return {name: train_seeds(c, use, overwrite=overwrite, resume_override=resume_override, train_fn=train_fn,
                              log=log) for name, c in cfgs.items()}
