"""``fgir serve CKPT``: a local web demo of a checkpoint (FastAPI + uvicorn, one self-contained page).

A person uploads or drops an image and sees the top-5 classes with their names and probabilities,
the image the model saw with an overlay (attention rollout for ViTs, Grad-CAM otherwise, through
:mod:`fgir.report.cam`; the GLSim crop box on GLSim models) and the time the model took.

Routes: ``GET /`` (the page, no external assets), ``GET /api/info`` (model, classes, limits,
overlay methods), ``POST /api/predict?overlay=auto|gradcam|rollout|none`` (multipart field
``image``). Every failure is a JSON ``{"error": message}`` with a 4xx status (5xx for a fault of
ours) that the page shows; bad uploads never stop the server: empty files (400), files that are
not images (415), uploads over the byte limit or images over the pixel limit, including
decompression bombs (413). The checkpoint is the only input: class names and preprocessing come
from its metadata (:class:`fgir.serve.predict.Predictor`). The model runs one request at a time.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run time.
import base64
import io
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from PIL import Image

from .predict import Predictor

OVERLAYS = ("auto", "gradcam", "rollout", "none")
"""``auto``: attention rollout for ViTs, Grad-CAM for other models; ``none``: predictions only."""
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DISPLAY_SIZE = 320
_INSTALL = "the web demo needs FastAPI and uvicorn: pip install 'fgir[serve]'"


class UploadError(ValueError):
    """A bad upload: ``status`` is the HTTP status, the message is shown on the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "the upload") -> Image.Image:
    """Uploaded bytes -> an RGB PIL image; the size is checked from the header before decoding.

    Raises:
        UploadError: empty (400), not a readable image (415), over ``max_pixels`` or a
            decompression bomb (413), truncated or damaged (400).
    """
    from ..data.datasets import to_rgb

    if not data:
        raise UploadError(400, f"{name} is empty (0 bytes): choose an image file (JPEG, PNG, WebP, ...).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise UploadError(413, f"{name} is {w} x {h} = {w * h / 1e6:.1f} megapixels; this server accepts "
                                           f"at most {max_pixels / 1e6:g} megapixels. Downscale it and try again.")
                im.load()
                return to_rgb(im)
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UploadError(413, f"{name} is too large to decode safely (decompression bomb check: {e}).") from e
    except Image.UnidentifiedImageError as e:
        raise UploadError(415, f"{name} is not an image this server can read ({len(data)} bytes, unknown "
                               "format); upload a JPEG, PNG, WebP, GIF, BMP or TIFF file.") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UploadError(400, f"{name} is a damaged or truncated image ({type(e).__name__}: {e}).") from e


