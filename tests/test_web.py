"""The phone-upload web app through its HTTP interface: staff login, sessions, uploads, limits, results."""

from __future__ import annotations

import html
import io
import json
import logging
import re
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ctai import hookimpl
from ctai.model.backend import ProbabilityClassifier
from ctai.model.gate import NOT_A_CHEST
from ctai.plugins import plugin_manager
from ctai.results import JobStore
from ctai.types import CLASSES, Job, ModelInfo
from ctai.web.app import RedactTokens, create_app
from ctai.web.i18n import translations
from ctai.web.messages import NOTICE, PHONE, for_phone
from ctai.web.sessions import Store
from ctai.worker import Worker
from tests.dicomfactory import dataset, picture, save

IMAGES = Path(__file__).parent / "data" / "images"
RADIOGRAPH = IMAGES / "IM-0115-0001.jpeg"
STAFF_TOKEN = "staff-secret-for-tests"
PATIENT_ID, PATIENT_NAME = "PID-4711", "DOE^JANE"
FAKE_PROBABILITIES = {"normal": 0.2, "bacterial": 0.7, "viral": 0.1}


@pytest.fixture
def web_config(config):
    config["web"].update(staff_token=STAFF_TOKEN, max_files=3, max_bytes=400_000)
    return config


@pytest.fixture
def jobs() -> list[Job]:
    return []


@pytest.fixture
def client(web_config, jobs):
    with TestClient(create_app(web_config, submit=jobs.append)) as client:
        yield client


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def login(client: TestClient) -> str:
    """Log in as staff; the CSRF token of the login."""
    csrf = csrf_of(client.get("/staff").text)
    response = client.post("/staff/login", data={"token": STAFF_TOKEN, "csrf": csrf})
    assert response.status_code == 200 and 'action="/staff/sessions"' in response.text
    return csrf_of(response.text)


def new_session(client: TestClient, csrf: str | None = None) -> str:
    """Start an upload session; the path of its upload link."""
    csrf = csrf or login(client)
    response = client.post("/staff/sessions", data={"patient_id": PATIENT_ID, "patient_name": PATIENT_NAME,
                                                    "accession": "", "csrf": csrf})
    assert response.status_code == 200
    url = re.search(r'href="(http://127\.0\.0\.1:8043/u/[^"]+)"', response.text).group(1)
    return url.removeprefix("http://127.0.0.1:8043")


def radiograph_bytes(size: tuple[int, int] | None = None, **save_options: object) -> bytes:
    image = Image.open(RADIOGRAPH).convert("L")
    if size:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **save_options)
    return buffer.getvalue()


