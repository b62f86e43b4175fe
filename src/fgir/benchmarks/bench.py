"""`fgir bench`: parameters, MACs, latency, throughput and peak memory of models and checkpoints.

For each model x input size x batch size one row: parameters (total, trainable), GMACs of one
image on the real token path (:func:`fgir.benchmarks.flops.count_macs`), batch-1 latency and
batched inference throughput (:func:`fgir.benchmarks.speed.measure_throughput`: warm-up
discarded, CUDA synchronised, median and spread over repeats), peak memory, and with ``train``
the forward + backward + optimiser-step throughput
(:func:`fgir.benchmarks.speed.measure_train_throughput`). Rows are appended to a CSV whose name
carries the environment fingerprint (device name, torch/CUDA versions, dtype, threads), in the
manner of timm's ``results/`` tables, so runs on one machine and setting accumulate in one file.

Peak memory:

* CUDA: the caching allocator's ``max_memory_allocated`` over warm-up and timing (weights,
  input, activations, workspace; with ``train`` also gradients and optimiser state), and its
  growth over what was allocated before the first step (weights and input).
* CPU: peak resident set size (``VmHWM`` of ``/proc/self/status``) of a fresh Python process that
  builds the same model, allocates the same input, returns freed heap to the OS
  (``malloc_trim``), resets the peak (``/proc/self/clear_refs``) and runs two steps; the growth
  is that peak minus the RSS just before the first step (activations, temporaries, thread and
  library workspaces; with ``train`` gradients and optimiser state). A fresh process per
  configuration keeps memory that an earlier configuration left mapped from hiding this one's.
  Where the peak cannot be reset, RSS is sampled every millisecond in a thread (may miss short
  spikes); the ``mem_method`` column says which was used.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import gc
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .flops import count_macs, count_params

BENCH_COLUMNS = [
    "timestamp", "model", "checkpoint", "plugins", "inference", "num_classes", "img_size", "batch_size",
    "params", "params_trainable", "gmacs",
    "latency_ms", "latency_ms_min", "latency_ms_max", "latency_spread_pct", "latency_ms_p90",
    "infer_img_per_s", "infer_img_per_s_min", "infer_img_per_s_max", "infer_spread_pct",
    "infer_peak_mem_mib", "infer_peak_mem_growth_mib",
    "train_img_per_s", "train_img_per_s_min", "train_img_per_s_max", "train_spread_pct",
    "train_peak_mem_mib", "train_peak_mem_growth_mib",
    "mem_method", "repeats", "warmup", "iters", "min_seconds",
    "device", "device_name", "dtype", "threads", "torch", "timm", "cuda", "cudnn", "python", "fgir",
]
"""Columns of the ``fgir bench`` CSV. Timing columns: ``latency_ms*`` = one image (batch 1), mean
time per iteration in each repeat, median / min / max over repeats, p90 over every timed
iteration; ``infer_*`` / ``train_*`` = images per second at ``batch_size``, median / min / max over
repeats; ``*_spread_pct`` = (max - min) / median x 100. Memory columns in MiB (see the module
docstring for what they count on each device); empty when not measured."""


# ----------------------------------------------------------------------------- what to benchmark
@dataclass
class BenchSource:
    """A model to benchmark, rebuildable in another process: a registry / timm name (with plug-ins)
    or an fgir checkpoint (run folder or ``.safetensors``; its deployed model and inference variant)."""

    kind: str  # "name" | "checkpoint"
    ref: str
    plugins: list = field(default_factory=list)
    num_classes: int = 200
    trainable: list = field(default_factory=list)
    inference: str = ""
    model_kwargs: dict = field(default_factory=dict)

    def default_size(self) -> int:
        if self.kind == "checkpoint":
            from ..engine.checkpoint import read_meta

            meta = read_meta(self.ref)
            return int(meta.get("model_img_size") or meta["img_size"])
        return 224

    def build(self, img_size: int, device: str = "cpu") -> tuple[nn.Module, dict]:
        """The model (eval mode, on ``device``) and ``info``: label, checkpoint, plugins, inference,
        num_classes."""
        if self.kind == "checkpoint":
            from ..engine.checkpoint import load_model

            model = load_model(self.ref, device)
            meta = model.fgir_meta
            cfg = meta["config"]["model"]
            plugins = [p.get("name") for p in cfg.get("plugins", [])]
            inference = self.inference or cfg.get("inference", "default") or "default"
            label, classes, ck = cfg["name"], int(meta["num_classes"]), self.ref
        else:
            from ..engine.build import build_model
            from .cost import cost_config

            cfg = cost_config(self.ref, img_size, self.plugins, self.trainable or None, **self.model_kwargs)
            model = build_model(cfg, self.num_classes).to(device).eval()
            plugins = [p.name for p in cfg.model.plugins]
            inference, label, classes, ck = self.inference or "default", self.ref, self.num_classes, ""
        info = {"model": "+".join([label, *plugins]), "checkpoint": ck, "plugins": " ".join(plugins),
                "inference": inference, "num_classes": classes}
        return model, info


class _Variant(nn.Module):
    """An inference variant (e.g. CAL's ``tta``) as a module, so it is timed and counted as deployed."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model, self._fn = model, fn

    def forward(self, x: torch.Tensor) -> Any:
        return self._fn(x)


def _deployed(model: nn.Module, inference: str) -> nn.Module:
    if inference in ("", "default"):
        return model
    from ..models.plugins import get_inference

    return _Variant(model, get_inference(model, inference))


def resolve_source(ref: str, plugins: list | None = None, num_classes: int = 200, trainable: list | None = None,
                   inference: str = "", **model_kwargs: Any) -> BenchSource:
    """A :class:`BenchSource` for ``ref``: an existing path is a checkpoint (checked now), anything
    else a model name (unknown names raise ``KeyError`` with close matches)."""
    p = Path(ref)
    if p.exists():
        from ..engine.checkpoint import read_meta, resolve_checkpoint

        if plugins:
            raise ValueError(f"--plugins applies to model names; checkpoint {ref} brings its own plug-ins.")
        ck = resolve_checkpoint(p)
        read_meta(ck)
        return BenchSource("checkpoint", str(ck), inference=inference)
    if ref.endswith(".safetensors") or ("/" in ref and not ref.startswith(("hf-hub:", "hf_hub:", "local-dir:"))):
        raise FileNotFoundError(f"checkpoint {ref} not found (a run folder or .safetensors file was expected).")
    if not ref.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        import timm

        from ..models import backbones  # noqa: F401  (registers our builders)
        from ..models.factory import model_names
        from ..registry import MODELS, close_matches

        if ref not in MODELS and not timm.is_model(ref):
            hits = close_matches(ref, model_names())
            hint = f" Did you mean: {', '.join(hits)}?" if hits else ""
            raise KeyError(f"Unknown model '{ref}'.{hint} See `fgir list models`.")
    if num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {num_classes}.")
    return BenchSource("name", ref, list(plugins or []), int(num_classes), list(trainable or []), inference,
                       dict(model_kwargs))


# ----------------------------------------------------------------------------- CPU peak memory
_STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not permitted or not Linux."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc), so the baseline RSS holds only live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _RSSSampler(threading.Thread):
    def __init__(self, interval: float = 0.001):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("VmRSS") or 0)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self.join()
        return max(self.peak, _status_kib("VmRSS") or 0)


