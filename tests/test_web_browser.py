"""The web pages in a real browser: Debian's Chromium, driven by Playwright, mostly in a phone viewport.

Staff log in and start a session; the test reads the QR code with zbar, opens its link as a
phone, uploads a radiograph and reads the result that the worker computed with the real model.
One app, worker and browser serve the whole module. Every page and state is checked with
axe-core (no "serious" or "critical" violation) in English and Chinese, and kept as a
screenshot in ``test-artifacts/screens/`` (CI keeps the working tree).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ctai import config as configuration
from ctai import inputs
from ctai.results import JobStore, Summary
from ctai.types import CLASSES, Job
from ctai.web.app import WebService
from ctai.web.i18n import translations
from ctai.web.messages import LABELS, NOTICE, PHONE
from ctai.web.sessions import Store
from ctai.web.state import Throttle
from ctai.worker import Worker
from tests.conftest import requires_model
from tests.test_web import png_bomb, radiograph_bytes

sync_api = pytest.importorskip("playwright.sync_api")
axe_playwright = pytest.importorskip("axe_playwright_python.sync_playwright")
expect = sync_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
RADIOGRAPH = Path(__file__).parent / "data" / "images" / "person1000_bacteria_2931.jpeg"
STAFF_TOKEN = "staff-secret-for-browser-tests"
SCREENS = Path(__file__).parents[1] / "test-artifacts" / "screens"
LANGUAGES = ["en", "zh-CN"]
#: Words of libraries and exceptions that must never reach a page.
LIBRARY_WORDS = re.compile(r"PIL|Pillow|pydicom|decompression|cannot identify|Traceback|Error\b|exception",
                           re.IGNORECASE)

pytestmark = [
    requires_model,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(shutil.which("zbarimg") is None, reason="zbar-tools is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The web app on a free loopback port and a worker with the real model, for the module."""
    config = configuration.load(environ={})
    config["data"]["dir"] = str(tmp_path_factory.mktemp("web") / "ctai-data")
    config["web"].update(staff_token=STAFF_TOKEN, host="127.0.0.1", port=free_port())
    config["worker"]["threads"] = 1
    worker = Worker(config)
    worker.start()
    service = WebService(config)
    service.start()
    yield SimpleNamespace(base=f"http://127.0.0.1:{config['web']['port']}", worker=worker, config=config,
                          web=service.server.config.app.state.web)
    service.stop()
    worker.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        browser.phone = {k: v for k, v in p.devices["Pixel 7"].items() if k != "default_browser_type"}
        yield browser
        browser.close()


def phone_page(browser, lang: str = "en", **options: object):
    """A new page in a phone of its own (cookies apart), whose browser asks for ``lang``."""
    return browser.new_context(**{**browser.phone, "locale": lang, **options}).new_page()


def staff_page(browser, lang: str = "en"):
    return browser.new_context(locale=lang).new_page()


def check(page, name: str) -> None:
    """No serious or critical axe-core violation on ``page``; its screenshot kept as ``name``."""
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENS / f"{name}.png", full_page=True, scale="css")
    violations = axe_playwright.Axe().run(page).response["violations"]
    serious = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]]) for v in violations
               if v["impact"] in ("serious", "critical")]
    assert serious == [], name


def t(lang: str, message: str) -> str:
    return translations(lang).gettext(message)


def read_qr(png: bytes, folder: Path) -> str:
    (folder / "qr.png").write_bytes(png)
    output = subprocess.run(["zbarimg", "-q", str(folder / "qr.png")], capture_output=True, text=True,
                            check=True).stdout
    return output.strip().removeprefix("QR-Code:")


def start_session(staff, base: str) -> str:
    """Log in as staff on page ``staff`` and start a session; the upload link."""
    staff.goto(f"{base}/staff")
    if staff.locator("input[name=token]").count():
        staff.fill("input[name=token]", STAFF_TOKEN)
        staff.click("button[type=submit]")
    staff.fill("input[name=patient_id]", "PID-0815")
    staff.fill("input[name=patient_name]", "DOE^JOHN")
    staff.fill("input[name=accession]", "ACC-0815")
    staff.click("form[action='/staff/sessions'] button")
    staff.wait_for_load_state()  # the style sheet too: before it, the QR code has its natural width
    return staff.get_attribute("#upload-link", "href")


