"""The persistent outbox: order per key, backoff, exactly-once marking, restarts, one sender."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
import tracemalloc
from collections.abc import Mapping
from typing import Any

import pytest

from ctai.cli import build_parser
from ctai.errors import TransientError, Undeliverable
from ctai.outbox import ORPHAN_AGE, Outbox, OutboxSender, send_due
from ctai.outputs.common import to_bytes
from ctai.transports import dicom_scu, mllp
from ctai.types import BatchSender
from tests.peers import fast_outbox, free_port, result, wait_until

T = time.time() + 86_400  # a clock far enough ahead that every message queued by the tests is due
HIS = {"host": "his", "port": 1}
PACS = {"host": "pacs", "port": 2}


class Peer:
    """A fake peer that records what it received and can be down or refuse."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.down: set[str] = set()
        self.refused: set[bytes] = set()
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, destination: Mapping[str, Any], payload: bytes) -> None:
        with self.lock:
            self.calls += 1
            if destination["host"] in self.down:
                raise TransientError("connection refused")
            if payload in self.refused:
                raise Undeliverable("SOP class not supported")
            self.received.append(payload)


@pytest.fixture
def outbox(tmp_path) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite3", initial_backoff=10, max_backoff=40)


def test_delivers_in_order_and_marks_each_message_once(outbox):
    peer = Peer()
    for n in range(3):
        outbox.put("hl7", "patient-1", HIS, b"m%d" % n, dedup=f"m{n}")
    outbox.put("hl7", "patient-2", HIS, b"other", dedup="other")
    assert send_due(outbox, "hl7", peer, now=T) == 4
    assert peer.received == [b"m0", b"other", b"m1", b"m2"]
    assert send_due(outbox, "hl7", peer, now=T) == 0
    assert [m.state for m in outbox.messages()] == ["delivered"] * 4
    assert outbox.payloads(outbox.messages()) == [b""] * 4  # payload dropped


def test_same_content_is_queued_once(outbox):
    assert outbox.put("cstore", "pacs", PACS, b"sr", dedup="1.2.3")
    assert not outbox.put("cstore", "pacs", PACS, b"sr again", dedup="1.2.3")
    assert len(outbox.messages()) == 1


def test_a_failing_key_waits_with_backoff_and_keeps_its_order(outbox):
    peer = Peer()
    peer.down.add("his")
    outbox.put("hl7", "patient-1", HIS, b"first", dedup="1")
    outbox.put("hl7", "patient-1", HIS, b"second", dedup="2")
    outbox.put("cstore", "pacs", PACS, b"sr", dedup="3")

    assert send_due(outbox, "hl7", peer, now=T + 1000) == 0
    assert send_due(outbox, "cstore", peer, now=T + 1000) == 1  # another channel is not held up
    assert outbox.due("hl7", now=T + 1009) == []  # first retry after initial_backoff
    assert send_due(outbox, "hl7", peer, now=T + 1010) == 0
    assert outbox.due("hl7", now=T + 1029) == []  # then twice as long
    pending = outbox.messages("pending")
    assert [m.attempts for m in pending] == [2, 0] and "connection refused" in pending[0].last_error

    peer.down.clear()
    send_due(outbox, "hl7", peer, now=T + 1030)
    send_due(outbox, "hl7", peer, now=T + 1030)
    assert peer.received == [b"sr", b"first", b"second"]


def test_backoff_is_capped(outbox):
    peer = Peer()
    peer.down.add("his")
    outbox.put("hl7", "p", HIS, b"m", dedup="m")
    now = T
    for _ in range(6):
        send_due(outbox, "hl7", peer, now=now)
        now += 40
    assert peer.calls == 6


def test_a_down_destination_costs_one_attempt_per_pass(outbox):
    peer = Peer()
    peer.down.add("his")
    for n in range(5):
        outbox.put("hl7", f"patient-{n}", HIS, b"m%d" % n, dedup=str(n))
    send_due(outbox, "hl7", peer, now=T)
    assert peer.calls == 1


def test_a_backlog_is_not_read_into_memory_to_find_what_is_due(outbox):
    """After an outage a PACS may have thousands of studies waiting, an SC of megabytes each: a
    pass reads the payloads it sends, not those of every waiting key."""
    peer = Peer()
    peer.down.add("pacs")
    for n in range(40):
        outbox.put("cstore", f"study-{n}", PACS, bytes([n]) * 1_000_000, dedup=str(n))
    tracemalloc.start()
    try:
        send_due(outbox, "cstore", peer, now=T)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peer.calls == 1 and peak < 5_000_000
    peer.down.clear()
    assert send_due(outbox, "cstore", peer, now=T + 1000) == 40
    assert peer.received == [bytes([n]) * 1_000_000 for n in range(40)]


