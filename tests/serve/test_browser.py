"""`fgir serve` in a real browser: uvicorn on a free localhost port, headless Chromium (Debian's
`chromium` + `chromium-driver`) driven by Selenium uploads images and reads the page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serve_helpers import tiny_run

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("pytorch_grad_cam", reason="the serve extra (grad-cam) is not installed")
pytest.importorskip("selenium", reason="selenium (test extra) is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def chrome(profile: Path, monkeypatch):
    """Headless Chromium with a fresh profile; skips (with the reason) when no browser is installed."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless browser: install Debian's `chromium` and `chromium-driver` "
                    "(apt-get install -y chromium chromium-driver; .ci/run does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1200,900"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def test_upload_in_a_browser_shows_the_checkpoints_top5(tmp_path, tmp_path_factory, tiny_root, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from fgir.serve.predict import Predictor
    from fgir.serve.web import BackgroundServer, create_app

    run = tiny_run(tmp_path_factory, tiny_root)
    image = next((tiny_root / "images" / "red_disc").glob("test_*.png"))
    want = Predictor.from_checkpoint(run, device="cpu").predict([image], topk=5)[0]["topk"]
    not_image = tmp_path / "notes.txt"
    not_image.write_text("this is not an image")

    driver = chrome(tmp_path / "profile", monkeypatch)
    try:
        with BackgroundServer(create_app(run, device="cpu")) as srv:
            driver.get(srv.url + "/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: "3 classes" in d.find_element(By.ID, "meta").text)

            def upload(path: Path) -> None:
                driver.find_element(By.ID, "file").send_keys(str(path))

            def shown() -> list[tuple[str, str]]:
                rows = driver.find_elements(By.CSS_SELECTOR, "#preds tr.pred")
                return [(r.find_element(By.CSS_SELECTOR, ".name").text, r.find_element(By.CSS_SELECTOR, ".prob").text)
                        for r in rows]

            upload(image)
            wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done"))
            assert [n for n, _ in shown()] == [t["class_name"] for t in want]
            assert [p for _, p in shown()] == [f"{100 * t['prob']:.1f} %" for t in want]
            assert driver.find_element(By.ID, "overlay").get_attribute("src").startswith("data:image/jpeg")
            assert driver.find_element(By.ID, "time-model").text.endswith(" ms")
            driver.save_screenshot(str(tmp_path / "serve.png"))

            upload(not_image)  # an error message on the page, then the server still answers
            wait.until(ec.visibility_of_element_located((By.ID, "error")))
            assert "not an image" in driver.find_element(By.ID, "error").text
            upload(image)
            wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done"))
            assert not driver.find_element(By.ID, "error").is_displayed()
            assert [n for n, _ in shown()] == [t["class_name"] for t in want]
    finally:
        driver.quit()
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