def test_phone_upload_shows_the_result_on_the_phone_and_the_qr_page(served, browser, tmp_path):
    staff = staff_page(browser)
    start_session(staff, served.base)
    check(staff, "staff-session-en")
    staff.evaluate("window.notReloaded = true")
    qr = staff.get_attribute("#qr", "src")
    url = read_qr(base64.b64decode(qr.split(",", 1)[1]), tmp_path)
    assert re.fullmatch(rf"{served.base}/u/[A-Za-z0-9_-]{{43}}", url)

    phone = phone_page(browser)
    phone.goto(url)
    expect(phone.locator("main > .notice")).to_have_text(NOTICE)
    check(phone, "phone-empty-en")
    phone.set_input_files("#camera", RADIOGRAPH)
    item = phone.locator(".upload").first
    expect(item.locator(".notice")).to_be_visible(timeout=120_000)  # the first job loads the model
    expect(item.locator(".notice")).to_have_text(NOTICE)
    expect(item.locator("progress")).to_have_attribute("value", "100")
    expect(item.locator(".result")).to_be_visible()  # shown once the picture has loaded
    expect(item.locator(".state")).to_have_text(re.compile(rf"^AI estimate: ({'|'.join(LABELS.values())})$"))
    expect(phone.locator("#limits")).to_have_text(re.compile(r"up to 9 more files\.$"))  # live, no reload
    assert item.locator(".result").evaluate("img => img.naturalWidth") > 500
    cells = item.locator(".probabilities td:last-child").all_inner_texts()
    shown = [float(text.rstrip("%")) for text in cells]
    [prediction] = served.worker.pipeline.classify(inputs.load(RADIOGRAPH))
    assert shown == pytest.approx([100 * prediction.probabilities[c] for c in CLASSES], abs=0.051)
    check(phone, "phone-result-en")

    # the QR page, never reloaded, shows the upload and its result as they arrive
    row = staff.locator("#live tr.done")
    expect(row).to_contain_text(LABELS[prediction.label])
    expect(row.get_by_role("link", name="result picture")).to_have_attribute("href", re.compile("/picture$"))
    expect(staff.locator("#link-state")).to_contain_text("1 of 10 files sent")
    assert staff.evaluate("window.notReloaded")
    check(staff, "staff-session-result-en")

    text_file = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}
    phone.set_input_files("#picker", files=[text_file])
    failed = phone.locator(".upload.failed")
    expect(failed.locator(".state")).to_have_text(PHONE["not_supported"])
    expect(failed.locator(".name")).to_have_text("notes.txt")  # which of the chosen files failed

    for page in (phone, phone_page(browser)):  # a reload, a new tab
        page.reload() if page is phone else page.goto(url)
        expect(page.locator("#limits")).to_have_text(re.compile(r"up to 9 more files\.$"))
        item = page.locator(".upload")
        expect(item).to_have_count(1)  # the refused file was not kept
        expect(item.locator(".notice")).to_be_visible()
        expect(item.locator(".result")).to_be_visible()
        assert [float(t.rstrip("%")) for t in item.locator(".probabilities td:last-child").all_inner_texts()] == shown
        expect(page.get_by_role("button", name="Take a photo")).to_be_enabled()

    # staff end the link: the phone, back within the result period, still shows the result
    staff.get_by_role("button", name="End this upload link now").click()
    expect(staff.locator("main")).to_contain_text("it takes no more files")
    check(staff, "staff-ended-en")
    phone.reload()
    expect(phone.locator("#closed")).to_contain_text(PHONE["ended"])
    expect(phone.locator("#closed")).to_contain_text("The results below stay here until")
    expect(phone.locator("#limits")).to_be_hidden()
    for name in ("Take a photo", "Choose files"):
        expect(phone.get_by_role("button", name=name)).to_be_disabled()
    expect(phone.locator(".upload .result")).to_be_visible()
    check(phone, "phone-ended-en")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_refused_file_of_a_selection_names_itself(served, browser, lang):
    link = start_session(staff_page(browser), served.base)
    phone = phone_page(browser, lang)
    phone.goto(link)
    expect(phone.locator("html")).to_have_attribute("lang", lang)
    expect(phone.locator("main > .notice")).to_have_text(t(lang, NOTICE))
    check(phone, f"phone-empty-{lang}")
    files = {"huge.png": (png_bomb(), "too_many_pixels"),
             "cut.jpg": (radiograph_bytes()[:600], "damaged"),
             "report.pdf": (b"%PDF-1.7 not a picture", "not_supported")}
    phone.set_input_files("#picker", files=[{"name": name, "mimeType": "application/octet-stream",
                                             "buffer": content} for name, (content, _) in files.items()])
    expect(phone.locator(".upload.failed")).to_have_count(3)
    for name, (_, key) in files.items():
        card = phone.locator(".upload", has=phone.locator(".name", has_text=name))
        expect(card.locator(".state")).to_have_text(t(lang, PHONE[key]))
    assert not LIBRARY_WORDS.search(phone.locator("main").inner_text())
    expect(phone.locator("#limits")).to_contain_text(t(lang, "{n} more files").format(n=10) if lang == "en"
                                                     else "10")  # refused files are not counted
    check(phone, f"phone-refused-{lang}")

    phone.set_input_files("#camera", files=[{"name": "page.png", "mimeType": "image/png", "buffer": text_page()}])
    card = phone.locator(".upload", has=phone.locator(".name", has_text="page.png"))
    expect(card.locator(".state")).to_have_text(t(lang, PHONE["not_a_chest"]), timeout=60_000)  # the gate's
    check(phone, f"phone-not-a-chest-{lang}")


