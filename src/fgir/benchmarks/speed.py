"""Model-only speed: throughput, latency and peak memory (spec evaluation.md §3.2).

:func:`measure_throughput` times inference on a pre-allocated device tensor in ``eval()`` and
``torch.inference_mode()``, discards the warm-up, synchronises CUDA before reading the start time
and after the last iteration, runs at least ``iters`` iterations and ``min_seconds`` per repeat
and reports the median of ``repeats``. :func:`measure_train_throughput` times forward + backward +
optimiser step on in-memory tensors: the ceiling the data pipeline is compared against
(end-to-end training img/s must reach >= 95 % of it).

CPU numbers are for smoke tests only (fixed thread count, no synchronisation needed); never
compare them with GPU numbers.
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _resolve(device: str | torch.device, dtype: str | None) -> tuple[torch.device, str]:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = dtype or ("fp16" if device.type == "cuda" else "fp32")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return device, dtype


def _hw(img_size: int | tuple[int, int]) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[dtype])


@contextlib.contextmanager
def _num_threads_and_device(threads: int | None, device: torch.device) -> Iterator[None]:
    """Fixed thread count (restored afterwards); CUDA events and streams on ``device``."""
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(saved)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | torch.device = "cpu", dtype: str | None = None, batch_size: int | None = None,
                img_size: int | tuple[int, int] | None = None, threads: int | None = None,
                channels_last: bool = False) -> dict[str, Any]:
    """Environment fingerprint recorded with every speed row (spec §3.2 item 8).

    Keys: device, device_name, cuda, cudnn, torch, timm, python, dtype, batch_size, img_size,
    threads, channels_last and ``fingerprint``, a filename-safe summary for naming result CSVs.
    """
    try:
        import timm
        timm_version = timm.__version__
    except ImportError:  # pragma: no cover
        timm_version = None
    device, dtype = _resolve(device, dtype)
    is_cuda = device.type == "cuda"
    env: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if is_cuda else _cpu_name(),
        "cuda": torch.version.cuda if is_cuda else None,
        "cudnn": torch.backends.cudnn.version() if is_cuda else None,
        "torch": torch.__version__,
        "timm": timm_version,
        "python": platform.python_version(),
        "dtype": dtype,
        "batch_size": batch_size,
        "img_size": img_size,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "channels_last": channels_last,
    }
    parts = [env["device_name"], f"torch{env['torch']}"]
    if is_cuda:
        parts.append(f"cuda{env['cuda']}")
    size = None
    if img_size is not None:
        h, w = _hw(img_size)
        size = h if h == w else f"{h}x{w}"
    parts += [dtype, f"b{batch_size}", f"s{size}"]
    if not is_cuda:
        parts.append(f"t{env['threads']}")
    env["fingerprint"] = "_".join(
        "".join(c if c.isalnum() or c in ".-+" else "-" for c in str(p)) for p in parts)
    return env


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _timed_block(step: Callable[[], Any], n: int, device: torch.device) -> tuple[float, list[float]]:
    """Run ``step`` ``n`` times; wall seconds (synchronised) and per-iteration milliseconds.

    On CUDA per-iteration times come from events recorded between iterations, so the loop is
    not serialised by host synchronisation: they are steady-state times per batch (GPU time or
    launch-bound host time, whichever is longer), not the latency of an isolated request.
    On CPU they come from ``perf_counter``.
    """
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        _sync(device)
        t0 = time.perf_counter()
        events[0].record()
        for i in range(n):
            step()
            events[i + 1].record()
        _sync(device)
        elapsed = time.perf_counter() - t0
        return elapsed, [events[i].elapsed_time(events[i + 1]) for i in range(n)]
    per_iter = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        step()
        per_iter.append((time.perf_counter() - t) * 1e3)
    return time.perf_counter() - t0, per_iter


def _run_repeats(step: Callable[[], Any], device: torch.device, iters: int, min_seconds: float,
                 repeats: int) -> tuple[list[int], list[float], list[float]]:
    """Per repeat: blocks of ``iters`` until both ``iters`` and ``min_seconds`` are reached."""
    counts, seconds, latencies = [], [], []
    for _ in range(repeats):
        n_done, elapsed = 0, 0.0
        while n_done < iters or elapsed < min_seconds:
            dt, lat = _timed_block(step, iters, device)
            n_done, elapsed = n_done + iters, elapsed + dt
            latencies += lat
        counts.append(n_done)
        seconds.append(elapsed)
    return counts, seconds, latencies


def _check_counts(warmup: int, iters: int, repeats: int, min_seconds: float, batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if warmup < 0 or iters < 1 or repeats < 1 or min_seconds < 0:
        raise ValueError("need warmup >= 0, iters >= 1, repeats >= 1 and min_seconds >= 0; got "
                         f"warmup={warmup}, iters={iters}, repeats={repeats}, min_seconds={min_seconds}")


def _reset_cuda_peak(device: torch.device) -> float | None:
    """Empty the cache and reset the peak counters; MiB allocated now (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**20


def _cuda_peak(device: torch.device, before: float | None) -> dict[str, float | None]:
    is_cuda = device.type == "cuda"
    return {"peak_mem_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20 if is_cuda else None,
            "peak_mem_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20 if is_cuda else None,
            "mem_allocated_before_mib": before}


def measure_throughput(model: nn.Module, img_size: int | tuple[int, int], batch_size: int = 32,
                       device: str | torch.device = "cpu", dtype: str | None = None, warmup: int = 10,
                       iters: int = 50, min_seconds: float = 10.0, repeats: int = 3,
                       channels_last: bool = False, threads: int | None = None,
                       in_chans: int = 3) -> dict[str, Any]:
    """Inference throughput, latency and peak memory with the §3.2 protocol.

    The model is moved to ``device`` (and to channels-last when asked) in place and left in the
    mode it was in. Use ``warmup >= 50`` with ``torch.compile`` or cuDNN autotuning.

    Args:
        model: any module taking a (B, in_chans, H, W) tensor.
        img_size: S or (H, W).
        batch_size: B (1 for latency/streaming, 32 or 8 batched).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: autocast precision ``"fp32"``, ``"fp16"`` or ``"bf16"``; default fp16 on CUDA, fp32 on CPU.
        warmup: discarded iterations.
        iters: minimum timed iterations per repeat.
        min_seconds: minimum timed seconds per repeat (spec: 10; use 0 in smoke tests).
        repeats: timed repeats; throughput is their median.
        channels_last: convert model and input to channels-last.
        threads: ``torch.set_num_threads`` for the measurement (restored afterwards).
        in_chans: input channels.

    Returns:
        A flat dict: ``img_per_s`` (median over repeats), ``img_per_s_repeats``, ``latency_ms_median``
        and ``latency_ms_p90`` (per batch, over every timed iteration; on CUDA the steady-state
        time between CUDA events, with no host sync per iteration), ``iters_per_repeat``,
        ``peak_mem_allocated_mib`` and ``peak_mem_reserved_mib`` (CUDA allocator peaks over
        warm-up and timing: weights, input, activations, workspace), ``mem_allocated_before_mib``
        (allocated before the first forward: weights and input; all three None on CPU), plus the
        :func:`environment` fingerprint.
    """
    _check_counts(warmup, iters, repeats, min_seconds, batch_size)
    dev, dtype = _resolve(device, dtype)
    h, w = _hw(img_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    with _num_threads_and_device(threads, dev):
        model.to(dev)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        model.eval()
        x = torch.randn(batch_size, in_chans, h, w, device=dev).contiguous(memory_format=fmt)
        before = _reset_cuda_peak(dev)

        def step() -> Any:
            with _autocast(dev, dtype):
                return model(x)

        try:
            with torch.inference_mode():
                for _ in range(warmup):
                    step()
                _sync(dev)
                counts, seconds, latencies = _run_repeats(step, dev, iters, min_seconds, repeats)
        finally:
            model.train(was_training)
        rates = [batch_size * n / s for n, s in zip(counts, seconds)]
        result: dict[str, Any] = {
            "img_per_s": statistics.median(rates),
            "img_per_s_repeats": rates,
            "latency_ms_median": statistics.median(latencies),
            "latency_ms_p90": _percentile(latencies, 90),
            "iters_per_repeat": counts,
            "seconds_per_repeat": seconds,
            "warmup": warmup,
            **_cuda_peak(dev, before),
        }
        result.update(environment(dev, dtype, batch_size, img_size, threads, channels_last))
    return result


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out["logits"]
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}; "
                    "return a tensor, a dict with 'logits' or a tuple whose first item is the logits")


OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_train_step(model: nn.Module, x: torch.Tensor, device: str | torch.device = "cpu", dtype: str = "fp32",
                    optimizer_factory: OptimizerFactory | None = None, grad_clip: float | None = None,
                    loss_fn: LossFn | None = None, num_classes: int | None = None) -> Callable[[], None]:
    """One engine-like training step on the fixed batch ``x``, as a closure: forward under autocast
    at ``dtype`` (GradScaler for fp16 on CUDA), loss on random labels, backward, optional global
    grad-norm clipping, optimiser step, ``zero_grad(set_to_none=True)``. The model is put in train
    mode; its trainable (``requires_grad``) parameters are optimised.

    Args:
        model: module returning logits (a tensor, a dict with ``logits`` or a tuple).
        x: the input batch, already on ``device``.
        device, dtype: where and at which autocast precision the step runs.
        optimizer_factory: ``params -> optimizer``; default SGD(lr=1e-3, momentum=0.9), the
            engine's optimiser family.
        grad_clip: max global grad norm, None = off.
        loss_fn: ``(logits, target) -> loss``; default cross-entropy.
        num_classes: range of the random labels; None = read from one no-grad forward.
    """
    dev = torch.device(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; unfreeze some or check the "
                         "method's freezing rule")
    optimizer = (optimizer_factory or (lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9)))(params)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == "fp16" and dev.type == "cuda")
    loss_fn = loss_fn or F.cross_entropy
    if num_classes is None:
        with torch.no_grad(), _autocast(dev, dtype):
            num_classes = _logits(model(x)).shape[-1]
    target = torch.randint(0, num_classes, (x.shape[0],), device=dev)

    def step() -> None:
        with _autocast(dev, dtype):
            loss = loss_fn(_logits(model(x)).float(), target)
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_train_throughput(model: nn.Module, img_size: int | tuple[int, int], batch_size: int,
                             optimizer_factory: OptimizerFactory | None = None, steps: int = 50, warmup: int = 10,
                             device: str | torch.device = "cpu", dtype: str | None = None, repeats: int = 3,
                             min_seconds: float = 0.0, grad_clip: float | None = None, channels_last: bool = False,
                             threads: int | None = None, in_chans: int = 3, loss_fn: LossFn | None = None
                             ) -> dict[str, Any]:
    """Training img/s of forward + backward + optimiser step on in-memory tensors, with the spread
    over repeats and (on CUDA) the allocator peak.

    Mirrors the engine's step (:func:`make_train_step`). The model's weights are updated (pass a
    copy to keep them) and its train/eval mode is restored afterwards.

    Args:
        model: module in train mode returning logits (a tensor, a dict with ``logits`` or a tuple).
        img_size: S or (H, W).
        batch_size: B, as in the training run it will be compared with.
        optimizer_factory: ``params -> optimizer``; default SGD(lr=1e-3, momentum=0.9).
        steps: timed steps per repeat; warmup: discarded steps (they also allocate gradients and
            optimiser state).
        device, dtype, channels_last, threads, in_chans: as in :func:`measure_throughput`.
        repeats, min_seconds: repeat count and minimum seconds per repeat.
        grad_clip: max global grad norm (the engine clips at 1.0 on the fp16 path), None = off.
        loss_fn: ``(logits, target) -> loss``; default cross-entropy on random labels.

    Returns:
        ``img_per_s`` (median over repeats), ``img_per_s_repeats``, ``step_ms_median`` (per step,
        over every timed step), ``iters_per_repeat``, ``seconds_per_repeat``, ``warmup``, and on
        CUDA ``peak_mem_allocated_mib`` / ``peak_mem_reserved_mib`` (weights, gradients, optimiser
        state, activations) and ``mem_allocated_before_mib`` (None on CPU).
    """
    _check_counts(warmup, steps, repeats, min_seconds, batch_size)
    dev, dtype = _resolve(device, dtype)
    h, w = _hw(img_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    with _num_threads_and_device(threads, dev):
        model.to(dev)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        x = torch.randn(batch_size, in_chans, h, w, device=dev).contiguous(memory_format=fmt)
        before = _reset_cuda_peak(dev)
        try:
            step = make_train_step(model, x, dev, dtype, optimizer_factory, grad_clip, loss_fn)
            for _ in range(warmup):
                step()
            _sync(dev)
            counts, seconds, per_step = _run_repeats(step, dev, steps, min_seconds, repeats)
        finally:
            model.train(was_training)
        rates = [batch_size * n / s for n, s in zip(counts, seconds)]
        return {"img_per_s": statistics.median(rates), "img_per_s_repeats": rates,
                "step_ms_median": statistics.median(per_step), "iters_per_repeat": counts,
                "seconds_per_repeat": seconds, "warmup": warmup, **_cuda_peak(dev, before)}


def measure_train_step_rate(model: nn.Module, img_size: int | tuple[int, int], batch_size: int,
                            optimizer_factory: OptimizerFactory | None = None,
                            steps: int = 50, warmup: int = 10, device: str | torch.device = "cpu",
                            dtype: str | None = None, repeats: int = 3, min_seconds: float = 0.0,
                            grad_clip: float | None = None, channels_last: bool = False,
                            threads: int | None = None, in_chans: int = 3,
                            loss_fn: LossFn | None = None) -> float:
    """Training img/s (median of repeats) of :func:`measure_train_throughput`, same arguments."""
    return measure_train_throughput(model, img_size, batch_size, optimizer_factory, steps, warmup, device, dtype,
                                    repeats, min_seconds, grad_clip, channels_last, threads, in_chans,
                                    loss_fn)["img_per_s"]
