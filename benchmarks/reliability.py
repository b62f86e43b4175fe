"""Fault injection and bad inputs against the `fgir` CLI (issue #13): what holds, per category.

    python benchmarks/reliability.py [--work ~/.cache/fgir/bench/reliability] [--only CATEGORY ...]
        [--fresh] [--memory-sizes 1000 10000] [--out benchmarks/results/reliability.md]

Every case is a `fgir` command as a user would type it, with a fault injected or a bad input given,
and an expectation: ``error`` (the input is bad: a clean one-line ``fgir: error:`` and a non-zero
exit) or ``ok`` (it must work, and its result is checked: e.g. resume gives the same weights as an
uninterrupted run). Each outcome is classified as one of

* ``clean error``: exit 2 (130 for an interrupt), one ``fgir: error:`` line, no traceback;
* ``works``: exit 0 and the result checks out;
* ``traceback``: a Python traceback reached the user;
* ``silently accepted``: exit 0 for an input that should have been refused;
* ``corrupted result``: exit 0 but the result is wrong (resumed weights differ, NaN output, ...);
* ``refused``: an input that should work was refused; ``crashed``: killed by a signal / odd exit.

A case *holds* when the outcome is the expected one (``clean error`` for ``error``, ``works`` for ``ok``).

How the commands run: the process-level cases (kills, SIGTERM, disk full, two writers, resume) are
separate ``fgir`` processes; a kill at a precise point is injected by a small wrapper that installs
a hook (optimizer step, checkpoint write stages, final evaluation) and then calls the same entry point
``fgir.cli.main.main``. The many input cases of one category (config values, manifests, images,
predict inputs) run through that entry point in *one* Python subprocess per category, each with its
own captured stdout/stderr, because a fresh interpreter per case (4 s of imports) would make the
script take hours on a small machine.

Disk-full cases mount a small tmpfs (needs root; they are reported as not tried otherwise).

The predict-memory measurement generates two folders of PNGs (default 1,000 and 10,000) and reports
the peak RSS of ``fgir predict`` on each (``os.wait4``): streaming keeps it flat.

Results (per-case JSON) are kept in ``--work``; a re-run skips finished cases (``--fresh`` redoes them)
and rewrites the markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path

FGIR = str(Path(sys.executable).with_name("fgir"))
CLASSES = ("red_disc", "green_square", "blue_bar")
OUTCOMES = ("clean error", "works", "traceback", "silently accepted", "corrupted result", "refused", "crashed",
            "unclear error")

TRAIN = ["data.name=folder", "model.name=test_resnet", "data.img_size=32", "data.resize_ratio=1.0",
         "optim.batch_size=4", "optim.epochs=2", "optim.warmup_epochs=0", "optim.lr=0.01", "run.progress=false",
         "run.threads=1", "run.seed=0"]


# ============================================================================ running commands
@dataclasses.dataclass
class Proc:
    rc: int
    out: str
    err: str
    seconds: float = 0.0


def run_fgir(args: list[str], env: dict | None = None, timeout: float = 900, wrapper: str = "") -> Proc:
    """One ``fgir`` process (``wrapper``: Python code run before the entry point, for fault hooks)."""
    cmd = [FGIR, *args] if not wrapper else [sys.executable, "-c", wrapper + _ENTRY, *args]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    return Proc(p.returncode, p.stdout, p.stderr, time.time() - t)


_ENTRY = "\nimport sys\nfrom fgir.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"

_BATCH = r'''
import contextlib, io, json, sys, traceback, warnings
warnings.simplefilter("ignore")
from fgir.cli.main import main
cases = json.load(open(sys.argv[1]))
res = []
for argv in cases:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse usage errors
            rc = e.code if isinstance(e.code, int) else 2
        except BaseException:  # escaped the CLI's error path: what a user would see
            traceback.print_exc()
            rc = 1
    res.append({"rc": rc, "out": out.getvalue()[-4000:], "err": err.getvalue()[-4000:]})
json.dump(res, open(sys.argv[2], "w"))
'''


def run_batch(argvs: list[list[str]], work: Path) -> list[Proc]:
    """Many CLI invocations through ``fgir.cli.main.main`` in one Python subprocess."""
    src, dst = work / "batch_in.json", work / "batch_out.json"
    src.write_text(json.dumps(argvs))
    p = subprocess.run([sys.executable, "-c", _BATCH, str(src), str(dst)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if p.returncode != 0 or not dst.is_file():
        raise RuntimeError(f"the batch runner failed: {p.stderr[-2000:]}")
    return [Proc(r["rc"], r["out"], r["err"]) for r in json.loads(dst.read_text())]


def classify(p: Proc, expect: str, verify: Callable[[], bool] | None = None) -> str:
    if "Traceback (most recent call last)" in p.err:
        return "traceback"
    if p.rc < 0 or p.rc not in (0, 1, 2, 130):
        return "crashed"
    if expect == "error":
        if p.rc == 0:
            return "silently accepted"
        # one `fgir: error:` line (eval of several checkpoints: one per failed checkpoint and a summary)
        errors = [ln for ln in p.err.splitlines() if ln.startswith("fgir: error:")]
        return "clean error" if errors or (p.rc == 130 and "fgir:" in p.err) else "unclear error"
    if p.rc != 0:
        return "refused"
    if verify is not None:
        try:
            ok = verify()
        except Exception as e:  # noqa: BLE001  (a result that cannot be read is a wrong result)
            ok = False
            p.err += f"\n(check failed: {type(e).__name__}: {e})"
        if not ok:
            p.err += "\n(the result check failed)"
            return "corrupted result"
    return "works"


def holds(expect: str, outcome: str) -> bool:
    return outcome == ("clean error" if expect == "error" else "works")


# ============================================================================ fixtures on disk
def make_images(folder: Path, per_class: int, size: int = 32, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray(rng.integers(0, 60, (size, size, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(img)
            o = int(rng.integers(2, size // 4))
            box = (o, o, size - o, size - o)
            col = [(230, 40, 40), (40, 230, 40), (40, 40, 230)][c]
            if c == 0:
                draw.ellipse(box, fill=col)
            elif c == 1:
                draw.rectangle(box, fill=col)
            else:
                draw.rectangle((box[0], size // 2 - 3, box[2], size // 2 + 3), fill=col)
            img.save(d / f"{name}_{i:03d}.png")


def dataset(work: Path) -> Path:
    root = work / "data"
    if not (root / "test").is_dir():
        make_images(root / "train", 8, seed=0)
        make_images(root / "test", 3, seed=1)
    return root


def train_args(work: Path, name: str, out: Path | None = None, *extra: str) -> list[str]:
    return ["train", *TRAIN, f"data.root={dataset(work)}", f"run.output_dir={out or work / 'runs'}",
            f"run.name={name}", f"data.cache_dir={work / 'cache'}", *extra]


def reference(work: Path) -> Path:
    run = work / "runs" / "ref"
    if not (run / "final.json").is_file():
        p = run_fgir(train_args(work, "ref"))
        if p.rc != 0:
            raise RuntimeError(f"the reference run failed:\n{p.err[-3000:]}")
    return run


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    return ta.keys() == tb.keys() and all(bool((ta[k] == tb[k]).all()) for k in ta)


def same_final(a: Path, b: Path) -> bool:
    fa, fb = json.loads((a / "final.json").read_text()), json.loads((b / "final.json").read_text())
    keys = [k for k in fa if k.endswith(("top1", "top5", "loss")) and isinstance(fa[k], (int, float))]
    return bool(keys) and all(fa[k] == fb.get(k) for k in keys)


def resumed_equal(work: Path, run: Path) -> bool:
    ref = reference(work)
    return same_weights(ref, run) and same_final(ref, run) and not list(run.glob("*.tmp*"))


# ============================================================================ cases
@dataclasses.dataclass
class Case:
    category: str
    name: str
    expect: str
    argv: list[str] | None = None                  # a batch case: argv for main()
    verify: Callable[[], bool] | None = None
    process: Callable[[], tuple[Proc, Callable[[], bool] | None]] | None = None  # a process-level case


CATEGORIES = ("kill & resume", "disk full", "corrupted files", "hostile manifests", "config values",
              "bad images", "predict inputs", "runs & CLI misuse")


def kill_cases(work: Path) -> list[Case]:
    hook = r'''
import os, signal, sys
import torch
POINT, N, SIG = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
sys.argv = sys.argv[:1] + sys.argv[4:]
import fgir.engine.checkpoint as ck
import fgir.engine.train as tr
n = [0]
def hit():
    n[0] += 1
    if n[0] == N:
        os.kill(os.getpid(), SIG)
if POINT == "step":
    import torch.optim.optimizer as topt
    topt.register_optimizer_step_post_hook(lambda *a: hit())
elif POINT == "before_write":
    f = ck.save_file
    ck.save_file = lambda *a, **k: (hit(), f(*a, **k))[1]
elif POINT == "before_rename":
    f = ck.os.replace
    ck.os.replace = lambda s, d, *a, **k: (hit() if str(d).endswith(".safetensors") else None, f(s, d, *a, **k))[1]
elif POINT == "before_dir_fsync":
    f = ck._fsync_dir
    ck._fsync_dir = lambda *a, **k: (f(*a, **k), hit())[0]
elif POINT == "final_eval":
    f, g = ck.save_weights, tr.run_inference
    saves = [0]
    def save(*a, **k):
        if str(a[1]).endswith("last.safetensors"):
            saves[0] += 1
        return f(*a, **k)
    ck.save_weights = save
    tr.run_inference = lambda *a, **k: (os.kill(os.getpid(), SIG) if saves[0] >= N else None, g(*a, **k))[1]
'''
    cases = []
    # test_resnet, 18 train images (6 of each class's 8 go to train, 2 to val) at batch 4: 4 steps per epoch,
    # 2 epochs; each epoch ends by writing a training state, then the weights (renames 1-2, 3-4)
    points = [("step", 2, "SIGKILL", "mid epoch 1 (step 2)"), ("step", 6, "SIGKILL", "mid epoch 2 (step 6)"),
              ("before_write", 1, "SIGKILL", "before the first state write"),
              ("before_write", 2, "SIGKILL", "between state and weights writes"),
              ("before_rename", 1, "SIGKILL", "state written, before its rename"),
              ("before_rename", 4, "SIGKILL", "epoch-2 weights written, before the rename"),
              ("before_dir_fsync", 3, "SIGKILL", "after a rename, before the folder fsync"),
              ("final_eval", 2, "SIGKILL", "during the final evaluation"),
              ("step", 3, "SIGTERM", "SIGTERM mid epoch 1 (step 3)"),
              ("before_rename", 2, "SIGTERM", "SIGTERM while the weights are renamed")]
    for point, n, sig, what in points:
        name = f"kill_{point}_{n}_{sig.lower()}"

        def proc(point=point, n=n, sig=sig, name=name):
            run = work / "runs" / name
            shutil.rmtree(run, ignore_errors=True)
            p1 = run_fgir([point, str(n), sig, *train_args(work, name)], wrapper=hook)
            if 'File "<string>"' in p1.err or p1.rc == 0:
                raise RuntimeError(f"the fault was not injected ({name}, exit {p1.rc}):\n{p1.err[-2000:]}")
            killed = p1.rc == -9 if sig == "SIGKILL" else (p1.rc == 130 and "--resume" in (p1.err + p1.out)
                                                           and "Traceback" not in p1.err)
            p2 = run_fgir(["train", "--resume", str(run)])
            if not killed:  # the fault did not happen as planned, or SIGTERM was handled badly
                p2 = Proc(p1.rc if "Traceback" not in p1.err else 1, p1.out, p1.err + p2.err)
                return p2, (lambda: False)
            return p2, (lambda: resumed_equal(work, run))
        cases.append(Case("kill & resume", what, "ok", process=proc))
    return cases


def _tmpfs(path: Path, size_bytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(size_bytes, 65536)}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def disk_cases(work: Path) -> list[Case]:
    cases = []

    def full_during_training():
        ref = reference(work)
        mnt = work / "mnt_train"
        size = (ref / "last.safetensors").stat().st_size + max(p.stat().st_size for p in ref.glob("state*")) * 3 // 2
        if not _tmpfs(mnt, size):
            return Proc(-1, "", "not tried: mounting a tmpfs needs root"), None
        try:
            p = run_fgir(train_args(work, "full", mnt))
            return p, None
        finally:
            keep = work / "runs" / "full_after"
            shutil.rmtree(keep, ignore_errors=True)
            if (mnt / "full").is_dir():
                shutil.copytree(mnt / "full", keep)
            _umount(mnt)

    cases.append(Case("disk full", "disk full during training (checkpoint write)", "error",
                      process=full_during_training))

    def resume_after_full():
        run = work / "runs" / "full_after"
        if not run.is_dir():
            return Proc(-1, "", "not tried: the disk-full run left nothing"), None
        p = run_fgir(["train", "--resume", str(run)])
        return p, (lambda: resumed_equal(work, run))

    cases.append(Case("disk full", "resume after space is freed gives the uninterrupted weights", "ok",
                      process=resume_after_full))

    def full_cache():
        mnt = work / "mnt_cache"
        if not _tmpfs(mnt, 64 * 1024):
            return Proc(-1, "", "not tried: mounting a tmpfs needs root"), None
        try:
            args = train_args(work, "full_cache", None, "data.img_size=64")
            args = [a for a in args if not a.startswith("data.cache_dir=")] + [f"data.cache_dir={mnt}"]
            return run_fgir(args), None
        finally:
            _umount(mnt)

    cases.append(Case("disk full", "disk full while writing the decoded cache", "error", process=full_cache))

    def full_predict_out():
        ref = reference(work)
        mnt = work / "mnt_pred"
        if not _tmpfs(mnt, 65536):
            return Proc(-1, "", "not tried: mounting a tmpfs needs root"), None
        try:
            filler = mnt / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk, then free one page: predict runs out
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            os.truncate(filler, max(filler.stat().st_size - 4096, 0))
            big = work / "pred_many"
            if not big.is_dir():
                make_images(big, 120, seed=3)
            return run_fgir(["predict", str(ref), str(big), "--out", str(mnt / "p.csv"), "-q", "--topk", "3"]), None
        finally:
            _umount(mnt)

    cases.append(Case("disk full", "disk full while predict writes its CSV", "error", process=full_predict_out))
    return cases


def corrupt_cases(work: Path) -> list[Case]:
    cases = []

    def copy_ref(name: str) -> Path:
        dst = work / "runs" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(reference(work), dst)
        return dst

    def flip(path: Path, offset_frac: float = 0.6, n: int = 64) -> None:
        b = bytearray(path.read_bytes())
        i = int(len(b) * offset_frac)
        for j in range(i, min(i + n, len(b))):
            b[j] ^= 0x7F
        path.write_bytes(bytes(b))

    def truncate(path: Path, frac: float = 0.5) -> None:
        b = path.read_bytes()
        path.write_bytes(b[:int(len(b) * frac)])

    def newest_state(run: Path) -> Path:
        return sorted(run.glob("state*.safetensors"), key=lambda p: p.stat().st_mtime)[-1]

    def mk(name: str, expect: str, prep: Callable[[Path], None], argv: Callable[[Path], list[str]],
           verify: Callable[[Path], bool] | None = None):
        def proc():
            run = copy_ref("corrupt_" + re.sub(r"[^a-z0-9]+", "_", name.lower())[:40])
            prep(run)
            p = run_fgir(argv(run))
            return p, (lambda: verify(run)) if verify else None
        cases.append(Case("corrupted files", name, expect, process=proc))

    mk("weights: 64 bytes flipped, eval", "error", lambda r: flip(r / "last.safetensors"),
       lambda r: ["eval", str(r)])
    mk("weights: truncated to half, predict", "error", lambda r: truncate(r / "last.safetensors"),
       lambda r: ["predict", str(r), str(dataset(work) / "test")])
    mk("weights: empty file, eval", "error", lambda r: (r / "last.safetensors").write_bytes(b""),
       lambda r: ["eval", str(r)])
    mk("weights: a text file, eval", "error", lambda r: (r / "last.safetensors").write_text("hello"),
       lambda r: ["eval", str(r)])
    mk("weights: header only (8 bytes), eval", "error",
       lambda r: (r / "last.safetensors").write_bytes((r / "last.safetensors").read_bytes()[:8]),
       lambda r: ["eval", str(r)])

    def nan_weights(r: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(r / "last.safetensors"), "pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        k = next(k for k, v in t.items() if v.is_floating_point())
        t[k][..., 0] = float("nan")
        meta.pop("fgir_sha256", None)
        save_file(t, str(r / "last.safetensors"), metadata=meta)

    mk("weights: NaN written with no checksum, eval", "error", nan_weights, lambda r: ["eval", str(r)])
    mk("newest training state truncated, resume with more epochs", "ok", lambda r: truncate(newest_state(r)),
       lambda r: ["train", "--resume", str(r), "optim.epochs=3"],
       lambda r: (r / "final.json").is_file() and len((r / "metrics.jsonl").read_text().splitlines()) >= 3)
    mk("both training states truncated, resume with more epochs", "error",
       lambda r: [truncate(p) for p in r.glob("state*.safetensors")],
       lambda r: ["train", "--resume", str(r), "optim.epochs=3"])
    mk("config.yaml replaced by garbage, resume", "error",
       lambda r: (r / "config.yaml").write_text("model: [unclosed\n  - {"), lambda r: ["train", "--resume", str(r)])
    mk("config.yaml deleted, eval (config is in the checkpoint)", "ok", lambda r: (r / "config.yaml").unlink(),
       lambda r: ["eval", str(r), "--split", "test"])
    mk("metrics.jsonl with a garbage line, resume with more epochs", "ok",
       lambda r: (r / "metrics.jsonl").write_text((r / "metrics.jsonl").read_text() + "{not json\n"),
       lambda r: ["train", "--resume", str(r), "optim.epochs=3"])
    mk("stale *.tmp files of a killed run, resume with more epochs", "ok",
       lambda r: [(r / "last.safetensors.tmp12345").write_bytes(b"x" * 100),
                  (r / "state_001.safetensors.tmp999").write_bytes(b"y")],
       lambda r: ["train", "--resume", str(r), "optim.epochs=3"],
       lambda r: not list(r.glob("*.tmp*")))

    def cache_truncated():
        ref = reference(work)
        files = sorted((work / "cache").rglob("*.u8")) or sorted(p for p in (work / "cache").rglob("*")
                                                                if p.is_file() and p.stat().st_size > 10000)
        if not files:
            return Proc(-1, "", "not tried: no cache file found"), None
        for f in files:
            truncate(f, 0.3)
        run = work / "runs" / "after_cache_trunc"
        shutil.rmtree(run, ignore_errors=True)
        p = run_fgir(train_args(work, "after_cache_trunc"))
        return p, (lambda: same_weights(ref, run))

    cases.append(Case("corrupted files", "decoded cache truncated, train again (same weights)", "ok",
                      process=cache_truncated))

    def image_replaced():
        ref = reference(work)
        data = work / "data_replaced"
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(dataset(work), data)
        p0 = run_fgir(["eval", str(ref), "--split", "test", "--root", str(data), "--out", str(work / "e0")])
        from PIL import Image

        time.sleep(1.1)
        for f in (data / "test").rglob("*.png"):
            Image.new("RGB", (32, 32)).save(f)
        p = run_fgir(["eval", str(ref), "--split", "test", "--root", str(data), "--out", str(work / "e1")])

        def changed():
            a = json.loads(next((work / "e0").glob("*.json")).read_text())
            b = json.loads(next((work / "e1").glob("*.json")).read_text())
            return p0.rc == 0 and a != b
        return p, changed

    cases.append(Case("corrupted files", "test images overwritten in place: eval sees the new pixels", "ok",
                      process=image_replaced))
    return cases


def manifest_cases(work: Path) -> list[Case]:
    base = work / "manifests"
    shutil.rmtree(base, ignore_errors=True)
    src = dataset(work)
    good = [(f"train/{c}/{c}_{i:03d}.png", c, "train") for c in CLASSES for i in range(6)] + \
           [(f"test/{c}/{c}_{i:03d}.png", c, "test") for c in CLASSES for i in range(3)]
    cases = []

    def mk(name: str, expect: str, body: bytes | None = None, rows=None, header="path,label,split"):
        d = base / f"m{len(cases):02d}"
        d.mkdir(parents=True)
        for sub in ("train", "test"):
            os.symlink(src / sub, d / sub)
        if body is None:
            body = ("\n".join([header] + [",".join(r) for r in rows]) + "\n").encode()
        (d / "list.csv").write_bytes(body)
        cases.append(Case("hostile manifests", name, expect,
                          argv=["data", "prepare", "folder", "--root", str(d / "list.csv"), "--out",
                                str(d / "manifest")]))

    mk("a clean list.csv (control)", "ok", rows=good)
    mk("row ../../../../etc/passwd", "error", rows=good + [("../../../../etc/passwd", CLASSES[0], "test")])
    # absolute paths are a documented feature of your own list.csv (not of catalog manifests)
    mk("absolute path to an image elsewhere (documented)", "ok",
       rows=good + [(str(src / "test" / CLASSES[0] / f"{CLASSES[0]}_000.png"), CLASSES[0], "train")])
    mk("symlinked folder inside the root (followed, like ImageFolder)", "ok",
       rows=good + [(f"linked/{CLASSES[1]}_000.png", CLASSES[1], "train")])
    os.symlink(src / "test" / CLASSES[1], base / f"m{len(cases) - 1:02d}" / "linked")
    mk("UTF-8 BOM and CRLF (spreadsheet export)", "ok",
       body=b"\xef\xbb\xbf" + "\r\n".join(["path,label,split"] + [",".join(r) for r in good]).encode() + b"\r\n")
    plain = ("\n".join(["path,label,split"] + [",".join(r) for r in good]) + "\n").encode()
    mk("non-UTF-8 bytes in a row", "error", body=plain + b"train/\xff\xfe.png,x,train\n")
    mk("NUL byte in a row", "error", body=plain + b"train/a\x00.png,x,train\n")
    mk("missing label column", "error", header="path,split", rows=[(p, s) for p, _, s in good])
    mk("empty file", "error", body=b"")
    mk("header only", "error", rows=[])
    mk("a 1 MB field", "error", rows=good + [("x" * 1_000_000, CLASSES[0], "train")])
    mk("unknown split value", "error", rows=good + [(good[0][0], CLASSES[0], "holdout")])
    mk("row with a missing file", "error", rows=good + [("train/none/nothing.png", CLASSES[0], "train")])
    mk("integer labels out of range", "error",
       rows=[(p, str(CLASSES.index(c)), s) for p, c, s in good] + [(good[0][0], "7", "train")])
    mk("a row with too many columns", "error", rows=good + [(good[0][0], CLASSES[0], "train", "extra")])
    # `data prepare` is strict about these (training from an existing manifest reports them on every load)
    mk("duplicated rows (refused by prepare)", "error", rows=good + good[:3])
    mk("a training image also listed in test (refused by prepare)", "error",
       rows=good + [(good[0][0], good[0][1], "test")])
    mk("a single class", "error", rows=[r for r in good if r[1] == CLASSES[0]])
    return cases


def config_cases(work: Path) -> list[Case]:
    from fgir.config import FIELD_RULES, PluginConfig
    from fgir.registry import PLUGINS, TASKS

    cases = []
    for key, rule in FIELD_RULES.items():
        vals: list[str] = []
        if rule[0] == "range":
            lo, hi, lo_in, hi_in = rule[1:]
            vals += [str(lo - 1 if lo_in else lo), "abc", "nan"]
            if hi != float("inf"):
                vals.append(str(hi + 1 if hi_in else hi))
        elif rule[0] == "choice":
            vals += ["no-such-choice"]
        elif rule[0] == "pattern":
            vals += ["''" if key in ("model.name", "run.output_dir") else "'bad value with spaces/'"]
        for v in vals:
            cases.append(Case("config values", f"{key}={v}", "error", argv=["config", f"{key}={v}"]))
    bad_for = {int: "abc", float: "abc", bool: "maybe", list: "abc", dict: "abc", str: "[1, 2]"}
    for reg, what in ((PLUGINS, "model.plugins"), (TASKS, "task")):
        for name in reg.names():
            cls = reg.meta(name).get("config")
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                continue
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.name == "name" or (cls is not PluginConfig and f.name in ("name",)):
                    continue
                tp = typing.get_origin(hints[f.name]) or hints[f.name]
                if tp not in bad_for:
                    continue
                v = bad_for[tp]
                entry = f"{{name: {name}, {f.name}: {v}}}"
                over = [f"model.plugins=[{entry}]", "model.name=test_vit" if "vit" in reg.meta(name).get(
                    "families", ("vit",)) else "model.name=test_resnet"] if what == "model.plugins" \
                    else [f"task={entry}"]
                cases.append(Case("config values", f"{what} {name}.{f.name}={v}", "error", argv=["config", *over]))
    # values that load but cannot run: refused before work
    ds = dataset(work)
    for name, over in [("unknown model.kwargs key", ["model.kwargs={no_such_arg: 1}"]),
                       ("optim.amp=fp16 without CUDA", ["optim.amp=fp16", "run.device=cpu"]),
                       ("batch larger than the training split", ["optim.batch_size=1000"]),
                       ("a split that does not exist", ["data.test_split=nope"]),
                       ("train_split equal to test_split", ["data.train_split=test", "data.test_split=test"]),
                       ("data.mean of length 2", ["data.mean=[0.5,0.5]"]),
                       ("data.std with a zero", ["data.std=[0.2,0,0.2]"]),
                       ("auto_augment that does not parse", ["data.auto_augment=rand-q9"]),
                       ("unknown model name", ["model.name=resnet_does_not_exist"]),
                       ("data.root that does not exist", [f"data.root={ds}_missing"])]:
        args = [a for a in train_args(work, "cfg_" + name.replace(" ", "_")[:20]) if not any(
            a.startswith(o.split("=")[0] + "=") for o in over)] + over
        cases.append(Case("config values", f"train: {name}", "error", argv=args))
    return cases


def image_cases(work: Path) -> list[Case]:
    import numpy as np
    from PIL import Image

    d = work / "images"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    good = {
        "rgb.png": lambda p: Image.fromarray(rgb).save(p),
        "gray16.png": lambda p: Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)).save(p),
        "cmyk.jpg": lambda p: Image.fromarray(rgb).convert("CMYK").save(p),
        "palette.png": lambda p: Image.fromarray(rgb).convert("P").save(p),
        "la.png": lambda p: Image.fromarray(rgb).convert("LA").save(p),
        "rgba.png": lambda p: Image.fromarray(rgb).convert("RGBA").save(p),
        "one_pixel.png": lambda p: Image.new("RGB", (1, 1), (9, 9, 9)).save(p),
        "thin_1x400.png": lambda p: Image.new("RGB", (1, 400), (9, 90, 9)).save(p),
        "animated.gif": lambda p: Image.fromarray(rgb).save(p, save_all=True,
                                                          append_images=[Image.fromarray(255 - rgb)]),
        "float32.tif": lambda p: Image.fromarray(rng.random((40, 40)).astype(np.float32)).save(p),
        "exif_rotated.jpg": lambda p: _exif_rotated(p, rgb),
        "name with spaces é.png": lambda p: Image.fromarray(rgb).save(p),
        "rgb.webp": lambda p: Image.fromarray(rgb).save(p),
    }
    bad = {
        "zero_bytes.png": lambda p: p.write_bytes(b""),
        "truncated.png": lambda p: (Image.fromarray(rgb).save(p), p.write_bytes(p.read_bytes()[:200])),
        "text_as.jpg": lambda p: p.write_text("this is not an image\n"),
        "html_as.png": lambda p: p.write_text("<html><body>404</body></html>"),
        "random_bytes.jpg": lambda p: p.write_bytes(bytes(rng.integers(0, 256, 5000, dtype=np.uint8))),
        "bomb.png": lambda p: Image.new("1", (20000, 20000)).save(p),
    }
    for n, f in {**good, **bad}.items():
        f(d / n)
    ref = str(reference(work))
    cases = []

    def finite_csv(out: Path, n: int) -> Callable[[], bool]:
        def ok():
            import csv

            with out.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            return len(rows) == n and all(0 <= float(r["prob1"]) <= 1 for r in rows)
        return ok

    for n in good:
        out = work / "pred" / f"{n}.csv"
        out.parent.mkdir(exist_ok=True)
        cases.append(Case("bad images", f"predict {n}", "ok", argv=["predict", ref, str(d / n), "--out", str(out),
                                                                   "-q"], verify=finite_csv(out, 1)))
    for n in bad:
        cases.append(Case("bad images", f"predict {n} (named)", "error", argv=["predict", ref, str(d / n), "-q"]))
    out = work / "pred" / "folder.csv"
    cases.append(Case("bad images", "predict a folder mixing good and bad files (bad ones skipped)", "ok",
                      argv=["predict", ref, str(d), "--out", str(out), "-q"], verify=finite_csv(out, len(good))))
    # training data with a bad image
    data = work / "data_bad"
    if not data.is_dir():
        shutil.copytree(dataset(work), data)
        (data / "train" / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        Image.new("1", (20000, 20000)).save(data / "train" / CLASSES[1] / "bomb.png")
    base = [a for a in train_args(work, "badimg") if not a.startswith("data.root=")] + [f"data.root={data}"]
    cases.append(Case("bad images", "train on a set with a broken file and a bomb", "error",
                      argv=base + ["run.name=badimg_a", "optim.epochs=1"]))
    stamp = time.strftime("%H%M%S")
    run = work / "runs" / f"badimg_b{stamp}"
    cases.append(Case("bad images", "same with data.skip_bad=true (skipped, counted in final.json)", "ok",
                      argv=base + [f"run.name=badimg_b{stamp}", "optim.epochs=1", "data.skip_bad=true"],
                      verify=lambda: sum(json.loads((run / "final.json").read_text())["skipped_images"].values()) == 2))
    cases[-2].argv = cases[-2].argv[:-2] + [f"run.name=badimg_a{stamp}", "optim.epochs=1"]
    return cases


def _exif_rotated(p: Path, arr) -> None:
    from PIL import Image

    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(p, exif=exif)


def predict_cases(work: Path) -> list[Case]:
    ref = str(reference(work))
    imgs = dataset(work) / "test"
    d = work / "odd"
    shutil.rmtree(d, ignore_errors=True)
    (d / "empty").mkdir(parents=True)
    (d / "only_text").mkdir()
    (d / "only_text" / "notes.txt").write_text("x")
    (d / "loop").mkdir()
    shutil.copy(next(imgs.rglob("*.png")), d / "loop" / "a.png")
    os.symlink(d / "loop", d / "loop" / "again")
    (d / "outdir").mkdir()
    (d / "not_ckpt.safetensors").write_text("hello")
    (d / "garbage.onnx").write_bytes(b"\x08\x01garbage")
    (d / "run_without_ckpt").mkdir()
    (d / "run_without_ckpt" / "config.yaml").write_text("model: {name: test_resnet}\n")
    c = []

    def mk(name, expect, *args, verify=None):
        c.append(Case("predict inputs", name, expect, argv=["predict", *args], verify=verify))

    mk("an empty folder", "error", ref, str(d / "empty"), "-q")
    mk("a folder with no images", "error", ref, str(d / "only_text"), "-q")
    mk("a path that does not exist", "error", ref, str(d / "nope.png"), "-q")
    mk("--topk 0", "error", ref, str(imgs), "--topk", "0", "-q")
    mk("--topk -3", "error", ref, str(imgs), "--topk", "-3", "-q")
    mk("--topk 1000 (more than the classes: clipped)", "ok", ref, str(imgs), "--topk", "1000", "-q")
    mk("--batch-size 0", "error", ref, str(imgs), "--batch-size", "0", "-q")
    mk("--batch-size 100000", "ok", ref, str(imgs), "--batch-size", "100000", "-q")
    mk("--out a folder", "error", ref, str(imgs), "--out", str(d / "outdir"), "-q")
    mk("--out with an unknown extension", "error", ref, str(imgs), "--out", str(d / "p.txt"), "-q")
    mk("--out in a folder that does not exist", "ok", ref, str(imgs), "--out", str(d / "new" / "sub" / "p.csv"), "-q",
       verify=lambda: (d / "new" / "sub" / "p.csv").is_file())
    mk("--device cuda without CUDA", "error", ref, str(imgs), "--device", "cuda", "-q")
    mk("--device bogus", "error", ref, str(imgs), "--device", "bogus", "-q")
    mk("a symlink loop in the folder", "ok", ref, str(d / "loop"), "-q")
    mk("a checkpoint that does not exist", "error", str(d / "nope.safetensors"), str(imgs), "-q")
    mk("a checkpoint that is a text file", "error", str(d / "not_ckpt.safetensors"), str(imgs), "-q")
    mk("a garbage .onnx file", "error", str(d / "garbage.onnx"), str(imgs), "-q")
    mk("a run folder without a checkpoint", "error", str(d / "run_without_ckpt"), str(imgs), "-q")
    mk("an image given as the checkpoint", "error", str(next(imgs.rglob("*.png"))), str(imgs), "-q")
    mk("--inference that the model lacks", "error", ref, str(imgs), "--inference", "tta", "-q")
    return c


def run_cases(work: Path) -> list[Case]:
    ref = reference(work)
    c = []

    def two_writers():
        run = work / "runs" / "locked"
        shutil.rmtree(run, ignore_errors=True)
        args = train_args(work, "locked", None, "optim.epochs=30")
        p1 = subprocess.Popen([FGIR, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                if (run / "config.yaml").is_file():
                    break
                time.sleep(0.2)
            p2 = run_fgir(["train", "--resume", str(run)])
        finally:
            p1.kill()
            p1.wait()
        return p2, None

    c.append(Case("runs & CLI misuse", "a second writer on a running run", "error", process=two_writers))
    for name, expect, args in [
        ("--resume of a folder that does not exist", "error", ["train", "--resume", str(work / "nope")]),
        ("--resume with a changed lr", "error", ["train", "--resume", str(ref), "optim.lr=0.5"]),
        ("run.eval_every=0", "error", train_args(work, "ev0") + ["run.eval_every=0"]),
        ("--resume-override without --resume", "error", ["train", "--resume-override", *TRAIN[:2]]),
        ("eval of a file that does not exist", "error", ["eval", str(work / "nope.safetensors")]),
        ("eval --split that does not exist", "error", ["eval", str(ref), "--split", "nope"]),
        ("export to a non-.onnx name", "error", ["export", str(ref), "--out", str(work / "m.txt")]),
        ("unknown subcommand", "error", ["trian"]),
        ("a config file that does not exist", "error", ["train", "-c", str(work / "nope.yaml")]),
        ("a config file that is not YAML", "error", ["train", "-c", str(dataset(work) / "test" / CLASSES[0] /
                                                                         f"{CLASSES[0]}_000.png")]),
    ]:
        def proc(args=args):
            return run_fgir(args), None
        c.append(Case("runs & CLI misuse", name, expect, process=proc))
    return c


BUILDERS = {"kill & resume": kill_cases, "disk full": disk_cases, "corrupted files": corrupt_cases,
            "hostile manifests": manifest_cases, "config values": config_cases, "bad images": image_cases,
            "predict inputs": predict_cases, "runs & CLI misuse": run_cases}


# ============================================================================ predict memory
def predict_memory(work: Path, sizes: list[int]) -> list[dict]:
    import numpy as np
    from PIL import Image

    ref = reference(work)
    rows = []
    rng = np.random.default_rng(0)
    for n in sizes:
        folder = work / f"mem_{n}"
        if len(list(folder.glob("*.png"))) != n:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png",
                                                                                        compress_level=1)
        out = work / f"mem_{n}.csv"
        t = time.time()
        p = subprocess.Popen([FGIR, "predict", str(ref), str(folder), "--out", str(out), "-q", "--batch-size", "32",
                              "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        err = p.stderr.read().decode() if p.stderr else ""
        ok = os.waitstatus_to_exitcode(status) == 0 and sum(1 for _ in out.open()) == n + 1
        rows.append({"images": n, "peak_rss_mib": ru.ru_maxrss / 1024, "seconds": time.time() - t, "ok": ok,
                     "err": err[-300:]})
        print(f"predict memory: {n} images, peak RSS {ru.ru_maxrss / 1024:.0f} MiB, {time.time() - t:.0f} s, "
              f"{'ok' if ok else 'FAILED'}", flush=True)
    return rows


# ============================================================================ main
def run_category(cat: str, work: Path, done: dict, fresh: bool) -> None:
    cases = BUILDERS[cat](work)
    todo = [c for c in cases if fresh or f"{c.category}|{c.name}" not in done]
    batch = [c for c in todo if c.argv is not None]
    if batch:
        procs = run_batch([c.argv for c in batch], work)
        for c, p in zip(batch, procs, strict=True):
            _record(done, c, p, classify(p, c.expect, c.verify), work)
    for c in todo:
        if c.process is None:
            continue
        p, verify = c.process()
        if p.rc == -1 and p.err.startswith("not tried"):
            _record(done, c, p, "not tried", work)
            continue
        _record(done, c, p, classify(p, c.expect, verify), work)


def _record(done: dict, c: Case, p: Proc, outcome: str, work: Path) -> None:
    err = [ln for ln in p.err.strip().splitlines() if ln.strip()]
    done[f"{c.category}|{c.name}"] = {"category": c.category, "case": c.name, "expect": c.expect, "rc": p.rc,
                                     "outcome": outcome, "holds": holds(c.expect, outcome),
                                     "stderr_tail": "\n".join(err[-6:])[-1500:]}
    (work / "results.json").write_text(json.dumps(done, indent=1))
    print(f"[{c.category}] {c.name}: {outcome}{'' if holds(c.expect, outcome) or outcome == 'not tried' else '  <-- '}"
          f"{'' if holds(c.expect, outcome) or outcome == 'not tried' else (err[-1] if err else '')[:160]}", flush=True)


def write_markdown(done: dict, memory: list[dict], out: Path, seconds: float) -> None:
    lines = ["# Reliability: fault injection and bad inputs (`python benchmarks/reliability.py`)", "",
             f"{len(done)} cases. A case holds when a bad input ends "
             "as a clean `fgir: error:` line (no traceback) with a non-zero exit, or a fault/odd input still works and "
             "its "
             "result checks out.", "",
             "| category | tried | holds | clean error | works | traceback | silently accepted | corrupted result | "
             "other |", "|---|---|---|---|---|---|---|---|---|"]
    tot = {k: 0 for k in ("tried", "holds", *OUTCOMES)}
    for cat in CATEGORIES:
        rs = [r for r in done.values() if r["category"] == cat and r["outcome"] != "not tried"]
        if not rs:
            continue
        cnt = {o: sum(r["outcome"] == o for r in rs) for o in OUTCOMES}
        other = sum(cnt[o] for o in ("refused", "crashed", "unclear error"))
        h = sum(r["holds"] for r in rs)
        tot["tried"] += len(rs)
        tot["holds"] += h
        for o in OUTCOMES:
            tot[o] += cnt[o]
        lines.append(f"| {cat} | {len(rs)} | {h} | {cnt['clean error']} | {cnt['works']} | {cnt['traceback']} | "
                     f"{cnt['silently accepted']} | {cnt['corrupted result']} | {other} |")
    other = sum(tot[o] for o in ("refused", "crashed", "unclear error"))
    lines.append(f"| **all** | {tot['tried']} | {tot['holds']} | {tot['clean error']} | {tot['works']} | "
                 f"{tot['traceback']} | {tot['silently accepted']} | {tot['corrupted result']} | {other} |")
    skipped = [r for r in done.values() if r["outcome"] == "not tried"]
    if skipped:
        lines += ["", "Not tried: " + "; ".join(f"{r['case']} ({r['stderr_tail']})" for r in skipped)]
    fails = [r for r in done.values() if not r["holds"] and r["outcome"] != "not tried"]
    lines += ["", "## Cases that do not hold", ""]
    lines += [f"- [{r['category']}] {r['case']}: **{r['outcome']}** (expected {r['expect']}; exit {r['rc']}): "
              f"`{(r['stderr_tail'].splitlines() or [''])[-1][:200]}`" for r in fails] or ["None."]
    if memory:
        lines += ["", "## Predict memory (streaming)", "",
                  "`fgir predict RUN FOLDER --out preds.csv -q --batch-size 32` on generated 64 px PNGs, test_resnet "
                  "at 32 px; peak RSS of the process (`os.wait4`).", "",
                  "| images | peak RSS MiB | seconds | ok |", "|---|---|---|---|"]
        lines += [f"| {m['images']:,} | {m['peak_rss_mib']:.0f} | {m['seconds']:.0f} | {m['ok']} |" for m in memory]
        if len(memory) >= 2:
            lines += ["", f"Peak RSS ratio {memory[-1]['images']:,} / {memory[0]['images']:,} images: "
                          f"{memory[-1]['peak_rss_mib'] / memory[0]['peak_rss_mib']:.3f}."]
    lines += ["", "## All cases", "", "| category | case | expected | outcome |", "|---|---|---|---|"]
    lines += [f"| {r['category']} | {r['case'].replace('|', '/')} | {r['expect']} | {r['outcome']} |"
              for r in done.values()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "fgir" / "bench" / "reliability"))
    ap.add_argument("--only", nargs="*", default=[], choices=list(CATEGORIES) + ["memory"], metavar="CATEGORY")
    ap.add_argument("--fresh", action="store_true", help="redo finished cases")
    ap.add_argument("--redo", nargs="*", default=[], metavar="TEXT", help="redo the cases whose name contains TEXT")
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "reliability.md"))
    a = ap.parse_args()
    work = Path(a.work).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    res_file = work / "results.json"
    done = {} if a.fresh or not res_file.is_file() else json.loads(res_file.read_text())
    done = {k: v for k, v in done.items() if not any(t in k for t in a.redo)}
    t0 = time.time()
    reference(work)
    for cat in CATEGORIES:
        if not a.only or cat in a.only:
            run_category(cat, work, done, a.fresh)
    mem_file = work / "memory.json"
    memory = json.loads(mem_file.read_text()) if mem_file.is_file() else []
    if a.memory_sizes and (not a.only or "memory" in a.only) and (a.fresh or [m["images"] for m in memory]
                                                                   != a.memory_sizes):
        memory = predict_memory(work, a.memory_sizes)
        mem_file.write_text(json.dumps(memory, indent=1))
    write_markdown(done, memory, Path(a.out), time.time() - t0)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
