"""onnxruntime CPU throughput of exported models vs PyTorch eager CPU (issue 15).

    python benchmarks/export_speed.py [--threads 2] [--batch-size 32] [--iters 10] [--out FILE.json]

For lrnet14 at 128 px and ViTFS-T (``vitfs_tiny``) at 224 px (random weights, 200 classes, eval
mode): export with the path ``fgir export`` uses (TorchScript-based exporter, opset 17, fixed batch,
eval-mode token BatchNorms folded into the Linear after them unless ``--no-fold``; see
``fgir.export.fold``; ViTFS-T a second time with ``--ort-attention``, onnxruntime's fused
Attention operator, see ``fgir.export.ort_attention``), check parity on the benchmark batch, then
time PyTorch eager (``torch.no_grad``) and onnxruntime (CPUExecutionProvider, all graph
optimisations) on the same batch with the same thread count: ``--warmup`` untimed batches each, then
``--iters`` timed batches alternating between the two backends (so a change in machine load hits
both alike). Reports the median batch time as images/s and the ratio onnxruntime / PyTorch. One run;
no GPU.

``--profile`` instead prints where onnxruntime spends ViTFS-T's time (its own profiler, 4 batches after
one warm-up, kernel time per operator type) for the portable and the ``--ort-attention`` graph.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fgir.benchmarks.speed import environment
from fgir.export.fold import fold_if_equal
from fgir.export.onnx import export_module, onnx_session
from fgir.export.ort_attention import ORT_OPSETS, with_ort_attention
from fgir.models.factory import create_model

MODELS = (("lrnet14", 128, False), ("vitfs_tiny", 224, False), ("vitfs_tiny", 224, True))
"""(model, px, --ort-attention): ViTFS-T as a standard ONNX graph and with onnxruntime's fused attention."""


def exported(name: str, size: int, batch: int, path: Path, fold: bool = True, ort_attention: bool = False):
    """(model, batch, norms folded, attentions fused): ``name`` with random weights (seed 0), exported
    to ``path`` the way ``fgir export`` does it (``--no-fold`` / ``--ort-attention`` as asked)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=200).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    traced, folded, _ = fold_if_equal(model, x, 1e-5) if fold else (model, 0, 0.0)
    fused = 0
    if ort_attention:
        traced, fused = with_ort_attention(traced)
    export_module(traced, x, path, custom_opsets=ORT_OPSETS if fused else None)
    return model, x, folded, fused


def bench(name: str, size: int, batch: int, threads: int, warmup: int, iters: int, tmp: Path,
          fold: bool = True, ort_attention: bool = False) -> dict:
    path = tmp / f"{name}_{size}_{int(ort_attention)}.onnx"
    model, x, folded, fused = exported(name, size, batch, path, fold, ort_attention)
    sess = onnx_session(path, threads=threads)
    feed = {"image": x.numpy()}
    with torch.no_grad():
        diff = float(np.abs(sess.run(None, feed)[0] - model(x).numpy()).max())

    def run_torch():
        with torch.no_grad():
            model(x)

    def run_ort():
        sess.run(None, feed)

    for _ in range(warmup):
        run_torch()
        run_ort()
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(iters):
        for key, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "img_size": size, "batch_size": batch, "threads": threads, "max_abs_diff": diff,
            "folded_norms": folded, "ort_attention": fused,
            "torch_img_s": round(batch / med["torch"], 2), "onnxruntime_img_s": round(batch / med["onnxruntime"], 2),
            "ratio": round(med["torch"] / med["onnxruntime"], 3),
            "torch_batch_s": [round(t, 4) for t in times["torch"]],
            "onnxruntime_batch_s": [round(t, 4) for t in times["onnxruntime"]]}


def profile_ort(name: str, size: int, batch: int, threads: int, tmp: Path, ort_attention: bool) -> list:
    """(operator type, ms per batch, share) of onnxruntime's kernel time, largest first."""
    import onnxruntime as ort

    path = tmp / f"profile_{int(ort_attention)}.onnx"
    _, x, _, _ = exported(name, size, batch, path, ort_attention=ort_attention)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.enable_profiling, opts.profile_file_prefix = True, str(tmp / "ort_profile")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sess.run(None, {"image": x.numpy()})
    runs = 4
    for _ in range(runs):
        sess.run(None, {"image": x.numpy()})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    seen_runs = 0
    for ev in events:
        if ev.get("name") == "model_run":
            seen_runs += 1
        elif seen_runs >= 1 and ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] = per_op.get(ev["args"]["op_name"], 0.0) + ev["dur"] / 1000 / runs
    total = sum(per_op.values())
    return [(op, ms, ms / total) for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of both backends (default: 2)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches per backend (default: 3)")
    ap.add_argument("--iters", type=int, default=10, help="timed batches per backend (default: 10)")
    ap.add_argument("--no-fold", action="store_true", help="export without folding token BatchNorms (fgir export "
                    "--no-fold)")
    ap.add_argument("--out", default="", help="also write the rows (with every batch time) to this JSON file")
    ap.add_argument("--profile", action="store_true", help="print onnxruntime's time per operator type for ViTFS-T "
                    "instead")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.profile:
        with tempfile.TemporaryDirectory() as tmp:
            for fused in (False, True):
                rows = profile_ort("vitfs_tiny", 224, a.batch_size, a.threads, Path(tmp), fused)
                print(f"vitfs_tiny 224 px, batch {a.batch_size}, {'--ort-attention' if fused else 'portable graph'}: "
                      f"{sum(ms for _, ms, _ in rows):.0f} ms of kernel time per batch")
                for op, ms, share in rows[:10]:
                    print(f"  {op:28s} {ms:8.1f} ms  {100 * share:5.1f} %")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(n, s, a.batch_size, a.threads, a.warmup, a.iters, Path(tmp), not a.no_fold, o)
                for n, s, o in MODELS]
    import onnxruntime

    env = environment("cpu", batch_size=a.batch_size)
    print(f"# torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {a.threads} threads, "
          f"batch {a.batch_size}, median of {a.iters} after {a.warmup} warm-up; {env['device_name']}")
    print("| model | px | norms folded | fused attention | PyTorch eager img/s | onnxruntime img/s | ratio | "
          "max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['img_size']} | {r['folded_norms']} | {r['ort_attention']} | "
              f"{r['torch_img_s']:.1f} | {r['onnxruntime_img_s']:.1f} | {r['ratio']:.2f}x | {r['max_abs_diff']:.2g} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"environment": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
