"""The web page, driven in a real headless Chromium (Debian's, through Playwright) against
``python -m restore.app`` started on 127.0.0.1 with the shipped checkpoint.

``make test`` installs Chromium; where it is missing these tests fail saying so.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.image_files import load_rgb
from restore.app import PAGE_MAX_PIXELS, analysis_table

CHROMIUM = "/usr/bin/chromium"
RAIN = "derain/Rain12/input/rain-002.png"
STARTUP_S = 240  # torch, gradio and the sentence encoder load on a busy 2-core runner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The page served by a real ``python -m restore.app`` process on a free port."""
    port = free_port()
    out = tmp_path_factory.mktemp("app")
    log = open(out / "server.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    server = subprocess.Popen([sys.executable, "-m", "restore.app", "--port", str(port), "--threads", "2",
                               "--out", str(out)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_S
    while True:
        if server.poll() is not None:
            pytest.fail(f"restore.app exited with {server.returncode}: {(out / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"restore.app did not answer within {STARTUP_S} s: {(out / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    yield url
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: `make test` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(app_url)
    page.wait_for_selector("#restore", timeout=60_000)
    yield page
    page.close()


def upload(page, path: Path) -> None:
    """Put ``path`` in the photo box, clearing the one before."""
    clear = page.locator("#photo button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.set_input_files("#photo input[type=file]", str(path))


def error_messages(page) -> list[str]:
    return page.eval_on_selector_all(".toast-message-text", "els => els.map(e => e.innerText)")


def restored_pixels(page) -> np.ndarray:
    """The full-resolution PNG the page offers for download, decoded."""
    href = page.get_attribute("#download a", "href")
    data = page.request.get(href).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_rainy_photo_is_analysed_restored_and_offered_at_full_size(page, shared_data, tmp_path):
    photo = shared_data / RAIN
    upload(page, photo)
    page.wait_for_selector("#analysis :text('Analysis:')", timeout=60_000)
    scores = page.inner_text("#scores")
    # The label's heading is the top-scoring type; every type has its bar.
    assert scores.splitlines()[1].strip() == "rain", scores
    for kind in ("noise", "blur", "jpeg", "low-light", "haze", "snow", "clean"):
        assert kind in scores
    details = page.inner_text("#analysis")
    assert "rain streaks" in details and "noise σ" in details and "JPEG quality" in details
    page.click("#restore")
    page.wait_for_selector("#download a", timeout=180_000)
    status = page.inner_text("#status")
    assert "Restored rain-002.png (480 × 320 px, whole image)" in status
    before = load_rgb(str(photo)).pixels
    after = restored_pixels(page)
    assert after.shape == before.shape
    assert np.abs(after.astype(float) - before).mean() > 2.0  # it changed the photo, visibly
    # Both halves of the before | after slider are on the page.
    assert page.locator("#compare img").count() == 2
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1400


def test_typed_text_guides_the_restoration(page, shared_data):
    upload(page, shared_data / RAIN)
    page.wait_for_selector("#analysis :text('Analysis:')", timeout=60_000)
    page.fill("#guide textarea", "get rid of the streaks of rain")
    page.click("#restore")
    page.wait_for_selector("#download a", timeout=180_000)
    # The words chose rain; the restorer read the analysis's measurement of it, not the words.
    assert re.search(r"as: (mild|moderate|heavy) rain streaks", page.inner_text("#status")), page.inner_text("#status")
    assert "Note:" not in page.inner_text("#status")
    # Words that name no known degradation are not used, and the page says so.
    page.fill("#guide textarea", "please make it look nicer")
    page.click("#restore")
    page.wait_for_selector("#status :text('name no degradation type the restorer knows')", timeout=180_000)


def test_bad_files_get_their_reason_on_the_page_and_the_server_goes_on(page, awkward_images, shared_data,
                                                                       tmp_path):
    refused = {"not_an_image": "not a readable image", "truncated": "corrupt or truncated image",
               "zero_byte": "empty file", "bomb": f"exceeds the limit of {PAGE_MAX_PIXELS}"}
    converted = {"gray16": "16-bit image (mode I;16) reduced to 8 bits", "rgba": "alpha channel dropped",
                 "palette": "palette image converted to RGB", "gray": "grayscale expanded to RGB"}
    for kind, reason in refused.items():
        path = tmp_path / f"{kind}.png"
        path.write_bytes(awkward_images[kind])
        upload(page, path)
        page.wait_for_function(f"() => Array.from(document.querySelectorAll('.toast-message-text'))"
                               f".some(e => e.innerText.includes('{kind}.png'))", timeout=60_000)
        messages = [m for m in error_messages(page) if f"{kind}.png" in m]
        assert any(reason in m for m in messages), (kind, messages)
    for kind, note in converted.items():
        path = tmp_path / f"{kind}.png"
        path.write_bytes(awkward_images[kind])
        upload(page, path)
        page.wait_for_selector(f"#analysis :text('{note}')", timeout=60_000)
    # Restoring without a photo says what to do.
    page.locator("#photo button[aria-label='Clear']").click()
    page.click("#restore")
    page.wait_for_function("() => Array.from(document.querySelectorAll('.toast-message-text'))"
                           ".some(e => e.innerText.includes('Choose a photo first'))", timeout=30_000)
    # After all that, a good photo still restores.
    upload(page, shared_data / RAIN)
    page.wait_for_selector("#analysis :text('Analysis:')", timeout=60_000)
    page.click("#restore")
    page.wait_for_selector("#download a", timeout=180_000)


def test_the_analysis_table_reads_every_estimate(shared_data):
    from pipeline.analysis.analyze import analyze

    loaded = load_rgb(str(shared_data / RAIN))
    analysis = analyze(loaded.pixels, None).to_dict()
    table = analysis_table(analysis, loaded, "remove the rain")
    assert f"**Analysis:** {analysis['text']}" in table and "**Restored as:** remove the rain" in table
    for row in ("noise σ", "JPEG quality", "exposure", "haze", "rain", "480 × 320 px, PNG"):
        assert row in table
    assert "streaks at" in table


def test_a_photo_over_a_megapixel_is_restored_in_tiles_with_progress(page, shared_data, tmp_path):
    import cv2

    big = tmp_path / "big_rain.png"
    pixels = load_rgb(str(shared_data / RAIN)).pixels
    Image.fromarray(cv2.resize(pixels, (1260, 840), interpolation=cv2.INTER_CUBIC)).save(big)  # 1.06 MP
    upload(page, big)
    page.wait_for_selector("#analysis :text('Analysis:')", timeout=60_000)
    page.click("#restore")
    # Gradio shows the tile bar (restore_tiled's tqdm) while the tiles run.
    page.wait_for_function("() => Array.from(document.querySelectorAll('.progress-text, .meta-text, .meta-text-center'))"
                           ".some(e => /\\d+\\/\\d+ tile/.test(e.innerText))", timeout=180_000)
    page.wait_for_selector("#download a", timeout=300_000)
    assert "(1260 × 840 px, in tiles)" in page.inner_text("#status")
    assert restored_pixels(page).shape == (840, 1260, 3)