def png_bomb(side: int = 10_000) -> bytes:
    """A valid PNG of side x side black pixels (100 MB decoded) in about 100 kB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (side + 1)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def stored_files(config) -> list[Path]:
    return [p for p in (Path(config["data"]["dir"]) / "web" / "uploads").rglob("*") if p.is_file()]


def assert_refused(response, status: int, message: str, config, jobs) -> None:
    assert response.status_code == status
    assert message in response.json()["error"]
    assert stored_files(config) == [] and jobs == []


# Staff side


def test_staff_pages_need_a_login(client, web_config):
    assert "Staff login" in client.get("/staff").text
    response = client.post("/staff/sessions", data={"patient_id": PATIENT_ID, "patient_name": PATIENT_NAME})
    assert response.status_code == 401 and "log in" in response.text
    csrf = csrf_of(client.get("/staff").text)
    response = client.post("/staff/login", data={"token": "guess", "csrf": csrf})
    assert response.status_code == 401 and "Wrong staff token" in response.text
    assert Store(web_config).recent_uploads() == []


def test_repeated_wrong_tokens_are_throttled(web_config, monkeypatch):
    app = create_app(web_config, submit=lambda job: None)
    guesser, staff = TestClient(app, client=("10.0.0.9", 4000)), TestClient(app, client=("10.0.0.2", 4000))
    response, statuses = guesser.get("/staff"), []
    for i in range(100):
        response = guesser.post("/staff/login", data={"token": f"guess-{i}", "csrf": csrf_of(response.text)})
        statuses.append(response.status_code)
    assert statuses == [401] * 5 + [429] * 95
    response = guesser.post("/staff/login", data={"token": STAFF_TOKEN, "csrf": csrf_of(response.text)})
    assert response.status_code == 429 and "Too many wrong tokens" in response.text
    assert 0 < int(response.headers["retry-after"]) <= 60
    login(staff)  # another client is not held up
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    response = guesser.post("/staff/login", data={"token": STAFF_TOKEN, "csrf": csrf_of(response.text)})
    assert response.status_code == 200 and "New phone upload" in response.text


def test_staff_forms_need_their_csrf_token(client, web_config):
    client.get("/staff")
    assert client.post("/staff/login", data={"token": STAFF_TOKEN}).status_code == 403
    assert client.post("/staff/login", data={"token": STAFF_TOKEN, "csrf": "forged"}).status_code == 403
    login(client)
    data = {"patient_id": PATIENT_ID, "patient_name": PATIENT_NAME}
    assert client.post("/staff/sessions", data=data).status_code == 403
    assert client.post("/staff/sessions", data={**data, "csrf": "forged"}).status_code == 403
    with sqlite3.connect(Store(web_config).path) as db:
        assert db.execute("SELECT COUNT(*) FROM sessions").fetchone() == (0,)


def test_staff_cookie_is_http_only_and_same_site(client):
    csrf = csrf_of(client.get("/staff").text)
    response = client.post("/staff/login", data={"token": STAFF_TOKEN, "csrf": csrf}, follow_redirects=False)
    cookie = response.headers["set-cookie"]
    assert response.status_code == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_session_details_are_checked(client):
    csrf = login(client)
    response = client.post("/staff/sessions", data={"patient_id": "P\\1", "patient_name": "X", "csrf": csrf})
    assert response.status_code == 422 and "not allowed" in response.text
    response = client.post("/staff/sessions", data={"patient_id": "", "patient_name": "X", "csrf": csrf})
    assert response.status_code == 422 and "patient ID" in response.text
    hostile = {"patient_id": "P1", "patient_name": "<script>x()</script>", "csrf": csrf}
    response = client.post("/staff/sessions", data=hostile)
    assert response.status_code == 200 and "&lt;script&gt;x()" in response.text
    assert "<script>x" not in response.text


def test_tokens_are_random_and_stored_only_as_hashes(client, web_config):
    csrf = login(client)
    tokens = {new_session(client, csrf).removeprefix("/u/") for _ in range(3)}
    assert len(tokens) == 3 and all(len(token) >= 43 for token in tokens)  # >= 256 bits, URL-safe base64
    database = Store(web_config).path.read_bytes()
    assert not any(token.encode() in database for token in tokens)


def test_qr_code_is_a_png(client):
    csrf = login(client)
    response = client.post("/staff/sessions", data={"patient_id": PATIENT_ID, "patient_name": PATIENT_NAME,
                                                    "csrf": csrf})
    assert 'src="data:image/png;base64,' in response.text


# Phone side


def test_upload_is_stored_without_metadata_and_queued(client, web_config, jobs):
    link = new_session(client)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 8.0, 30.0), 3: "E", 4: (11.0, 34.0, 12.0)})
    photo = radiograph_bytes((320, 240), exif=exif.tobytes())
    assert b"PhoneMaker" in photo

    page = client.get(link)
    assert page.status_code == 200 and 'capture="environment"' in page.text and PATIENT_ID not in page.text
    response = client.post(f"{link}/files", content=photo, headers={"content-type": "text/plain"})
    assert response.status_code == 201  # the content decides, not the declared type

    [stored] = stored_files(web_config)
    content = stored.read_bytes()
    assert stored.suffix == ".png" and b"PhoneMaker" not in content and b"eXIf" not in content
    with Image.open(stored) as image:
        assert image.size == (240, 320)  # orientation applied, then dropped with the rest of the EXIF
        assert not image.getexif() and "exif" not in image.info
    [job] = jobs
    assert job.source == "upload" and job.options == {"upload": response.json()["id"]}
    assert PATIENT_ID not in repr(job) and PATIENT_ID not in link
    status = client.get(f"{link}/files/{job.options['upload']}").json()
    assert status["status"] == "pending"


def test_phone_page_explains_before_any_result(client, web_config):
    page = client.get(new_session(client)).text
    assert NOTICE in page.split("<template")[0]  # shown before any result, and with each one
    assert "How to take the photo" in page and "flash off" in page and "glare" in page
    assert f"deleted {web_config['web']['result_minutes']} minutes after the link expires" in page
    assert "Result:" not in page + (Path(__file__).parents[1] / "ctai/web/static/upload.js").read_text()


def test_language_follows_the_browser_and_the_switch(client):
    zh = translations("zh-CN").gettext
    page = client.get("/staff", headers={"Accept-Language": "fr-CH, zh;q=0.8, en;q=0.5"}).text
    assert '<html lang="zh-CN">' in page and zh("Staff login") in page and 'href="?lang=en"' in page
    page = client.get("/staff", headers={"Accept-Language": "en-GB,en;q=0.9,zh-CN;q=0.8"}).text
    assert '<html lang="en">' in page and "Staff login" in page and 'href="?lang=zh-CN"' in page
    assert '<html lang="en">' in client.get("/staff").text  # no header: English

    switched = client.get("/staff?lang=zh-CN", headers={"Accept-Language": "en"})
    assert '<html lang="zh-CN">' in switched.text and client.cookies["ctai_lang"] == "zh-CN"
    link = new_session(client)  # the cookie keeps the choice, whatever the browser says
    page = client.get(link, headers={"Accept-Language": "en"}).text
    for text in ("Upload a chest X-ray", "Take a photo", NOTICE, "How to take the photo"):
        assert zh(text) in page and zh(text) != text
    strings = json.loads(html.unescape(re.search(r'data-strings="([^"]+)"', page).group(1)))  # for upload.js
    assert strings["estimate"] == zh("AI estimate: {label}") and strings["labels"]["viral"] == zh("Viral pneumonia")
    refusal = client.post(f"{link}/files", content=b"%PDF-1.7", headers={"Accept-Language": "en"}).json()
    assert refusal["error"] == zh(PHONE["not_supported"])
    assert '<html lang="en">' in client.get(f"{link}?lang=en").text


def test_every_sentence_has_its_chinese_translation():
    """The catalog holds every message of the sources, translated (pybabel extract; docs/translations.md)."""
    from babel.messages.extract import extract_from_dir
    from babel.messages.mofile import read_mo
    from babel.messages.pofile import read_po

    root = Path(__file__).parents[1]
    method_map = [("ctai/web/**.py", "python"), ("ctai/web/templates/**.html", "jinja2")]
    sources = {message[2] for message in extract_from_dir(
        root, method_map, {"ctai/web/templates/**.html": {"trimmed": "true"}}, keywords={"N_": None, "_": None,
                                                                                     "gettext": None,
                                                                                     "ngettext": (1, 2)})}
    folder = root / "ctai/web/locale/zh_CN/LC_MESSAGES"
    with (folder / "messages.po").open("rb") as f:
        catalog = read_po(f)
    with (folder / "messages.mo").open("rb") as f:
        compiled = read_mo(f)
    assert {m.id for m in catalog if m.id} == sources
    for message in catalog:
        if message.id:
            assert message.string and all(message.string) and not message.fuzzy, message.id
            fields = set(re.findall(r"{\w+}|%\(\w+\)s", str(message.id)))
            assert all(set(re.findall(r"{\w+}|%\(\w+\)s", text)) == fields
                       for text in ([message.string] if isinstance(message.string, str) else message.string))
            assert compiled[message.id].string in (message.string, list(message.string))  # pybabel compile was run


def test_heic_photo_is_accepted(client, web_config, jobs):
    buffer = io.BytesIO()
    Image.open(RADIOGRAPH).convert("RGB").save(buffer, format="HEIF", quality=90)
    assert client.post(f"{new_session(client)}/files", content=buffer.getvalue()).status_code == 201
    [stored] = stored_files(web_config)
    assert stored.suffix == ".png" and Image.open(stored).size == (224, 224) and len(jobs) == 1


def test_unknown_token_sees_nothing(client, jobs):
    csrf = login(client)
    link = new_session(client, csrf)
    client.post(f"{link}/files", content=radiograph_bytes())
    upload_id = jobs[0].options["upload"]
    other = new_session(client, csrf)
    for path in ("/u/not-a-token", f"{other}/files/{upload_id}", f"{other}/files/{upload_id}/picture",
                 f"/u/not-a-token/files/{upload_id}"):
        assert client.get(path).status_code == 404
    assert client.post("/u/not-a-token/files", content=radiograph_bytes()).status_code == 404
    assert len(jobs) == 1


def test_expired_token_is_refused(client, web_config, jobs, monkeypatch):
    link = new_session(client)
    later = time.time() + 16 * 60
    monkeypatch.setattr(time, "time", lambda: later)
    page = client.get(link)
    assert page.status_code == 200 and "expired" in page.text and "disabled" in page.text
    assert_refused(client.post(f"{link}/files", content=radiograph_bytes()), 410, "expired", web_config, jobs)
    later += 60 * 60  # past the result window too
    page = client.get(link)
    assert page.status_code == 410 and "no longer available" in page.text


def test_reload_shows_every_upload_and_what_is_left(client, web_config, jobs, monkeypatch):
    link = new_session(client)
    for _ in range(2):
        client.post(f"{link}/files", content=radiograph_bytes())
    first, second = (job.options["upload"] for job in jobs)
    Store(web_config).finish_upload(first, "bacterial", FAKE_PROBABILITIES)
    Store(web_config).finish_upload(second, error=PHONE["damaged"])
    page = client.get(link).text
    assert "up to 1 more file." in page and "15 more minutes" in page and "disabled" not in page
    state = client.get(f"{link}/files").json()
    assert state["open"] and "up to 1 more file." in state["limits"]
    assert [(u["id"], u["status"]) for u in state["uploads"]] == [(first, "done"), (second, "failed")]
    assert state["uploads"][0]["probabilities"] == FAKE_PROBABILITIES
    assert state["uploads"][1]["error"] == PHONE["damaged"]

    client.post(f"{link}/files", content=radiograph_bytes())
    page = client.get(link).text
    assert "(limit: 3)" in page and page.count("disabled") == 2  # both buttons
    later = time.time() + 16 * 60  # the link expired; its results stay for result_minutes
    monkeypatch.setattr(time, "time", lambda: later)
    state = client.get(f"{link}/files").json()
    assert not state["open"] and "expired" in state["closed"] and len(state["uploads"]) == 3
    assert client.get(f"{link}/files/{first}").json()["status"] == "done"


def test_a_data_dir_of_before_ended_sessions_is_upgraded(web_config):
    root = Path(web_config["data"]["dir"]) / "web"
    root.mkdir(parents=True)
    with sqlite3.connect(root / "web.sqlite3") as db:
        db.executescript(SCHEMA_WITHOUT_ENDED)
    store = Store(web_config)
    session, _ = store.create_session(PATIENT_ID, PATIENT_NAME, "", 60, 1, 1000)
    assert store.end_session(session.id) and store.session(session.id).ended


SCHEMA_WITHOUT_ENDED = """CREATE TABLE sessions (
    id TEXT PRIMARY KEY, token_hash TEXT UNIQUE NOT NULL,
    patient_id TEXT NOT NULL, patient_name TEXT NOT NULL, accession TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, max_files INTEGER NOT NULL, max_bytes INTEGER NOT NULL,
    files INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0);"""


def test_finished_sessions_are_purged(client, web_config, jobs, monkeypatch):
    csrf = login(client)
    link = new_session(client, csrf)
    client.post(f"{link}/files", content=radiograph_bytes())
    Store(web_config).finish_upload(jobs[0].options["upload"], "normal", FAKE_PROBABILITIES)
    later = time.time() + (15 + 60 + 1) * 60  # past the upload window and the result window
    monkeypatch.setattr(time, "time", lambda: later)
    new_session(client, csrf)  # starting a session purges the finished ones
    assert stored_files(web_config) == [] and Store(web_config).recent_uploads() == []
    assert client.get(link).status_code == 404


def test_with_the_disk_nearly_full_uploads_are_refused_plainly(web_config, jobs):
    web_config["data"]["min_free_percent"] = 100  # every disk is "nearly full" now
    with TestClient(create_app(web_config, submit=jobs.append)) as client:
        response = client.post(f"{new_session(client)}/files", content=radiograph_bytes())
    assert response.status_code == 507 and response.json()["error"] == PHONE["disk_full"]
    assert not stored_files(web_config) and not jobs


def test_staff_can_end_an_upload_link_at_once(client, jobs):
    csrf = login(client)
    response = client.post("/staff/sessions", data={"patient_id": PATIENT_ID, "patient_name": PATIENT_NAME,
                                                    "accession": "", "csrf": csrf})
    link = re.search(r'href="http://127\.0\.0\.1:8043(/u/[^"]+)"', response.text).group(1)
    end = re.search(r'action="(/staff/sessions/[0-9a-f]+/end)"', response.text).group(1)
    assert client.post(end, data={"csrf": "forged"}).status_code == 403
    assert client.post(end, data={"csrf": csrf}).status_code == 200
    refused = client.post(f"{link}/files", content=radiograph_bytes())
    assert refused.status_code == 410 and refused.json()["error"] == PHONE["ended"] and not jobs
    assert PHONE["ended"] in client.get(link).text


def test_the_qr_page_follows_its_link(client, web_config, jobs):
    """The QR page's live part (fetched every 2 s): what the link takes, and its uploads with results."""
    csrf = login(client)
    page = client.post("/staff/sessions", data={"patient_id": PATIENT_ID, "patient_name": PATIENT_NAME,
                                                "accession": "ACC-77", "csrf": csrf}).text
    live = re.search(r'data-live="(/staff/sessions/[0-9a-f]+/live)"', page).group(1)
    link = re.search(r'href="http://127\.0\.0\.1:8043(/u/[^"]+)"', page).group(1)
    assert "No picture sent yet." in page and "0 of 3 files sent" in page and "ACC-77" in page
    for _ in range(3):
        client.post(f"{link}/files", content=radiograph_bytes())
    Store(web_config).finish_upload(jobs[0].options["upload"], "bacterial", FAKE_PROBABILITIES)
    Store(web_config).finish_upload(jobs[1].options["upload"], error=PHONE["damaged"])
    part = client.get(live).text
    assert "used up: all 3 files were sent" in part and 'data-final="false"' in part  # one still pending
    assert part.count("<tr class=") == 3 and "Bacterial pneumonia" in part and PHONE["damaged"] in part
    Store(web_config).finish_upload(jobs[2].options["upload"], "normal", FAKE_PROBABILITIES)
    client.post(re.search(r'action="(/staff/sessions/[0-9a-f]+/end)"', page).group(1), data={"csrf": csrf})
    part = client.get(live).text
    assert "was ended at" in part and 'data-final="true"' in part
    client.cookies.clear()
    assert client.get(live).status_code == 401


