"""The phone upload in a real browser: Debian's Chromium, driven by Playwright, in a phone viewport.

Staff log in and start a session; the test reads the QR code with zbar, opens its link as a
phone, uploads a radiograph and reads the result that the worker computed with the real model.
"""

from __future__ import annotations

import base64
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ctai import inputs
from ctai.results import JobStore, Summary
from ctai.types import CLASSES, Job
from ctai.web.app import WebService
from ctai.web.messages import LABELS, NOTICE, PHONE
from ctai.worker import Worker
from tests.conftest import requires_model

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
RADIOGRAPH = Path(__file__).parent / "data" / "images" / "person1000_bacteria_2931.jpeg"
STAFF_TOKEN = "staff-secret-for-browser-tests"

pytestmark = [
    requires_model,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbar-tools is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(config):
    """The web app on a free loopback port and a worker with the real model; yields (URL, worker)."""
    config["web"].update(staff_token=STAFF_TOKEN, host="127.0.0.1", port=free_port())
    config["worker"]["threads"] = 1
    worker = Worker(config)
    worker.start()
    service = WebService(config)
    service.start()
    yield f"http://127.0.0.1:{config['web']['port']}", worker
    service.stop()
    worker.stop()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        phone = {k: v for k, v in p.devices["Pixel 7"].items() if k != "default_browser_type"}
        yield browser, phone
        browser.close()


def read_qr(png: bytes, folder: Path) -> str:
    (folder / "qr.png").write_bytes(png)
    output = subprocess.run(["zbarimg", "-q", str(folder / "qr.png")], capture_output=True, text=True,
                            check=True).stdout
    return output.strip().removeprefix("QR-Code:")


def test_phone_upload_shows_the_result(served, browser, tmp_path):
    base, worker = served
    browser, phone_device = browser
    expect = sync_api.expect

    staff = browser.new_context(**phone_device).new_page()
    start_session(staff, base)
    qr = staff.get_attribute("#qr", "src")
    url = read_qr(base64.b64decode(qr.split(",", 1)[1]), tmp_path)
    assert re.fullmatch(rf"{base}/u/[A-Za-z0-9_-]{{43}}", url)

    phone = browser.new_context(**phone_device).new_page()
    phone.goto(url)
    expect(phone.locator("main > .notice")).to_have_text(NOTICE)
    phone.set_input_files("#camera", RADIOGRAPH)
    item = phone.locator(".upload").first
    expect(item.locator(".notice")).to_be_visible(timeout=120_000)  # the first job loads the model
    expect(item.locator(".notice")).to_have_text(NOTICE)
    expect(item.locator("progress")).to_have_attribute("value", "100")
    expect(item.locator(".result")).to_be_visible()  # shown once the picture has loaded
    expect(item.locator(".state")).to_have_text(re.compile(rf"^AI estimate: ({'|'.join(LABELS.values())})$"))
    assert item.locator(".result").evaluate("img => img.naturalWidth") > 500
    cells = item.locator(".probabilities td:last-child").all_inner_texts()
    shown = [float(text.rstrip("%")) for text in cells]
    [prediction] = worker.pipeline.classify(inputs.load(RADIOGRAPH))
    assert shown == pytest.approx([100 * prediction.probabilities[c] for c in CLASSES], abs=0.051)

    text_file = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}
    phone.set_input_files("#picker", files=[text_file])
    failed = phone.locator(".upload.failed")
    expect(failed.locator(".state")).to_have_text(PHONE["not_supported"])
    expect(failed.locator(".name")).to_have_text("notes.txt")  # which of the chosen files failed

    for page in (phone, browser.new_context(**phone_device).new_page()):  # a reload, a new tab
        page.reload() if page is phone else page.goto(url)
        expect(page.locator("#limits")).to_have_text(re.compile(r"up to 9 more files\.$"))
        item = page.locator(".upload")
        expect(item).to_have_count(1)  # the refused file was not kept
        expect(item.locator(".notice")).to_be_visible()
        expect(item.locator(".result")).to_be_visible()
        assert [float(t.rstrip("%")) for t in item.locator(".probabilities td:last-child").all_inner_texts()] == shown
        expect(page.get_by_role("button", name="Take a photo")).to_be_enabled()


def test_keyboard_reaches_both_upload_buttons(served, browser):
    base, _ = served
    browser, phone_device = browser
    link = start_session(browser.new_page(), base)
    phone = browser.new_context(**phone_device).new_page()
    phone.on("filechooser", lambda chooser: None)  # intercept choosers from the start, not racing Enter
    phone.goto(link)
    for name, multiple in (("Take a photo", False), ("Choose files", True)):
        for _ in range(20):
            phone.keyboard.press("Tab")
            if phone.evaluate("document.activeElement.textContent.trim()") == name:
                break
        sync_api.expect(phone.get_by_role("button", name=name)).to_be_focused()
        with phone.expect_file_chooser() as chooser:
            phone.keyboard.press("Enter")
        assert chooser.value.is_multiple() == multiple
        chooser.value.set_files([])


def start_session(staff, base: str) -> str:
    """Log in as staff on page ``staff`` and start a session; the upload link."""
    staff.goto(f"{base}/staff")
    staff.fill("input[name=token]", STAFF_TOKEN)
    staff.click("text=Log in")
    staff.fill("input[name=patient_id]", "PID-0815")
    staff.fill("input[name=patient_name]", "DOE^JOHN")
    staff.click("text=Create QR code")
    return staff.get_attribute("#upload-link", "href")


@pytest.mark.parametrize("width", [360, 412])
def test_no_page_is_wider_than_the_phone(served, browser, config, width):
    base, _ = served
    browser, phone_device = browser
    long_job = Job("1.2.840.113619.2.55.3.604688119.969.1234567890.123", "listener")  # a series UID
    JobStore(config).finish(long_job, Summary("failed", error=f"cannot read {'/very/long/path' * 8}"), 1.0)
    page = browser.new_context(**{**phone_device, "viewport": {"width": width, "height": 800}}).new_page()
    # against the width set: a mobile browser widens innerWidth to fit content that overflows
    overflow = f"document.documentElement.scrollWidth - {width}"
    page.goto(f"{base}/staff")
    widths = {"login": page.evaluate(overflow)}
    link = start_session(page, base)
    widths["session"] = page.evaluate(overflow)
    page.goto(f"{base}/staff")
    widths["staff"] = page.evaluate(overflow)
    page.goto(link)
    widths["phone"] = page.evaluate(overflow)
    page.goto(f"{base}/u/not-a-token")
    widths["message"] = page.evaluate(overflow)
    assert widths == dict.fromkeys(widths, 0)
