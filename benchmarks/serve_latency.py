"""Latency of the web demo (`fgir serve`) through its real HTTP endpoint (issue 12).

    python benchmarks/serve_latency.py [--model vitfs_tiny|lrnet14] [--img-size 128] [--uploads 20]
        [--checkpoint CKPT] [--image IMG] [--threads 0] [--out FILE.json] [--screenshot docs/serve.png]

Starts ``fgir serve`` (a subprocess, uvicorn on a free localhost port) with ``--checkpoint``, or
else with an untrained checkpoint of ``--model`` at ``--img-size`` written through the real save
path (latency does not depend on the weights; 100 classes, CUB-100's names when
``../shared/data/cub100`` is there). Then posts the same image ``--uploads`` times per overlay
mode (``none``: predictions only; ``auto``: predictions + attention rollout for ViTs / Grad-CAM
for CNNs), the modes interleaved so that a change in machine load hits both alike, after
``--warmup`` untimed uploads each. Reports the median and spread (quartiles, min, max) of the
client's round trip (multipart upload -> JSON answer, over a localhost socket) and of the
server's own timings (decode, model, overlay); writes JSON and a Markdown table beside it.
``--screenshot`` also drives headless Chromium (Debian's chromium + chromedriver) to the page,
uploads the image and saves a screenshot. One run; the machine's load average is recorded.

The README's screenshot (docs/serve.png) shows a model that has learnt something, trained first by
``--screenshot-model DIR`` (a CPU-sized run, minutes; reused when DIR holds it): resnet10t at
128 px from scratch on 10 CUB-100 classes (:data:`DEMO_CLASSES`, the official train/test split),
served with its first test image of Blue_Jay; the latency rows are measured on that checkpoint
only when ``--checkpoint`` names it:

    python benchmarks/serve_latency.py --screenshot-model runs/serve_demo --screenshot docs/serve.png
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUB = Path(os.environ.get("FGIR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cub100"


def class_names(k: int) -> list[str]:
    f = CUB / "classes.txt"
    if f.is_file():
        names = [line.split(",", 1)[1].strip() for line in f.read_text().splitlines() if line.strip()]
        if len(names) >= k:
            return names[:k]
    return [f"class_{i}" for i in range(k)]


def untrained_checkpoint(folder: Path, model: str, img_size: int, num_classes: int = 100) -> Path:
    """An untrained checkpoint written the way training writes one (config + metadata inside)."""
    import torch

    from fgir.config import load_config
    from fgir.engine.build import build_model, normalization
    from fgir.engine.checkpoint import checkpoint_meta, save_weights

    cfg = load_config(overrides=[f"model.name={model}", "data.name=cub100", f"data.img_size={img_size}",
                                 f"run.name={model}_{img_size}"])
    torch.manual_seed(0)
    net = build_model(cfg, num_classes).eval()
    mean, std = normalization(cfg, net)
    meta = checkpoint_meta(cfg, num_classes, class_names(num_classes), 0, 0, mean, std)
    return save_weights(net, folder / "last.safetensors", meta)


DEMO_CLASSES = ("Black_footed_Albatross", "Red_winged_Blackbird", "Painted_Bunting", "American_Goldfinch",
                "Blue_Jay", "Mallard", "Brown_Pelican", "Cedar_Waxwing", "Scarlet_Tanager", "Pileated_Woodpecker")


def demo_rows() -> list[tuple[str, str, str]]:
    """``(absolute path, class name, train|test)`` of the :data:`DEMO_CLASSES` images of CUB-100."""
    def table(name: str) -> dict[str, str]:
        return dict(line.split(", ", 1) for line in (CUB / name).read_text().splitlines() if line.strip())

    paths, labels, split = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    names = {str(i): n for i, n in enumerate(class_names(100))}
    return [(str(CUB / "images" / paths[i]), names[labels[i]], "train" if split[i] == "1" else "test")
            for i in paths if names[labels[i]] in DEMO_CLASSES]


def train_screenshot_model(folder: Path, epochs: int = 12) -> Path:
    """Train (or reuse) the small model the README's screenshot shows; returns its run folder."""
    import csv

    from fgir.config import load_config
    from fgir.engine.train import train

    run = folder / "cub10_resnet10t_128"
    if (run / "final.json").is_file():
        return run
    folder.mkdir(parents=True, exist_ok=True)
    rows = demo_rows()
    with open(folder / "cub10.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    cfg = load_config(overrides=["data.name=folder", f"data.root={folder / 'cub10.csv'}", "data.img_size=128",
                                 "model.name=resnet10t", f"optim.epochs={epochs}", "optim.batch_size=32",
                                 "optim.warmup_epochs=1", f"run.output_dir={folder}", f"run.name={run.name}",
                                 "run.progress=false", "run.threads=1"])
    return Path(train(cfg)["run_dir"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fgir.cli.main", "serve", str(checkpoint), "--port", str(port),
           "--device", "cpu", "--threads", str(threads)]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_ready(client, url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fgir serve exited ({proc.returncode}):\n{log.read_text()}")
        try:
            return client.get(url + "/api/info").json()
        except Exception:  # noqa: BLE001  (not listening yet)
            time.sleep(0.2)
    raise RuntimeError(f"fgir serve did not answer within {timeout:.0f} s:\n{log.read_text()}")


def spread(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": round(statistics.median(values), 2), "q1": round(q[0], 2), "q3": round(q[2], 2),
            "min": round(min(values), 2), "max": round(max(values), 2), "n": len(values)}


def screenshot(url: str, image: Path, out: Path, profile: Path) -> None:
    """Headless Chromium: open the page, upload ``image``, wait for the answer, save a PNG."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    os.environ.setdefault("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1180,800", "--hide-scrollbars"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=opts)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_element(By.ID, "meta").text)
        driver.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done"))
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the viewport, exactly the page
                               {"width": 1180, "height": min(max(height, 600), 1600), "deviceScaleFactor": 1,
                                "mobile": False})
        time.sleep(0.3)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vitfs_tiny", help="model of the untrained checkpoint (default: vitfs_tiny)")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--checkpoint", default="", help="serve this checkpoint instead of an untrained one")
    ap.add_argument("--image", default="", help="image to upload (default: the first CUB-100 image)")
    ap.add_argument("--uploads", type=int, default=20, help="timed uploads per overlay mode (default: 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed uploads per mode first (default: 3)")
    ap.add_argument("--threads", type=int, default=0, help="server's PyTorch threads (0: PyTorch's default)")
    ap.add_argument("--out", default="", help="results JSON (default: benchmarks/results/serve_latency_<model>_"
                    "<size>.json; a .md table beside it)")
    ap.add_argument("--screenshot", default="", help="also save a screenshot of the page after an upload here")
    ap.add_argument("--screenshot-model", default="", metavar="DIR", help="train (or reuse) the README's screenshot "
                    "model under DIR and serve it for the screenshot (latency rows stay on the benchmark checkpoint)")
    a = ap.parse_args()

    import httpx2

    tmp = Path(tempfile.mkdtemp(prefix="fgir-serve-bench-"))
    if a.checkpoint:
        ckpt = Path(a.checkpoint)
    else:
        ckpt = untrained_checkpoint(tmp / "run", a.model, a.img_size)
    if a.image:
        image = Path(a.image)
    elif (CUB / "images.txt").is_file():
        image = CUB / "images" / (CUB / "images.txt").read_text().splitlines()[0].split(",", 1)[1].strip()
    else:
        from PIL import Image

        image = tmp / "upload.jpg"
        Image.effect_mandelbrot((500, 375), (-2, -1.2, 1, 1.2), 100).convert("RGB").save(image, quality=90)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "serve.log"
    load_before = os.getloadavg()
    proc = start_server(ckpt, port, a.threads, log)
    data = image.read_bytes()
    modes = ("none", "auto")
    rows: dict[str, dict[str, list[float]]] = {m: {"round_trip": [], "decode": [], "inference": [], "overlay": []}
                                               for m in modes}
    try:
        with httpx2.Client(timeout=120) as client:
            info = wait_ready(client, url, proc, log)

            def upload(mode: str) -> tuple[float, dict]:
                t0 = time.perf_counter()
                r = client.post(url + "/api/predict", params={"overlay": mode},
                                files={"image": (image.name, data, "image/jpeg")})
                dt = (time.perf_counter() - t0) * 1e3
                if r.status_code != 200:
                    raise RuntimeError(f"upload failed ({r.status_code}): {r.text[:300]}")
                return dt, r.json()

            for _ in range(a.warmup):
                for m in modes:
                    upload(m)
            overlay_method = ""
            for _ in range(a.uploads):
                for m in modes:
                    dt, body = upload(m)
                    rows[m]["round_trip"].append(dt)
                    for k in ("decode", "inference", "overlay"):
                        rows[m][k].append(body["timing_ms"][k])
                    if m == "auto" and body["overlay"]:
                        overlay_method = body["overlay"]["method"]
            if a.screenshot and not a.screenshot_model:
                screenshot(url, image, Path(a.screenshot), tmp / "profile")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if a.screenshot and a.screenshot_model:
        demo_run = train_screenshot_model(Path(a.screenshot_model))
        shot_image = Path(next(p for p, c, s in demo_rows() if c == "Blue_Jay" and s == "test"))
        port2 = free_port()
        proc = start_server(demo_run, port2, a.threads, tmp / "serve_demo.log")
        try:
            with httpx2.Client(timeout=120) as client:
                wait_ready(client, f"http://127.0.0.1:{port2}", proc, tmp / "serve_demo.log")
            screenshot(f"http://127.0.0.1:{port2}", shot_image, Path(a.screenshot), tmp / "profile")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    load_after = os.getloadavg()

    from fgir.benchmarks.speed import environment

    result = {
        "checkpoint": str(ckpt) if a.checkpoint else f"untrained {a.model} via the save path",
        "model": info["model"], "img_size": info["img_size"], "num_classes": info["num_classes"],
        "server_threads": info.get("threads"), "image": os.path.relpath(image), "image_bytes": len(data),
        "uploads_per_mode": a.uploads, "warmup_per_mode": a.warmup, "overlay_auto": overlay_method,
        "ms": {m: {k: spread(v) for k, v in rows[m].items()} for m in modes},
        "load_average_1_5_15": {"before": [round(v, 2) for v in load_before],
                                "after": [round(v, 2) for v in load_after]},
        "cpu_count": os.cpu_count(), "environment": environment("cpu"),
    }
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"serve_latency_{info['model']}_{info['img_size']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# fgir serve latency: {info['model']} at {info['img_size']} px, {info['num_classes']} classes, CPU",
             "",
             f"`python benchmarks/serve_latency.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
             "",
             f"{a.uploads} timed uploads per mode (after {a.warmup} untimed), modes interleaved; image "
             f"{image.name} ({len(data) / 1024:.0f} KiB); server threads {info.get('threads')}; "
             f"{result['environment']['device_name']}, {os.cpu_count()} CPUs, load average before "
             f"{load_before[0]:.1f}, after {load_after[0]:.1f}. Milliseconds: median [q1, q3] (min-max).",
             "",
             "| overlay | round trip | server: decode | server: model | server: overlay |",
             "|---|---|---|---|---|"]
    for m in modes:
        label = "none" if m == "none" else f"auto ({overlay_method or 'none'})"
        cells = [f"{s['median']:.1f} [{s['q1']:.1f}, {s['q3']:.1f}] ({s['min']:.1f}-{s['max']:.1f})"
                 for s in (result["ms"][m][k] for k in ("round_trip", "decode", "inference", "overlay"))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out} and {out.with_suffix('.md')}" + (f"; screenshot {a.screenshot}" if a.screenshot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