def _jpeg_data_url(arr: np.ndarray) -> str:
    """JPEG, not PNG: a photo-like overlay encodes ~30x faster and smaller (PNG took ~0.1 s at 320 px)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _dataset_label(data: dict) -> str:
    """The training set as the page names it: the catalog name, or ``own data (<root name>)``."""
    name = data.get("name", "?")
    root = data.get("root", "")
    return f"own data ({Path(root).name})" if name == "folder" and root else name


class DemoModel:
    """The checkpoint behind the page: predictions, overlays and timings for one image at a time.

    Args:
        predictor: the loaded checkpoint (a PyTorch model gives overlays; an ONNX one predictions only).
        max_bytes: largest upload accepted.
        max_pixels: largest image (width x height) accepted.
    """

    def __init__(self, predictor: Predictor, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        if max_bytes < 1 or max_pixels < 1:
            raise ValueError(f"max_bytes and max_pixels must be >= 1, got {max_bytes} and {max_pixels}.")
        self.predictor, self.max_bytes, self.max_pixels = predictor, int(max_bytes), int(max_pixels)
        self.lock = threading.Lock()
        self.torch_model = predictor.model if isinstance(predictor.model, torch.nn.Module) else None
        cfg = predictor.meta.get("config", {})
        self.info = {
            "model": cfg.get("model", {}).get("name", "?"),
            "threads": torch.get_num_threads(),
            "plugins": [p.get("name", "?") for p in cfg.get("model", {}).get("plugins", []) or []],
            "dataset": _dataset_label(cfg.get("data", {})),
            "num_classes": len(predictor.class_names),
            "img_size": predictor.img_size,
            "inference": predictor.inference,
            "device": str(predictor.device),
            "max_bytes": self.max_bytes,
            "max_pixels": self.max_pixels,
            "overlays": self.overlay_methods(),
            "default_overlay": self.resolve_overlay("auto")[0],
        }

    def warmup(self) -> None:
        """One prediction and overlay on a grey image: imports the CAM library and wakes the model
        up, so the first upload is not the slow one."""
        self.run_image(Image.new("RGB", (self.predictor.img_size,) * 2, (128, 128, 128)), "auto")

    def overlay_methods(self) -> list[str]:
        if self.torch_model is None:
            return []
        from ..report.cam import CAM_METHODS, method_reason

        return [m for m in CAM_METHODS if not method_reason(self.torch_model, m)]

    def resolve_overlay(self, overlay: str) -> tuple[str, str]:
        """``(method or '', note)``: the overlay a request gets, or '' and why there is none."""
        if overlay not in OVERLAYS:
            raise UploadError(400, f"overlay={overlay!r} is not one of {', '.join(OVERLAYS)}.")
        if overlay == "none":
            return "", ""
        if self.torch_model is None:
            return "", "overlays need the PyTorch checkpoint (this is an exported ONNX model)"
        from ..report.cam import default_method, method_reason

        method = default_method(self.torch_model) if overlay == "auto" else overlay
        why = method_reason(self.torch_model, method)
        return ("", why) if why else (method, "")

    def _glsim_box(self, x: torch.Tensor) -> list[int] | None:
        from ..models.plugins.glsim import GLSimModel

        if not isinstance(self.torch_model, GLSimModel):
            return None
        with torch.no_grad():
            return [int(v) for v in self.torch_model.forward_glsim(x)["boxes"][0].tolist()]

    def _overlay(self, image: Image.Image, method: str, target: int) -> dict:
        from PIL import ImageDraw

        from ..report.cam import compute_cam, overlay

        p = self.predictor
        x = p.preprocess([image]).to(p.device)
        cam = compute_cam(self.torch_model, x, method, target)[0]
        mean = torch.tensor(p.mean).view(3, 1, 1)
        std = torch.tensor(p.std).view(3, 1, 1)
        shown = ((x[0].detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
        s = max(DISPLAY_SIZE, x.shape[-1])
        big = np.asarray(Image.fromarray(shown.astype(np.uint8)).resize((s, s), Image.BICUBIC))
        cam_big = np.asarray(Image.fromarray(cam).resize((s, s), Image.BILINEAR)).clip(0, 1)
        blended = Image.fromarray(overlay(big, cam_big, alpha=0.45))
        box = self._glsim_box(x)
        if box is not None:
            k = s / x.shape[-1]
            y0, y1, x0, x1 = box
            ImageDraw.Draw(blended).rectangle([x0 * k, y0 * k, x1 * k - 1, y1 * k - 1], outline=(0, 255, 120),
                                              width=3)
        return {"method": method, "image": _jpeg_data_url(np.asarray(blended)), "box": box,
                "flat": bool(cam.max() <= 0)}

    def run(self, data: bytes, overlay: str = "auto", name: str = "the upload") -> dict:
        """Predict one uploaded image: ``{"top": [...5], "overlay": {...} or None, "overlay_note",
        "timing_ms": {"decode", "inference", "overlay"}, "image": {"width", "height"}}``."""
        if len(data) > self.max_bytes:
            raise UploadError(413, f"{name} is {len(data) / 2**20:.3g} MiB; this server accepts at most "
                                   f"{self.max_bytes / 2**20:.3g} MiB.")
        self.resolve_overlay(overlay)  # a bad name fails before decoding
        t0 = time.perf_counter()
        image = decode_upload(data, self.max_pixels, name)
        decode_ms = round((time.perf_counter() - t0) * 1e3, 2)
        out = self.run_image(image, overlay)
        out["timing_ms"] = {"decode": decode_ms, **out["timing_ms"]}
        return out

    def run_image(self, image: Image.Image, overlay: str = "auto") -> dict:
        """:meth:`run` on a decoded RGB image (no ``decode`` time)."""
        method, note = self.resolve_overlay(overlay)
        with self.lock:
            t2 = time.perf_counter()
            row = self.predictor.predict([image], topk=5)[0]
            t3 = time.perf_counter()
            result = None
            if method:
                try:
                    result = self._overlay(image, method, row["topk"][0]["class_id"])
                except (ValueError, TypeError) as e:  # the method does not fit this model after all
                    note = str(e)
                if result is not None and result.pop("flat"):
                    note = ("the map is zero everywhere: no positive evidence for the top class in the last feature "
                            "map (a 1 x 1 map or an untrained model)")
            t4 = time.perf_counter()
        return {"top": row["topk"], "overlay": result, "overlay_note": note,
                "image": {"width": image.width, "height": image.height},
                "timing_ms": {"inference": round((t3 - t2) * 1e3, 2),
                              "overlay": round((t4 - t3) * 1e3, 2)}}


def create_app(checkpoint, device: str = "", max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, inference: str = ""):
    """The FastAPI application of the demo.

    Args:
        checkpoint: run folder, ``.safetensors`` or ``.onnx`` file, or a loaded :class:`Predictor`.
        device: where the model runs (empty: CUDA when present, else CPU).
        max_bytes, max_pixels: upload limits (413 beyond them).
        inference: inference variant (empty: the run's).
    """
    try:
        from fastapi import FastAPI, File, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.concurrency import run_in_threadpool
    except ImportError as e:
        raise RuntimeError(f"fgir serve: {_INSTALL} ({e}).") from e
    from .page import render_page

    predictor = checkpoint if isinstance(checkpoint, Predictor) else \
        Predictor.from_checkpoint(checkpoint, device=device, inference=inference)
    demo = DemoModel(predictor, max_bytes=max_bytes, max_pixels=max_pixels)
    demo.warmup()
    app = FastAPI(title="fgir demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.demo = demo
    page = render_page(demo.info)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc):  # malformed form fields / query values
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return error(400, "bad request: " + "; ".join(parts))

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        """Refuse oversized uploads from their Content-Length before the body is read."""
        size = request.headers.get("content-length", "")
        if request.url.path == "/api/predict" and size.isdigit() and int(size) > demo.max_bytes + 65536:
            return error(413, f"the upload is {int(size) / 2**20:.3g} MiB; this server accepts at most "
                              f"{demo.max_bytes / 2**20:.3g} MiB.")
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.get("/api/info")
    async def info():
        return demo.info

    @app.post("/api/predict")
    async def predict(image: Annotated[UploadFile | None, File()] = None, overlay: str = "auto"):
        if image is None:
            return error(400, "no file in the upload: send the image in the multipart field 'image'.")
        name = f"'{Path(image.filename).name}'" if image.filename else "the upload"
        try:
            data = await image.read(demo.max_bytes + 1)
            return await run_in_threadpool(demo.run, data, overlay, name)
        except UploadError as e:
            return error(e.status, str(e))
        except Exception as e:  # noqa: BLE001  (a fault of ours: answer it, keep serving)
            return error(500, f"the model failed on {name}: {type(e).__name__}: {e}")
        finally:
            await image.close()

    return app


def check_port(host: str, port: int) -> None:
    """Raise ValueError when ``host:port`` cannot be listened on (in use, bad host, no permission)."""
    if not 0 < port < 65536:
        raise ValueError(f"--port {port}: expected a port number 1..65535.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: not a host name or address of this machine ({e}).") from e
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another port with --port N."
                             ) from e


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, device: str = "",
          max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS, inference: str = "",
          threads: int = 0, log_level: str = "warning") -> None:
    """Load ``checkpoint`` and serve the demo at ``http://host:port`` until Ctrl-C.

    ``threads``: PyTorch intra-op threads (0: PyTorch's default, one per core)."""
    try:
        import uvicorn
    except ImportError as e:
        raise RuntimeError(f"fgir serve: {_INSTALL} ({e}).") from e
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 = PyTorch's default), got {threads}.")
    check_port(host, port)
    if threads:
        torch.set_num_threads(threads)
    app = create_app(checkpoint, device=device, max_bytes=max_bytes, max_pixels=max_pixels, inference=inference)
    info = app.state.demo.info
    if not is_loopback(host):
        print(f"fgir serve: WARNING: listening on {host}, not only this machine: anyone who can reach it can use "
              "the demo.", flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"fgir serve: {info['model']} ({info['num_classes']} classes, {info['img_size']} px, {info['device']}) at "
          f"http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class BackgroundServer:
    """The demo on a free localhost port in a background thread (tests, benchmarks, screenshots).

    Example:
        >>> with BackgroundServer(create_app("runs/demo")) as srv:   # doctest: +SKIP
        ...     print(srv.url)
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="fgir-serve")
        self.url = ""

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


__all__ = ["OVERLAYS", "UploadError", "decode_upload", "DemoModel", "create_app", "serve", "check_port",
           "BackgroundServer"]