def test_file_limit(client, web_config, jobs):
    link = new_session(client)
    for _ in range(3):
        assert client.post(f"{link}/files", content=radiograph_bytes()).status_code == 201
    response = client.post(f"{link}/files", content=radiograph_bytes())
    assert response.status_code == 403 and response.json()["error"] == PHONE["file_limit"].format(files=3)
    assert len(stored_files(web_config)) == 3 and len(jobs) == 3


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
def test_oversized_file_is_refused(client, web_config, jobs, streamed):
    link = new_session(client)
    big = radiograph_bytes() + b"\0" * 400_000
    content = iter([big[:100_000], big[100_000:]]) if streamed else big  # streamed: no Content-Length
    assert_refused(client.post(f"{link}/files", content=content), 413, "too large", web_config, jobs)


def test_non_image_is_refused(client, web_config, jobs):
    link = new_session(client)
    for content in (b"%PDF-1.7 not a picture", b"MZ\x90\x00" + b"\0" * 300, b""):
        assert_refused(client.post(f"{link}/files", content=content, headers={"content-type": "image/jpeg"}),
                       415, "not a JPEG, PNG, HEIC or DICOM image", web_config, jobs)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_png_bomb_is_refused(client, web_config, jobs):
    link = new_session(client)
    bomb = png_bomb()
    assert len(bomb) < 400_000
    response = client.post(f"{link}/files", content=bomb)
    assert_refused(response, 422, PHONE["too_many_pixels"], web_config, jobs)
    assert response.json()["error"] == PHONE["too_many_pixels"]  # no library text on the page