def peak_rss_growth(step: Callable[[], Any], steps: int = 2) -> dict[str, Any]:
    """Run ``step`` ``steps`` times; peak RSS (MiB) and its growth over the RSS just before.

    Returns ``{"peak_mib", "growth_mib", "method"}``; method ``vmhwm`` (exact kernel high-water
    mark after a reset), ``rss_sampled`` (1 ms sampling thread) or ``unavailable`` (no /proc)."""
    _trim_heap()
    before = _status_kib("VmRSS")
    if before is None:
        for _ in range(steps):
            step()
        return {"peak_mib": None, "growth_mib": None, "method": "unavailable"}
    if _status_kib("VmHWM") is not None and _reset_peak_rss():
        for _ in range(steps):
            step()
        peak, method = _status_kib("VmHWM") or 0, "vmhwm"
    else:
        sampler = _RSSSampler()
        sampler.start()
        try:
            for _ in range(steps):
                step()
        finally:
            peak = sampler.stop()
        method = "rss_sampled"
    return {"peak_mib": peak / 1024, "growth_mib": max(0, peak - before) / 1024, "method": method}


def _memory_step(model: nn.Module, size: int, batch: int, dtype: str, mode: str,
                 num_classes: int | None) -> Callable:
    from .speed import _autocast, make_train_step

    dev = torch.device("cpu")
    x = torch.randn(batch, 3, size, size)
    if mode == "train":
        return make_train_step(model, x, dev, dtype, num_classes=num_classes)
    model.eval()

    def step() -> None:
        with torch.inference_mode(), _autocast(dev, dtype):
            model(x)

    return step