def test_a_refused_message_is_a_dead_letter_at_once_and_its_key_goes_on(outbox, caplog):
    peer = Peer()
    peer.refused.add(b"bad")
    outbox.put("cstore", "study-1", PACS, b"bad", dedup="1")
    outbox.put("cstore", "study-1", PACS, b"good", dedup="2")
    send_due(outbox, "cstore", peer, now=T)
    send_due(outbox, "cstore", peer, now=T)
    assert peer.received == [b"good"]
    [dead] = outbox.messages("dead")
    assert outbox.payloads([dead]) == [b"bad"] and dead.attempts == 1
    assert "refused: SOP class not supported" in dead.last_error
    assert [r.levelname for r in caplog.records if "dead letter" in r.message] == ["ERROR"]  # once


def test_a_transient_failure_is_a_dead_letter_after_max_attempts(tmp_path, caplog):
    outbox = Outbox(tmp_path / "outbox.sqlite3", initial_backoff=0.5, max_backoff=1, max_attempts=3)
    peer = Peer()
    peer.down.add("his")
    outbox.put("hl7", "p", HIS, b"m", dedup="m")
    for n in range(5):
        send_due(outbox, "hl7", peer, now=T + 10 * n)
    assert peer.calls == 3
    [dead] = outbox.messages("dead")
    assert dead.attempts == 3 and dead.last_error == "TransientError: connection refused (attempt 3 of 3)"
    retries = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert retries[0].endswith("(TransientError: connection refused); retry in 0.5 s")


def test_one_dead_or_waiting_key_holds_up_no_other(outbox):
    peer = Peer()
    peer.refused.add(b"study-1 sr")
    outbox.put("cstore", "study-1", PACS, b"study-1 sr", dedup="1")
    outbox.put("cstore", "study-1", PACS, b"study-1 sc", dedup="2")
    outbox.put("cstore", "study-2", PACS, b"study-2 sr", dedup="3")
    assert send_due(outbox, "cstore", peer, now=T) == 2
    assert peer.received == [b"study-2 sr", b"study-1 sc"]


def test_a_revived_dead_letter_is_sent_again_and_a_dropped_one_never(outbox):
    peer = Peer()
    peer.refused.update({b"a", b"b", b"c"})
    for name in "abc":
        outbox.put("cstore", name, PACS, name.encode(), dedup=name)
    send_due(outbox, "cstore", peer, now=T)
    a, b, c = outbox.messages("dead")
    peer.refused.clear()
    assert outbox.revive(a.id) == 1 and outbox.revive(a.id) == 0
    assert outbox.drop(b.id) and not outbox.drop(b.id)
    send_due(outbox, "cstore", peer, now=T)
    assert peer.received == [b"a"]
    assert [(m.state, m.attempts) for m in outbox.messages()] == [("delivered", 1), ("dropped", 1), ("dead", 1)]
    assert outbox.revive() == 1
    send_due(outbox, "cstore", peer, now=T)
    assert peer.received == [b"a", b"c"]
    assert not outbox.put("cstore", "b", PACS, b"b", dedup="b")  # a dropped message is not queued again


def test_an_outbox_of_an_older_version_keeps_its_rows(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    Outbox(path).put("hl7", "p", HIS, b"m", dedup="m")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE outbox SET state = 'failed'")  # what a refused message was before dead letters
    outbox = Outbox(path)
    [dead] = outbox.messages()
    assert (dead.state, outbox.payloads([dead])) == ("dead", [b"m"])


def test_an_outbox_with_payloads_in_its_rows_delivers_them(tmp_path):
    """Before payloads had files of their own, they were in the rows."""
    path = tmp_path / "outbox.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL,"
                   " key TEXT NOT NULL, destination TEXT NOT NULL, payload BLOB NOT NULL,"
                   " dedup TEXT NOT NULL UNIQUE, state TEXT NOT NULL DEFAULT 'pending', created REAL NOT NULL,"
                   " attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, done REAL, last_error TEXT)")
        db.execute("INSERT INTO outbox (channel, key, destination, payload, dedup, created, next_attempt)"
                   " VALUES ('hl7', 'p', '{\"host\": \"his\"}', X'6F6C64', 'old', 0, 0)")
    outbox = Outbox(path)
    outbox.put("hl7", "p", HIS, b"new", dedup="new")
    peer = Peer()
    assert send_due(outbox, "hl7", peer, now=T) == 2
    assert peer.received == [b"old", b"new"]
    assert outbox.payloads(outbox.messages()) == [b"", b""]