def test_damaged_image_is_refused(client, web_config, jobs, caplog):
    caplog.set_level(logging.INFO)
    link = new_session(client)
    response = client.post(f"{link}/files", content=radiograph_bytes()[:600])
    assert_refused(response, 422, PHONE["damaged"], web_config, jobs)
    assert response.json()["error"] == PHONE["damaged"]
    assert "cannot decode image" in caplog.text  # the library's words go to the log


@pytest.mark.parametrize("reason, key", [
    ("image too large (decompression bomb guard): Image size (400000000 pixels) exceeds limit", "too_many_pixels"),
    ("cannot decode image: Truncated File Read", "damaged"),
    ("image of 20x900 pixels is too small to classify", "too_small"),
    (f"{NOT_A_CHEST} (chest-image score 0.12, below 0.50)", "not_a_chest"),
    ("some library's KeyError: 0x7fe0", "failed"),
])
def test_technical_reasons_become_plain_sentences(reason, key):
    assert for_phone(reason) == PHONE[key]
    assert for_phone(PHONE["wrong_patient"]) == PHONE["wrong_patient"]


def test_dicom_of_another_patient_is_refused(client, web_config, jobs, tmp_path):
    link = new_session(client)
    other = save(dataset(picture(), PatientID="SOMEONE-ELSE"), tmp_path / "other.dcm").read_bytes()
    assert_refused(client.post(f"{link}/files", content=other), 422, PHONE["wrong_patient"], web_config, jobs)
    own = save(dataset(picture(), PatientID=PATIENT_ID), tmp_path / "own.dcm").read_bytes()
    assert client.post(f"{link}/files", content=own).status_code == 201
    [stored] = stored_files(web_config)
    assert stored.suffix == ".dcm" and stored.read_bytes() == own  # kept as it came