def measure_cpu_memory(source: BenchSource | nn.Module, img_size: int, batch_size: int, dtype: str = "fp32",
                       mode: str = "infer", threads: int | None = None, inference: str = "default",
                       num_classes: int | None = None) -> dict[str, Any]:
    """Peak RSS and its growth for one configuration on the CPU (see the module docstring).

    A :class:`BenchSource` is measured in a fresh Python process; a built module (the Python API)
    can only be measured in this process (``method`` gets ``_in_process``: memory an earlier
    measurement left mapped can hide part of the growth)."""
    threads = threads or torch.get_num_threads()
    if isinstance(source, nn.Module):
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        was_training = source.training
        try:
            res = peak_rss_growth(_memory_step(_deployed(source, inference) if mode == "infer" else source,
                                               img_size, batch_size, dtype, mode, num_classes))
        finally:
            torch.set_num_threads(saved)
            source.train(was_training)
        return {**res, "method": res["method"] + "_in_process"}
    job = {"source": asdict(source), "img_size": img_size, "batch_size": batch_size, "dtype": dtype, "mode": mode,
           "threads": threads}
    proc = subprocess.run([sys.executable, "-m", "fgir.benchmarks.bench", "--memory-worker", json.dumps(job)],
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the memory measurement of {source.ref} at {img_size} px, batch {batch_size} ({mode}) "
                           f"failed in its own process: {err}")
    return json.loads(lines[-1])


def _memory_worker(job: dict) -> dict:
    torch.set_num_threads(int(job["threads"]))
    src = BenchSource(**job["source"])
    model, info = src.build(int(job["img_size"]))
    target = model if job["mode"] == "train" else _deployed(model, info["inference"])
    step = _memory_step(target, int(job["img_size"]), int(job["batch_size"]), job["dtype"], job["mode"],
                        info["num_classes"])
    return peak_rss_growth(step)


# ----------------------------------------------------------------------------- environment, CSV, table
def bench_environment(device: torch.device, dtype: str, threads: int) -> dict[str, Any]:
    """Environment columns and the fingerprint that names the CSV."""
    from .. import __version__
    from .speed import environment

    env = environment(device, dtype, threads=threads)
    parts = [env["device_name"], f"torch{env['torch']}"]
    if env["cuda"]:
        parts.append(f"cuda{env['cuda']}")
    parts += [dtype, f"t{threads}"]
    env["fingerprint"] = "_".join("".join(c if c.isalnum() or c in ".-+" else "-" for c in str(p)) for p in parts)
    env["fgir"] = __version__
    return env