def payload_files(outbox: Outbox) -> list[bytes]:
    return sorted(f.read_bytes() for f in outbox.payloads_dir.iterdir())


def test_each_payload_has_a_file_until_it_is_delivered_or_dropped(outbox):
    peer = Peer()
    peer.refused.add(b"refused")
    for name in ("sent", "refused", "dropped"):
        assert outbox.put("cstore", name, PACS, name.encode(), dedup=name)
    assert not outbox.put("cstore", "sent", PACS, b"again", dedup="sent")  # queued before: no file
    assert payload_files(outbox) == [b"dropped", b"refused", b"sent"]
    assert stat.S_IMODE(outbox.payloads_dir.stat().st_mode) == 0o700  # patient data: ctai's user only
    assert {stat.S_IMODE(f.stat().st_mode) for f in outbox.payloads_dir.iterdir()} == {0o600}
    dropped = outbox.messages()[2]
    assert outbox.drop(dropped.id)
    send_due(outbox, "cstore", peer, now=T)
    assert peer.received == [b"sent"]
    assert payload_files(outbox) == [b"refused"]  # a dead letter keeps its payload, to be revived
    peer.refused.clear()
    outbox.revive()
    send_due(outbox, "cstore", peer, now=T)
    assert peer.received == [b"sent", b"refused"] and payload_files(outbox) == []


def test_a_message_whose_payload_file_is_gone_is_a_dead_letter_and_its_key_goes_on(outbox):
    peer = Peer()
    outbox.put("cstore", "study-1", PACS, b"lost", dedup="1")
    outbox.put("cstore", "study-1", PACS, b"kept", dedup="2")
    next(f for f in outbox.payloads_dir.iterdir() if f.read_bytes() == b"lost").unlink()
    assert send_due(outbox, "cstore", peer, now=T) == 1
    assert peer.received == [b"kept"]
    [dead] = outbox.messages("dead")
    assert dead.last_error.startswith("its payload file ")
    assert dead.last_error.endswith(f" is gone from {outbox.payloads_dir}")


def test_a_batch_goes_out_up_to_a_message_whose_payload_file_is_gone(outbox):
    batches: list[list[bytes]] = []

    def send_many(destination: Mapping[str, Any], payloads: list[bytes]) -> list[None]:
        batches.append(list(payloads))
        return [None] * len(payloads)

    for n in range(4):
        outbox.put("cstore", f"study-{n}", PACS, b"m%d" % n, dedup=str(n))
    next(f for f in outbox.payloads_dir.iterdir() if f.read_bytes() == b"m2").unlink()
    assert send_due(outbox, "cstore", BatchSender(send_many, 64), now=T) == 3
    assert batches == [[b"m0", b"m1"], [b"m3"]]
    assert [m.state for m in outbox.messages()] == ["delivered", "delivered", "dead", "delivered"]


def test_payload_files_that_no_message_names_are_removed_once_old(outbox):
    outbox.put("cstore", "study-1", PACS, b"queued", dedup="1")
    old, young = outbox.payloads_dir / "old.bin", outbox.payloads_dir / "young.bin"
    old.write_bytes(b"a crash's leftover")
    young.write_bytes(b"another process's, about to be queued")
    os.utime(old, (time.time() - ORPHAN_AGE - 1,) * 2)
    os.utime(next(f for f in outbox.payloads_dir.iterdir() if f.read_bytes() == b"queued"),
             (time.time() - ORPHAN_AGE - 1,) * 2)
    assert outbox.remove_orphans() == 1
    assert payload_files(outbox) == [b"another process's, about to be queued", b"queued"]