def test_dicom_written_without_preamble_is_taken(client, web_config, jobs, tmp_path):
    """PS3.10 7.1 asks for the preamble and "DICM", but files without them exist (dcmtk's
    ``dcmconv -F`` writes them): the upload knows DICOM by content, as every other input does."""
    whole = save(dataset(picture(), PatientID=PATIENT_ID), tmp_path / "own.dcm").read_bytes()
    assert client.post(f"{new_session(client)}/files", content=whole[132:]).status_code == 201
    [stored] = stored_files(web_config)
    assert stored.suffix == ".dcm" and stored.read_bytes() == whole[132:]


def test_truncated_dicom_is_refused(client, web_config, jobs, tmp_path):
    whole = save(dataset(picture(), PatientID=PATIENT_ID), tmp_path / "own.dcm").read_bytes()
    assert_refused(client.post(f"{new_session(client)}/files", content=whole[:-100]), 422,
                   PHONE["dicom_unreadable"], web_config, jobs)


def test_a_deflated_dicom_that_inflates_beyond_any_image_is_refused_unread(client, web_config, jobs, tmp_path,
                                                                            monkeypatch):
    """pydicom inflates a deflated data set whole as it reads it (1 MB of deflated zeros is 1 GB):
    the upload is inflated a piece at a time first (the limit lowered to 1 MB here)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from ctai.inputs import dicom

    monkeypatch.setattr(dicom, "MAX_INFLATED", 2**20)
    ds = dataset(picture(), PatientID=PATIENT_ID)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.PixelData = bytes(2 * 2**20)
    content = save(ds, tmp_path / "bomb.dcm").read_bytes()
    assert len(content) < 20_000
    assert_refused(client.post(f"{new_session(client)}/files", content=content), 422, PHONE["dicom_unreadable"],
                   web_config, jobs)


def test_dicom_without_image_is_refused(client, web_config, jobs, tmp_path):
    ds = dataset(picture(), PatientID=PATIENT_ID)
    del ds.PixelData
    content = save(ds, tmp_path / "no-pixels.dcm").read_bytes()
    assert_refused(client.post(f"{new_session(client)}/files", content=content), 422, "holds no image",
                   web_config, jobs)


def test_staff_token_is_generated_when_not_configured(config):
    create_app(config, submit=lambda job: None)
    path = Path(config["data"]["dir"]) / "web" / "staff-token"
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) >= 32
    with TestClient(create_app(config, submit=lambda job: None)) as client:
        csrf = csrf_of(client.get("/staff").text)
        response = client.post("/staff/login", data={"token": path.read_text().strip(), "csrf": csrf})
        assert "New phone upload" in response.text


def test_short_staff_token_is_refused(config):
    config["web"]["staff_token"] = "1234"
    with pytest.raises(ValueError, match="staff_token"):
        create_app(config)


def test_responses_carry_security_headers(client):
    headers = client.get("/staff").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer" and headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"


def test_logs_hold_no_tokens_or_patient_data(client, caplog):
    caplog.set_level(logging.DEBUG)
    link = new_session(client)
    client.post(f"{link}/files", content=radiograph_bytes())
    client.post(f"{link}/files", content=b"junk")
    token = link.removeprefix("/u/")
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("ctai", "uvicorn")))
    assert "refused" in logged
    assert not any(secret in logged for secret in (token, PATIENT_ID, PATIENT_NAME, STAFF_TOKEN))
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s"',
                               ("1.2.3.4", "GET", link), None)
    RedactTokens().filter(record)
    assert token not in record.getMessage() and "/u/…" in record.getMessage()


# Through the queue and the worker (a stand-in classifier: the browser test uses the real model)


class FakeClassifier(ProbabilityClassifier):
    info = ModelInfo("fake", "0")
    input_size = 64

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.tile([FAKE_PROBABILITIES[c] for c in CLASSES], (len(batch), 1))


class FakeBackend:
    @hookimpl(tryfirst=True)
    def ctai_classifier(self, config):
        return FakeClassifier()


@pytest.fixture
def queued_client(web_config):
    """The app with its default job submission (the durable queue) and a worker taking the jobs."""
    web_config["worker"]["threads"] = 1
    pm = plugin_manager(web_config)
    pm.register(FakeBackend())
    worker = Worker(web_config, pm)
    worker.start()
    with TestClient(create_app(web_config)) as client:
        yield client
    worker.stop()


def wait_until(condition: Callable[[], object]) -> None:
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_upload_runs_through_the_queue_and_the_worker(web_config, queued_client, tmp_path):
    web_config["folder"]["path"] = str(tmp_path / "delivered")
    link = new_session(queued_client)
    upload_id = queued_client.post(f"{link}/files", content=radiograph_bytes()).json()["id"]
    wait_until(lambda: queued_client.get(f"{link}/files/{upload_id}").json()["status"] != "pending")
    status = queued_client.get(f"{link}/files/{upload_id}").json()
    assert status["status"] == "done" and status["label"] == "bacterial" and status["picture"]
    assert status["probabilities"] == pytest.approx(FAKE_PROBABILITIES)
    picture_response = queued_client.get(f"{link}/files/{upload_id}/picture")
    assert picture_response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture_response.content)).mode == "RGB"
    wait_until(lambda: JobStore(web_config).get(f"upload-{upload_id}").status == "done")
    assert JobStore(web_config).get(f"upload-{upload_id}").label == "bacterial"  # `ctai jobs` lists it
    staff_page = queued_client.get("/staff").text
    assert PATIENT_ID in staff_page and "Bacterial pneumonia" in staff_page and NOTICE in staff_page
    assert f"upload-{upload_id}" not in staff_page  # listed once, as an upload, not again as a job
    assert re.search(r"<td>\d{4}-\d\d-\d\d \d\d:\d\d</td>", staff_page)  # date and time
    picture_link = f"/staff/uploads/{upload_id}/picture"
    assert picture_link in staff_page
    assert queued_client.get(picture_link).content == picture_response.content
    with TestClient(queued_client.app) as stranger:
        assert stranger.get(picture_link).status_code == 401
    files = (tmp_path / "delivered").rglob("*.dcm")
    delivered = {path.name.split("-")[0]: pydicom.dcmread(path) for path in files}
    assert set(delivered) == {"source", "sr", "sc"}  # the photo travels with its results
    assert {str(ds.PatientID) for ds in delivered.values()} == {PATIENT_ID}
    assert delivered["source"].PatientName == PATIENT_NAME


def test_a_photo_of_something_else_gets_plain_advice(web_config, queued_client):
    from training.nonchest import text_page

    page = io.BytesIO()
    Image.fromarray(np.round(text_page(np.random.default_rng(3)) * 255).astype(np.uint8)).save(page, "PNG")
    link = new_session(queued_client)
    upload_id = queued_client.post(f"{link}/files", content=page.getvalue()).json()["id"]
    wait_until(lambda: queued_client.get(f"{link}/files/{upload_id}").json()["status"] != "pending")
    status = queued_client.get(f"{link}/files/{upload_id}").json()
    assert status["status"] == "failed" and status["error"] == PHONE["not_a_chest"]
    chinese = queued_client.get(f"{link}/files/{upload_id}", headers={"Accept-Language": "zh-CN"}).json()
    assert chinese["error"] == translations("zh-CN").gettext(PHONE["not_a_chest"]) != PHONE["not_a_chest"]
    assert "胸部 X 光片" in chinese["error"]
    wait_until(lambda: JobStore(web_config).get(f"upload-{upload_id}").status != "running")
    assert NOT_A_CHEST in JobStore(web_config).get(f"upload-{upload_id}").error  # the staff see why
    assert NOT_A_CHEST in queued_client.get("/staff").text


def test_dicom_of_another_patient_fails_its_job(web_config, tmp_path):
    """The upload plugin checks the patient again when the job runs (the file may predate a check)."""
    from ctai.builtin import upload as plugin

    store = Store(web_config)
    session, _ = store.create_session(PATIENT_ID, PATIENT_NAME, "", 60, 3, 10**6)
    staged = save(dataset(picture(), PatientID="SOMEONE-ELSE"), store.staging_path(session.id))
    upload = store.add_upload(session, "dicom", staged, staged.stat().st_size)
    [outcome] = plugin.ctai_load_job(Job("j", "upload", {"upload": upload.id}), web_config)
    assert outcome.reason == PHONE["wrong_patient"]
    plugin.ctai_job_finished(Job("j", "upload", {"upload": upload.id}), [], [outcome], web_config)
    assert store.upload(upload.id).status == "failed" and store.upload(upload.id).error == PHONE["wrong_patient"]


def test_in_shadow_mode_the_phone_is_told_and_the_staff_see_the_result(client, web_config, jobs):
    from ctai.site import state

    state.set_mode(web_config, "shadow", "test")
    csrf = login(client)
    link = new_session(client, csrf)
    client.post(f"{link}/files", content=radiograph_bytes())
    upload = jobs[0].options["upload"]
    Store(web_config).finish_upload(upload, "bacterial", FAKE_PROBABILITIES, withheld=True)  # as the upload plugin does
    seen = client.get(f"{link}/files/{upload}").json()
    assert seen["status"] == "withheld" and seen["label"] is None and seen["probabilities"] is None
    assert seen["error"] == PHONE["shadow"] and not seen["picture"]
    assert client.get(f"{link}/files/{upload}/picture").status_code == 404
    staff = client.get("/staff").text
    assert "Shadow mode: results are recorded" in staff and "Bacterial pneumonia" in staff
    assert "Drift: too few studies to judge yet." in staff


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's SystemExit(3)
def test_a_port_in_use_is_one_error_line(config, caplog, monkeypatch):
    """``ctai web`` and ``ctai serve``: uvicorn cannot bind; its error says why, and serve adds one
    line and exit status 2, not a traceback."""
    import signal
    import socket

    from ctai.serve import run_services
    from ctai.web.app import WebService

    monkeypatch.setattr(signal, "signal", lambda *args: None)  # pytest keeps its own handlers
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config["web"].update(host="127.0.0.1", port=taken.getsockname()[1])
        assert run_services([WebService(config)]) == 2
    [error] = [r for r in caplog.records if r.name == "ctai.serve" and r.levelname == "ERROR"]
    assert error.getMessage() == (f"serve: could not start web: cannot serve on {config['web']['host']}:"
                                  f"{config['web']['port']} (uvicorn's error above says why)")
    assert error.exc_info is None