def bench_csv_path(out_dir: str | Path, env: dict) -> Path:
    """``<out_dir>/bench_<fingerprint>.csv``."""
    return Path(out_dir) / f"bench_{env['fingerprint']}.csv"


def _check_csv(path: Path) -> None:
    if path.is_file() and path.stat().st_size > 0:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != BENCH_COLUMNS:
            raise ValueError(f"{path} has other columns than this fgir writes ({len(header)} vs "
                             f"{len(BENCH_COLUMNS)}); move it away or pick another --out-dir.")


def _append_csv(path: Path, row: dict) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=BENCH_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: "" if row.get(k) is None else row[k] for k in BENCH_COLUMNS})
        f.flush()


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


TABLE_HEADER = (f"{'model':<36} {'px':>4} {'batch':>5} {'params':>8} {'GMACs':>8} {'b1 ms':>8} {'±%':>5} "
                f"{'img/s':>9} {'±%':>5} {'peak MiB':>9} {'+MiB':>8} {'train/s':>8} {'±%':>5}")


def format_row(r: dict) -> str:
    """One line of the stdout table (spreads are (max - min) / median over repeats)."""
    name = r["model"] if len(r["model"]) <= 36 else r["model"][:35] + "…"
    params = f"{r['params'] / 1e6:.2f}M"
    return (f"{name:<36} {r['img_size']:>4} {r['batch_size']:>5} {params:>8} {_fmt(r['gmacs'], '.3f'):>8} "
            f"{_fmt(r['latency_ms'], '.2f'):>8} {_fmt(r['latency_spread_pct'], '.1f'):>5} "
            f"{_fmt(r['infer_img_per_s'], '.1f'):>9} {_fmt(r['infer_spread_pct'], '.1f'):>5} "
            f"{_fmt(r['infer_peak_mem_mib'], '.0f'):>9} {_fmt(r['infer_peak_mem_growth_mib'], '.1f'):>8} "
            f"{_fmt(r['train_img_per_s'], '.1f'):>8} {_fmt(r['train_spread_pct'], '.1f'):>5}")


# ----------------------------------------------------------------------------- the benchmark
def _spread(values: list[float]) -> tuple[float, float, float, float]:
    med = statistics.median(values)
    return med, min(values), max(values), (max(values) - min(values)) / med * 100 if med else math.nan


def _check_args(img_sizes: Sequence[int], batch_sizes: Sequence[int], repeats: int, warmup: int, iters: int,
                min_seconds: float, threads: int | None) -> None:
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"--batch-size values must be >= 1, got {list(batch_sizes)}.")
    if img_sizes is not None and any(int(s) < 1 for s in img_sizes):
        raise ValueError(f"--img-size values must be >= 1, got {list(img_sizes)}.")
    if repeats < 1 or warmup < 0 or iters < 1 or min_seconds < 0:
        raise ValueError(f"need --repeats >= 1, --warmup >= 0, --iters >= 1 and --min-seconds >= 0; got {repeats}, "
                         f"{warmup}, {iters}, {min_seconds}.")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}.")


def resolve_device_dtype(device: str, dtype: str | None) -> tuple[torch.device, str]:
    """``auto`` device = CUDA when present; dtype ``auto``/None = fp16 on CUDA, fp32 on CPU.
    fp16 on the CPU and bf16 on a GPU without bf16 are refused."""
    from ..engine.distributed import pick_device

    dev = pick_device(device or "auto")
    dtype = None if dtype in (None, "", "auto") else dtype
    if dtype is not None and dtype not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"--dtype must be fp32, bf16, fp16 or auto, got {dtype!r}.")
    dtype = dtype or ("fp16" if dev.type == "cuda" else "fp32")
    if dtype == "fp16" and dev.type != "cuda":
        raise ValueError("--dtype fp16 needs a CUDA device (fp16 autocast on the CPU is not a deployment setting); "
                         "use fp32 or bf16 on the CPU.")
    if dtype == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--dtype bf16: {torch.cuda.get_device_name(dev)} has no bf16 support; use fp16 or fp32.")
    return dev, dtype


