"""app.py: the page's action without a browser (bad uploads are messages), and in headless Chromium."""

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2d_align.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "out" / "app" / "browser_test.png"


def _load_app():
    spec = importlib.util.spec_from_file_location("s2d_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """A phantom radiograph with a focal opacity, and three bad uploads."""
    from s2d_align.data.phantom.findings import FINDINGS
    from s2d_align.data.phantom.render import Anatomy, render_study

    folder = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(7)
    findings = {name: None for name in FINDINGS} | {"opacity": {"side": "left", "level": "mid"}}
    pixels, _ = render_study(findings, Anatomy.draw(rng), rng, 128)
    Image.fromarray(pixels).save(folder / "phantom.png")
    (folder / "notes.png").write_text("not an image at all")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(folder / "tiny.png")
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 9)).save(folder / "deep.png")
    return folder


def test_bad_uploads_are_messages_not_tracebacks(saved, uploads):
    app = _load_app().ReportApp(str(saved))
    report, heat, status = app.run(str(uploads / "notes.png"))
    assert (report, heat) == ("", None)
    assert status.startswith("**Could not use this upload:** cannot read image notes.png")
    report, heat, status = app.run(str(uploads / "tiny.png"))
    assert heat is None and "tiny.png is 12x10 px" in status and "Traceback" not in status
    report, heat, status = app.run(str(uploads / "deep.png"))  # 16-bit: read (windowed), with a note
    assert report and heat is not None and "I;16" in status and "windowed to 8 bits" in status
    assert app.run(None)[2].startswith("Upload a frontal chest X-ray")


def test_missing_model_folder_is_a_message(tmp_path):
    app = _load_app().ReportApp(str(tmp_path / "nowhere"))
    report, heat, status = app.run("x.png")
    assert app.model is None and "is not a model folder" in status and "make demo" in status


def _browser_or_skip():
    """Selenium + Gradio (the `app` extra) and Debian's chromium + chromium-driver, or skip saying what is missing."""
    missing = [name for name in ("gradio", "selenium") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"browser test needs {' and '.join(missing)}: pip install -e '.[app]' (make test does)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("browser test needs headless Chromium: apt-get install chromium chromium-driver (make test "
                    "does, as root)")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"app.py did not answer on port {port} within {timeout} s")


@pytest.fixture(scope="module")
def page(saved):
    browser, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", str(saved), "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        _wait_for_port(port, server)
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1300"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.get(f"http://127.0.0.1:{port}/")
        yield driver, port
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


def _generate(driver, image: Path, timeout: float = 180) -> str:
    """Upload `image` as the frontal view, press the button, wait for the status line and return it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    field = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#frontal input[type=file]")))
    field.send_keys(str(image))
    # the upload finished: the file row shows its name
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'#frontal td.filename[aria-label="{image.name}"]')))
    before = driver.find_element(By.ID, "status").text
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#generate"))).click()
    final = ("Report generated", "Could not use", "Generation failed", "Upload a frontal")
    wait.until(lambda d: (text := d.find_element(By.ID, "status").text.strip()) != before and text.startswith(final))
    return driver.find_element(By.ID, "status").text


def _report_becomes(driver, expected: str, timeout: float = 60) -> str:
    """The report box's text once it equals `expected` (Gradio fills the outputs one after the other), or the text
    it still shows after `timeout` s."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    value = lambda d: d.find_element(By.CSS_SELECTOR, "#report textarea").get_attribute("value")  # noqa: E731
    try:
        WebDriverWait(driver, timeout).until(lambda d: value(d) == expected)
    except TimeoutException:
        pass
    return value(driver)


def _clear_frontal(driver) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#frontal button[aria-label='Clear']").click()
    time.sleep(1)


def test_the_page_in_headless_chromium(page, saved, uploads, tiny, tmp_path):
    """Upload a phantom image, wait for the report: it equals `s2d generate`'s on the same file, and the heat map
    shown is the one `s2d generate --attention-maps` writes. Then a bad upload: a message on the page."""
    from selenium.webdriver.common.by import By

    driver, port = page
    image = uploads / "phantom.png"
    status = _generate(driver, image)
    preds, maps = tmp_path / "preds.jsonl", tmp_path / "maps"
    assert main(["generate", "--model", str(saved), "--images", str(image), "--out", str(preds),
                 "--attention-maps", str(maps), "--no-progress"]) == 0
    expected = json.loads(preds.read_text().splitlines()[0])
    assert "Report generated" in status and expected["report"]
    assert _report_becomes(driver, expected["report"]) == expected["report"]
    shown = driver.find_element(By.CSS_SELECTOR, "#heatmap img")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", shown) == 128
    source = shown.get_attribute("src")
    if source.startswith("http"):
        with urllib.request.urlopen(source, timeout=30) as response:
            pixels = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))
        assert np.array_equal(pixels, np.asarray(Image.open(expected["attention_map"]).convert("RGB")))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOT))
    _clear_frontal(driver)
    status = _generate(driver, uploads / "notes.png")
    assert "Could not use this upload: cannot read image notes.png" in status, status
    assert _report_becomes(driver, "") == "" and "Traceback" not in driver.page_source