def text_page() -> bytes:
    """A PNG of a printed page: a picture the input gate refuses."""
    from training.nonchest import text_page

    buffer = io.BytesIO()
    Image.fromarray(np.round(text_page(np.random.default_rng(3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("lang", LANGUAGES)
def test_used_up_expired_and_gone_links_say_so(served, browser, lang):
    store, result_s = Store(served.config), served.config["web"]["result_minutes"] * 60
    phone = phone_page(browser, lang)
    _, spent = store.create_session("PID-0815", "DOE^JOHN", "", 600, 1, 10**7)
    phone.goto(f"{served.base}/u/{spent}")
    phone.set_input_files("#camera", RADIOGRAPH)
    expect(phone.locator("#closed")).to_contain_text(t(lang, PHONE["file_limit"]).format(files=1))
    expect(phone.locator("button[data-input]:disabled")).to_have_count(2)
    expect(phone.locator(".upload .notice")).to_be_visible(timeout=60_000)
    check(phone, f"phone-spent-{lang}")

    _, expired = store.create_session("PID-0815", "DOE^JOHN", "", -1, 10, 10**7)
    phone.goto(f"{served.base}/u/{expired}")
    expect(phone.locator("#closed")).to_contain_text(t(lang, PHONE["expired"]))
    expect(phone.locator("button[data-input]:disabled")).to_have_count(2)
    check(phone, f"phone-expired-{lang}")

    _, gone = store.create_session("PID-0815", "DOE^JOHN", "", -result_s - 1, 10, 10**7)
    for token, key in ((gone, "results_gone"), ("not-a-token", "invalid")):
        phone.goto(f"{served.base}/u/{token}")
        expect(phone.get_by_role("alert")).to_have_text(t(lang, PHONE[key]))
        check(phone, f"phone-{key}-{lang}")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_staff_pages_in_both_languages(served, browser, lang):
    JobStore(served.config).finish(Job("1.2.3.4", "listener"), "test", Summary("failed", error="cannot read"), 1.0)
    page = staff_page(browser, lang)
    page.goto(f"{served.base}/staff")
    expect(page.locator("html")).to_have_attribute("lang", lang)
    expect(page.get_by_role("heading", level=1)).to_have_text(t(lang, "Staff login"))
    check(page, f"staff-login-{lang}")
    page.fill("input[name=token]", "wrong-token")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text(t(lang, "Wrong staff token."))
    check(page, f"staff-login-wrong-{lang}")
    served.web.login_failures = Throttle()  # this wrong token does not count against later tests
    start_session(page, served.base)
    expect(page.get_by_role("heading", level=1)).to_have_text(t(lang, "Scan to upload"))
    check(page, f"staff-session-{lang}")
    page.goto(f"{served.base}/staff")
    expect(page.locator("main > .notice")).to_have_text(t(lang, NOTICE))
    check(page, f"staff-dashboard-{lang}")

    other = {"en": "zh-CN", "zh-CN": "en"}[lang]  # the switch: the other language, kept for later pages
    page.get_by_role("navigation").get_by_role("link").click()
    expect(page.locator("html")).to_have_attribute("lang", other)
    page.goto(f"{served.base}/staff")
    expect(page.locator("html")).to_have_attribute("lang", other)


def test_repeated_wrong_tokens_are_throttled(served, browser):
    page = staff_page(browser)
    try:
        page.goto(f"{served.base}/staff")
        for _ in range(6):
            page.fill("input[name=token]", "wrong-token")
            page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_have_text(re.compile(r"^Too many wrong tokens\. Try again in \d+"))
        page.fill("input[name=token]", STAFF_TOKEN)  # even the right token waits
        page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_contain_text("Too many wrong tokens")
        check(page, "staff-login-throttled-en")
    finally:
        served.web.login_failures = Throttle()


def test_keyboard_alone_uploads(served, browser):
    link = start_session(staff_page(browser), served.base)
    phone = phone_page(browser)
    phone.on("filechooser", lambda chooser: None)  # intercept choosers from the start, not racing Enter
    phone.goto(link)
    for name, multiple, files in (("Choose files", True, []), ("Take a photo", False, [RADIOGRAPH])):
        phone.locator("body").focus()
        for _ in range(20):
            phone.keyboard.press("Tab")
            if phone.evaluate("document.activeElement.textContent.trim()") == name:
                break
        expect(phone.get_by_role("button", name=name)).to_be_focused()
        with phone.expect_file_chooser() as chooser:
            phone.keyboard.press("Enter")
        assert chooser.value.is_multiple() == multiple
        chooser.value.set_files(files)
    expect(phone.locator(".upload .notice")).to_be_visible(timeout=60_000)
    expect(phone.locator(".upload .name")).to_have_text(RADIOGRAPH.name)


@pytest.mark.parametrize("width", [360, 412])
def test_no_page_is_wider_than_the_phone(served, browser, width):
    long_job = Job("1.2.840.113619.2.55.3.604688119.969.1234567890.123", "listener")  # a series UID
    JobStore(served.config).finish(long_job, "test",
                                   Summary("failed", error=f"cannot read {'/very/long/path' * 8}"), 1.0)
    page = phone_page(browser, viewport={"width": width, "height": 800})
    # against the width set: a mobile browser widens innerWidth to fit content that overflows
    # the overflow and the elements whose right edge passes the viewport, for the failure message
    overflow = (f"[document.documentElement.scrollWidth - {width}, [...document.querySelectorAll('body *')]"
                f".filter(e => e.getBoundingClientRect().right > {width}).map(e => e.tagName + '.' + e.className"
                f" + ' ' + e.textContent.slice(0, 30))]")
    widths = {}
    for lang in LANGUAGES:
        page.goto(f"{served.base}/staff?lang={lang}")
        widths[f"login {lang}"] = page.evaluate(overflow)
        link = start_session(page, served.base)
        widths[f"session {lang}"] = page.evaluate(overflow)
        page.goto(f"{served.base}/staff")
        widths[f"staff {lang}"] = page.evaluate(overflow)
        page.goto(link)
        widths[f"phone {lang}"] = page.evaluate(overflow)
        page.goto(f"{served.base}/u/not-a-token")
        widths[f"message {lang}"] = page.evaluate(overflow)
    assert not {page: wide for page, wide in widths.items() if wide[0]}


def trusting(folder: Path, ca: Path) -> dict[str, str]:
    """An environment whose HOME has an NSS database that trusts ``ca`` for web sites, as a
    hospital's managed browsers would (Chromium on Linux reads ~/.pki/nssdb)."""
    nssdb = folder / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, capture_output=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "ctai test CA", "-i", str(ca)],
                   check=True, capture_output=True)
    return {"HOME": str(folder), "PATH": "/usr/bin:/bin"}


@pytest.mark.skipif(shutil.which("certutil") is None, reason="libnss3-tools is not installed")
def test_an_upload_over_https_with_the_hospitals_ca_trusted(served, browser, tmp_path):
    from ctai import tls

    config = {**served.config, "web": {**served.config["web"], "port": free_port()}}
    made = tls.init(config, ["localhost"], force=True)
    base = f"https://localhost:{config['web']['port']}"
    config["web"].update(tls_cert=str(made.server[0]), tls_key=str(made.server[1]), public_url=base)
    service = WebService(config)  # the same data dir and queue: the module's worker classifies its uploads
    service.start()
    try:
        with pytest.raises(sync_api.Error, match="ERR_CERT_AUTHORITY_INVALID"):
            staff_page(browser).goto(f"{base}/staff")  # a browser that does not trust the CA refuses
        trusted = browser.browser_type.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              env=trusting(tmp_path / "home", made.ca))
        trusted.phone = browser.phone
        try:
            url = start_session(staff_page(trusted), base)
            assert url.startswith(f"{base}/u/")
            phone = phone_page(trusted)
            phone.goto(url)
            phone.set_input_files("#camera", RADIOGRAPH)
            item = phone.locator(".upload").first
            expect(item.locator(".result")).to_be_visible(timeout=120_000)
            expect(item.locator(".state")).to_have_text(re.compile(rf"^AI estimate: ({'|'.join(LABELS.values())})$"))
        finally:
            trusted.close()
    finally:
        service.stop()