def test_pending_messages_survive_a_restart(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    Outbox(path).put("hl7", "p", HIS, b"m", dedup="m")
    peer = Peer()
    assert send_due(Outbox(path), "hl7", peer, now=T) == 1
    assert peer.received == [b"m"]


def test_sender_threads_deliver_and_only_one_process_sends(config):
    settings = fast_outbox(config)
    first, second = Peer(), Peer()
    senders = [OutboxSender(settings, {"hl7": first}), OutboxSender(settings, {"hl7": second})]
    for sender in senders:
        sender.start()
    try:
        outbox = Outbox.from_config(settings)
        for n in range(5):
            outbox.put("hl7", "p", HIS, b"m%d" % n, dedup=str(n))
        wait_until(lambda: len(outbox.messages("delivered")) == 5)
    finally:
        for sender in senders:
            sender.stop()
    assert sorted([first.received, second.received], key=len) == [[], [b"m%d" % n for n in range(5)]]


def test_a_message_put_in_the_process_is_sent_at_once_not_at_the_next_poll(config):
    config["outbox"]["poll_seconds"] = 3600
    peer = Peer()
    sender = OutboxSender(config, {"hl7": peer})
    sender.start()
    try:
        time.sleep(0.5)  # the sender's first round has found nothing; its next poll is in an hour
        Outbox.from_config(config).put("hl7", "p", HIS, b"m", dedup="m")
        wait_until(lambda: peer.received == [b"m"], timeout=10)
    finally:
        sender.stop()


def test_a_message_wakes_only_its_own_channels_sender(config, monkeypatch):
    config["outbox"]["poll_seconds"] = 3600
    passes: list[str] = []
    due = Outbox.due
    monkeypatch.setattr(Outbox, "due", lambda self, channel, now: passes.append(channel) or due(self, channel, now))
    peer = Peer()
    sender = OutboxSender(config, {"hl7": peer, "cstore": Peer()})
    sender.start()
    try:
        wait_until(lambda: sorted(passes) == ["cstore", "hl7"], timeout=10)  # the first rounds
        outbox = Outbox.from_config(config)
        for n in range(3):
            outbox.put("hl7", "p", HIS, b"m%d" % n, dedup=str(n))
        wait_until(lambda: len(peer.received) == 3, timeout=10)
    finally:
        sender.stop()  # wakes every channel's sender at once, not at its next poll
    assert passes.count("cstore") == 1


def test_ctai_outbox_retry_all_and_its_exit_status(config, capsys):
    def ctai_outbox(*args: str) -> int:
        parsed = build_parser().parse_args(["outbox", *args])
        return parsed.func(parsed, config)

    outbox = Outbox.from_config(config)
    assert ctai_outbox() == 0 and capsys.readouterr().out == ""
    peer = Peer()
    peer.refused.update({b"a", b"b"})
    for name in "ab":
        outbox.put("cstore", name, PACS, name.encode(), dedup=name)
    send_due(outbox, "cstore", peer, now=T)
    assert ctai_outbox() == 1
    assert capsys.readouterr().out.splitlines() == [
        "#1 cstore dead a attempts=1 refused: SOP class not supported",
        "#2 cstore dead b attempts=1 refused: SOP class not supported"]
    assert ctai_outbox("retry", "--all") == 1
    assert capsys.readouterr().out.splitlines() == [
        "2 dead letter(s) pending again", "#1 cstore pending a attempts=0 refused: SOP class not supported",
        "#2 cstore pending b attempts=0 refused: SOP class not supported"]
    peer.refused.clear()
    send_due(outbox, "cstore", peer, now=T)
    assert ctai_outbox() == 0


def test_retention_removes_only_finished_messages(tmp_path):
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    for i in range(3):
        outbox.put("hl7", "P1", {}, b"x", dedup=f"m{i}")
    delivered, dropped, pending = outbox.messages()
    outbox.mark_delivered(delivered)
    outbox.drop(dropped.id)
    assert outbox.purge(days=1) == 0  # finished just now
    assert outbox.purge(days=1, now=time.time() + 2 * 86400) == 2
    assert [m.id for m in outbox.messages()] == [pending.id]


def test_the_log_names_a_refused_connection_and_its_backoff(tmp_path, caplog):
    """Real senders to ports nothing listens on: the log says what happened, not 'aborted'."""
    outbox = Outbox(tmp_path / "outbox.sqlite3", initial_backoff=0.5, max_backoff=60)
    his, pacs = free_port(), free_port()
    outbox.put("hl7", "patient", {"host": "127.0.0.1", "port": his, "ack_timeout": 5}, b"MSH|^~\\&|", "oru")
    outbox.put("cstore", "study", {"host": "127.0.0.1", "port": pacs, "ae_title": "PACS", "calling_ae_title": "CTAI",
                                   "timeout": 5}, to_bytes(result().source.dataset), "image")
    send_due(outbox, "hl7", mllp.deliver)
    send_due(outbox, "cstore", dicom_scu.deliver)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("ctai")]
    assert ours == [
        "outbox hl7 #1 (patient) not delivered (ConnectionRefusedError: [Errno 111] Connection refused);"
        " retry in 0.5 s",
        f"outbox cstore #2 (study) not delivered (TransientError: could not connect to PACS 127.0.0.1:{pacs}:"
        " Connection refused); retry in 0.5 s"]
    assert all("abort" not in r.getMessage().lower() for r in caplog.records)
