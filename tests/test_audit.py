"""The audit trail: one well-formed record per audited action, no token in it, nothing lost."""

from __future__ import annotations

import json
import socket
import threading
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

from fastapi.testclient import TestClient

from ctai import audit
from ctai.cli import main
from ctai.config import to_toml
from ctai.errors import Undeliverable
from ctai.outbox import Outbox, send_due
from ctai.web.app import create_app
from tests.test_web import PATIENT_ID, STAFF_TOKEN, login, new_session, radiograph_bytes

FIELDS = {"time", "actor", "action", "outcome"}


def records(config) -> list[dict]:
    return list(audit.read(config))


def trail_text(config) -> str:
    return "".join(path.read_text() for path in sorted(audit.folder(config).glob("*.jsonl")))


def test_records_survive_rotation_and_threads(config):
    config["audit"]["rotate_mb"] = 0.001  # about 1 kB: many files
    threads = [threading.Thread(target=lambda n=n: [audit.record(config, audit.Event(
        "test.event", audit.SERVICE, {"n": n, "i": i})) for i in range(25)]) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = records(config)
    assert sorted((r["object"]["n"], r["object"]["i"]) for r in found) == [(n, i) for n in range(4) for i in range(25)]
    assert len(list(audit.folder(config).glob("audit-*.jsonl"))) > 1
    assert all(FIELDS <= set(r) for r in found)


def test_syslog_gets_an_rfc_5424_message(config):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(5)
        config["audit"]["syslog"] = f"127.0.0.1:{collector.getsockname()[1]}"
        audit.record(config, audit.Event("staff.login", audit.Actor("staff", "", "10.1.2.3"), {}, audit.FAILURE))
        message = collector.recv(65536).decode()
    header, _, body = message.partition(" - ")
    assert header.startswith("<84>1 ") and header.split()[4:6][1] == "staff.login"  # security/warning
    assert json.loads(body)["outcome"] == "failure"


def test_web_actions_are_audited_once_without_tokens(config):
    config["web"].update(staff_token=STAFF_TOKEN, max_files=3, max_bytes=400_000)
    with TestClient(create_app(config, submit=lambda job: None)) as client:
        csrf = login(client)
        staff_cookie = client.cookies.get("ctai_staff")
        link = new_session(client, csrf)
        assert client.post(f"{link}/files", content=radiograph_bytes()).status_code == 201
        session_id = records(config)[-2]["object"]["session"]
        client.post(f"/staff/sessions/{session_id}/end", data={"csrf": csrf})
        client.post("/staff/logout", data={"csrf": csrf})
    found = records(config)
    assert [r["action"] for r in found] == ["staff.login", "upload_session.create", "upload.store",
                                            "upload_session.end", "staff.logout"]
    assert found[1]["object"]["patient"] == found[2]["object"]["patient"] == PATIENT_ID
    assert found[0]["actor"]["kind"] == "staff" and found[0]["actor"]["address"]
    assert found[2]["actor"]["kind"] == "phone"
    text = trail_text(config)
    assert STAFF_TOKEN not in text and link.split("/")[-1] not in text
    assert staff_cookie and staff_cookie not in text


def test_a_wrong_staff_token_is_audited_as_a_failure(config):
    config["web"]["staff_token"] = STAFF_TOKEN
    with TestClient(create_app(config, submit=lambda job: None)) as client:
        page = client.get("/staff").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        client.post("/staff/login", data={"token": "not-the-token-at-all", "csrf": csrf})
    (found,) = records(config)
    assert (found["action"], found["outcome"], found["actor"]["id"]) == ("staff.login", "failure", "")
    assert "not-the-token-at-all" not in trail_text(config)


def test_deliveries_dead_letters_and_outbox_commands_are_audited(config, tmp_path):
    outbox = Outbox.from_config(config)
    outbox.put("hl7", "/P1", {"host": "his", "port": 1}, b"ok", "a")
    outbox.put("hl7", "/P2", {"host": "his", "port": 1}, b"bad", "b")

    def peer(destination, payload):
        if payload == b"bad":
            raise Undeliverable("the receiver answered AE")

    send_due(outbox, "hl7", peer, now=1e12)
    path = tmp_path / "ctai.toml"
    path.write_text(to_toml(config))
    dead = outbox.messages("dead")[0].id
    with redirect_stdout(StringIO()):
        main(["--config", str(path), "outbox", "retry", str(dead)])
        main(["--config", str(path), "outbox", "drop", str(dead)])
        main(["--config", str(path), "outbox", "drop", "999"])
        assert main(["--config", str(path), "outbox", "retry", "999"]) == 2  # no such dead letter
    found = records(config)
    assert [(r["action"], r["outcome"]) for r in found] == [
        ("outbox.delivered", "success"), ("outbox.dead", "failure"), ("outbox.retry", "success"),
        ("outbox.drop", "success"), ("outbox.drop", "failure"), ("outbox.retry", "failure")]
    assert found[1]["detail"] == "refused: the receiver answered AE"
    assert found[2]["actor"]["kind"] == "cli" and found[2]["object"] == {"message": dead, "count": 1}
    out = StringIO()
    with redirect_stdout(out):
        assert main(["--config", str(path), "audit", "--action", "outbox.drop", "--since", "1h"]) == 0
    assert len(out.getvalue().splitlines()) == 2
    error = StringIO()
    with redirect_stderr(error):  # a mistyped action would list nothing, as if nothing had happened
        assert main(["--config", str(path), "audit", "--action", "outbox.dorp"]) == 2
    assert error.getvalue() == ("ctai audit: no action starts with 'outbox.dorp'; the trail has outbox.dead, "
                                "outbox.delivered, outbox.drop, outbox.retry\n")


def test_switching_the_site_mode_is_audited_with_who(config, tmp_path):
    path = tmp_path / "ctai.toml"
    path.write_text(to_toml(config))
    with redirect_stdout(StringIO()):
        assert main(["--config", str(path), "site", "--by", "dr-lee", "shadow"]) == 0
        assert main(["--config", str(path), "site", "--by", "dr-lee", "calibrate", "--reset"]) == 0
    found = records(config)
    assert [(r["action"], r["actor"]["id"]) for r in found] == [("site.mode", "dr-lee"), ("site.calibration", "dr-lee")]
    assert found[0]["object"] == {"mode": "shadow"}
