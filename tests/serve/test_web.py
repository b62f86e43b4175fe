"""`fgir serve`: the FastAPI app through starlette's TestClient (no browser, no sockets)."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image
from serve_helpers import png_claiming, tiny_run

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("pytorch_grad_cam", reason="the serve extra (grad-cam) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from fgir.cli.main import main  # noqa: E402
from fgir.serve.predict import Predictor  # noqa: E402
from fgir.serve.web import create_app  # noqa: E402

MAX_BYTES = 300_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_root):
    return tiny_run(tmp_path_factory, tiny_root)


@pytest.fixture(scope="module")
def client(run):
    app = create_app(run, device="cpu", max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def image(tiny_root):
    return next((tiny_root / "images" / "blue_bar").glob("test_*.png"))


def _post(client, name, data, mime="image/png", **params):
    return client.post("/api/predict", params=params, files={"image": (name, data, mime)})


def test_predictions_match_the_checkpoint(client, run, image):
    r = _post(client, image.name, image.read_bytes())
    assert r.status_code == 200
    body = r.json()
    want = Predictor.from_checkpoint(run, device="cpu").predict([image], topk=5)[0]["topk"]
    assert [t["class_name"] for t in body["top"]] == [t["class_name"] for t in want]
    assert [t["prob"] for t in body["top"]] == pytest.approx([t["prob"] for t in want], abs=1e-5)
    assert body["timing_ms"]["inference"] > 0


def test_overlay_is_a_gradcam_image_of_the_input(client, image):
    body = _post(client, image.name, image.read_bytes()).json()
    assert body["overlay"]["method"] == "gradcam"  # a CNN: Grad-CAM by default
    head, b64 = body["overlay"]["image"].split(",", 1)
    assert head == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.format == "JPEG" and im.size == (320, 320)


def test_overlay_that_does_not_apply_is_explained(client, image):
    body = _post(client, image.name, image.read_bytes(), overlay="rollout").json()
    assert body["overlay"] is None and "needs a ViT" in body["overlay_note"]
    assert len(body["top"]) == 3


BAD = {  # case -> (file name, bytes, status, message pattern)
    "not_an_image": ("notes.txt", b"hello, this is text", 415, r"not an image"),
    "empty": ("empty.png", b"", 400, r"is empty"),
    "too_many_pixels": ("big.png", png_claiming(2000, 1000), 413, r"2000 x 1000 = 2\.0 megapixels"),
    "decompression_bomb": ("bomb.png", png_claiming(100_000, 100_000), 413, r"decompression bomb"),
    "too_many_bytes": ("huge.png", b"\x89PNG" + b"\0" * (MAX_BYTES + 70_000), 413, r"at most 0\.286 MiB"),
    "truncated": ("cut.png", png_claiming(40, 40), 400, r"damaged or truncated"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_upload_gets_a_message_and_the_server_keeps_answering(client, image, case):
    name, data, status, pattern = BAD[case]
    r = _post(client, name, data)
    assert r.status_code == status
    assert re.search(pattern, r.json()["error"])
    ok = _post(client, image.name, image.read_bytes(), overlay="none")
    assert ok.status_code == 200 and len(ok.json()["top"]) == 3


def test_upload_without_a_file_is_a_message(client):
    r = client.post("/api/predict", data={"something": "else"})
    assert r.status_code == 400 and "multipart field 'image'" in r.json()["error"]


def test_unknown_overlay_is_a_message(client, image):
    r = _post(client, image.name, image.read_bytes(), overlay="saliency")
    assert r.status_code == 400 and "not one of auto, gradcam, rollout, none" in r.json()["error"]


def test_page_needs_nothing_from_the_network(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="file"' in r.text and "test_resnet" in r.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    assert "@import" not in r.text


def test_info_names_model_limits_and_overlays(client):
    info = client.get("/api/info").json()
    assert info["num_classes"] == 3 and info["img_size"] == 32
    assert info["max_bytes"] == MAX_BYTES and info["overlays"] == ["gradcam"]


def test_cli_refuses_a_port_in_use(run, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1


def test_glsim_checkpoint_gets_its_crop_box(tiny_root, tmp_path, image):
    from conftest import tiny_cfg

    from fgir.engine.train import train
    from fgir.serve.web import DemoModel

    cfg = tiny_cfg(tiny_root, tmp_path, "model.name=vit_tiny_patch16_224", "model.kwargs={depth: 2}",
                   "data.img_size=64", "data.test_split=", "optim.epochs=1", "run.max_steps_per_epoch=1",
                   "model.plugins=[{name: glsim, top_o: 2}]")
    demo = DemoModel(Predictor.from_checkpoint(train(cfg)["run_dir"], device="cpu"))
    body = demo.run(image.read_bytes(), "auto")
    assert body["overlay"]["method"] == "rollout"  # a ViT: rollout by default
    y0, y1, x0, x1 = body["overlay"]["box"]
    assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