def run_bench(models: Sequence[str | nn.Module], img_sizes: Sequence[int] | None = None,
              batch_sizes: Sequence[int] = (32,), *, device: str = "auto", dtype: str | None = None,
              plugins: list | None = None, num_classes: int = 200, trainable: list | None = None,
              inference: str = "", train: bool = False, repeats: int = 3, warmup: int = 10, iters: int = 50,
              min_seconds: float = 10.0, threads: int | None = None, memory: bool = True, macs: bool = True,
              out_dir: str | Path | None = "bench_results", on_row: Callable[[dict], None] | None = None,
              on_start: Callable[[dict, Path | None], None] | None = None) -> list[dict]:
    """Benchmark every model x size x batch size; one row (:data:`BENCH_COLUMNS`) each.

    Args:
        models: registry / timm names, checkpoint paths (run folder or ``.safetensors``), or built
            modules (Python API; counted and timed as they are).
        img_sizes: input sizes; None = 224 for names, the deployed size for checkpoints.
        batch_sizes: batch sizes of the throughput (and training) measurements; batch-1 latency
            is measured once per model and size.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``fp32``, ``bf16``, ``fp16`` or None/``auto`` (fp16 on CUDA, fp32 on CPU): autocast
            precision of inference and training.
        plugins: plug-in entries for model names.
        num_classes: head size for model names (checkpoints keep theirs).
        trainable: ``model.trainable`` entries for model names (what ``train`` optimises).
        inference: inference variant to time; empty = the checkpoint's own (``default`` for names).
        train: also measure training-step throughput (and its peak memory).
        repeats, warmup, iters, min_seconds: timing protocol per measurement (spec §3: 3 repeats,
            >= 10 warm-up, >= 50 iterations and >= 10 s per repeat).
        threads: torch intra-op threads during the measurements (default: the current count).
        memory: measure peak memory (on CPU: one fresh process per size x batch x mode).
        macs: count GMACs (batch 1, torchprofile conventions).
        out_dir: append rows to ``<out_dir>/bench_<fingerprint>.csv``; None = write no file.
        on_row: called with each row as soon as it is measured.
        on_start: called with the environment and the CSV path before the first measurement.

    Returns:
        The rows, in model, size, batch order.
    """
    from .speed import measure_throughput, measure_train_throughput

    _check_args(img_sizes, batch_sizes, repeats, warmup, iters, min_seconds, threads)
    dev, dtype = resolve_device_dtype(device, dtype)
    threads = int(threads or torch.get_num_threads())
    sources = [m if isinstance(m, nn.Module) else resolve_source(str(m), plugins, num_classes, trainable, inference)
               for m in models]
    env = bench_environment(dev, dtype, threads)
    csv_path = bench_csv_path(out_dir, env) if out_dir is not None else None
    if csv_path is not None:
        _check_csv(csv_path)
    if on_start:
        on_start(env, csv_path)
    common = {"warmup": warmup, "min_seconds": min_seconds, "repeats": repeats, "threads": threads, "device": dev,
              "dtype": dtype}
    timing, train_timing = {**common, "iters": iters}, {**common, "steps": iters}
    env_cols = {k: env.get(k) for k in ("device", "device_name", "dtype", "threads", "torch", "timm", "cuda",
                                        "cudnn", "python", "fgir")}
    rows = []
    for src in sources:
        if isinstance(src, nn.Module):
            sizes = list(img_sizes or [224])
        else:
            sizes = list(img_sizes or [src.default_size()])
        built = None
        for size in sizes:
            size = int(size)
            if isinstance(src, nn.Module):
                model, info = src, {"model": type(src).__name__, "checkpoint": "", "plugins": "",
                                    "inference": inference or "default",
                                    "num_classes": getattr(src, "num_classes", None)}
            elif src.kind == "checkpoint" and built is not None:
                model, info = built
            else:
                model, info = src.build(size)
                built = (model, info) if src.kind == "checkpoint" else None
            deployed = _deployed(model, info["inference"])
            base = {**info, "img_size": size,
                    "params": count_params(model), "params_trainable": count_params(model, trainable_only=True),
                    "gmacs": round(count_macs(deployed, size) / 1e9, 4) if macs else None,
                    "repeats": repeats, "warmup": warmup, "iters": iters, "min_seconds": min_seconds, **env_cols}
            try:
                lat = measure_throughput(deployed, size, batch_size=1, **timing)
            except Exception as e:
                raise RuntimeError(f"{info['model']} does not run at {size} px: {e}") from e
            ms = [1e3 / r for r in lat["img_per_s_repeats"]]
            base.update(zip(("latency_ms", "latency_ms_min", "latency_ms_max", "latency_spread_pct"), _spread(ms)))
            base["latency_ms_p90"] = lat["latency_ms_p90"]
            for b in batch_sizes:
                b = int(b)
                row = {**dict.fromkeys(BENCH_COLUMNS), **base, "batch_size": b,
                       "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                sp = lat if b == 1 else measure_throughput(deployed, size, batch_size=b, **timing)
                row.update(zip(("infer_img_per_s", "infer_img_per_s_min", "infer_img_per_s_max", "infer_spread_pct"),
                               _spread(sp["img_per_s_repeats"])))
                if train:
                    tr = measure_train_throughput(model, size, b, **train_timing)
                    model.eval()
                    row.update(zip(("train_img_per_s", "train_img_per_s_min", "train_img_per_s_max",
                                    "train_spread_pct"), _spread(tr["img_per_s_repeats"])))
                if memory:
                    row.update(_memory_columns(src, sp, tr if train else None, size, b, dtype, dev, threads, info))
                for k in ("latency_ms", "latency_ms_min", "latency_ms_max", "latency_ms_p90", "infer_img_per_s",
                          "infer_img_per_s_min", "infer_img_per_s_max", "train_img_per_s", "train_img_per_s_min",
                          "train_img_per_s_max"):
                    if row.get(k) is not None:
                        row[k] = round(row[k], 3)
                for k in ("latency_spread_pct", "infer_spread_pct", "train_spread_pct", "infer_peak_mem_mib",
                          "infer_peak_mem_growth_mib", "train_peak_mem_mib", "train_peak_mem_growth_mib"):
                    if row.get(k) is not None:
                        row[k] = round(row[k], 2)
                rows.append(row)
                if csv_path is not None:
                    _append_csv(csv_path, row)
                if on_row:
                    on_row(row)
    return rows


def _memory_columns(src, sp: dict, tr: dict | None, size: int, batch: int, dtype: str, dev: torch.device,
                    threads: int, info: dict) -> dict:
    if dev.type == "cuda":
        out = {"mem_method": "cuda_allocator", "infer_peak_mem_mib": sp["peak_mem_allocated_mib"],
               "infer_peak_mem_growth_mib": sp["peak_mem_allocated_mib"] - sp["mem_allocated_before_mib"]}
        if tr is not None:
            out.update(train_peak_mem_mib=tr["peak_mem_allocated_mib"],
                       train_peak_mem_growth_mib=tr["peak_mem_allocated_mib"] - tr["mem_allocated_before_mib"])
        return out
    out = {}
    for mode in ("infer", "train") if tr is not None else ("infer",):
        m = measure_cpu_memory(src, size, batch, dtype, mode, threads, info["inference"], info["num_classes"])
        out.update({f"{mode}_peak_mem_mib": m["peak_mib"], f"{mode}_peak_mem_growth_mib": m["growth_mib"],
                    "mem_method": m["method"]})
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        print(json.dumps(_memory_worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit("usage: python -m fgir.benchmarks.bench --memory-worker JSON (internal; use `fgir bench`)")
