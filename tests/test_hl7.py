"""HL7 v2.5 ORU^R01 results: the message (parsed strictly by hl7apy), and delivery over MLLP to
hl7apy's MLLPServer through the outbox: AA, AE and CR (dead letters), AR and CE (retried), no
answer (retried up to max_attempts), and an HIS that is down and comes back."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

from ctai.builtin import hl7
from ctai.inputs.wrap import PatientInfo
from ctai.outbox import Outbox, OutboxSender, send_due
from ctai.outputs.common import dicom_datetime
from ctai.outputs.hl7 import build_oru, control_id
from ctai.transports import mllp
from ctai.types import Job, Result
from tests.conftest import CHILD_BIRTH_DATE
from tests.peers import HIS, PATIENT, fast_outbox, free_port, result, wait_until

NOW = datetime(2026, 11, 25, 17, 30, tzinfo=UTC)
RADIOGRAPHS = ["person1000_bacteria_2931.jpeg", "IM-0115-0001.jpeg", "person1000_virus_1681.jpeg"]


def parsed(result_: Result, settings: dict, control_id: str = "CTRL1") -> Message:
    """The ORU^R01 of a result, as a receiver parses it: strictly, against HL7 v2.5."""
    text = build_oru(result_, settings, control_id, NOW).to_er7()
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    return message


def observations(message: Message) -> list:
    order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    return [group.OBX for group in order.ORU_R01_OBSERVATION]


def test_oru_carries_patient_order_study_and_preliminary_results(config):
    source = (classified := result()).source.dataset
    source.StudyDate, source.StudyTime = "20261120", "101500"
    source.PlacerOrderNumberImagingServiceRequest = "PL-9"
    message = parsed(classified, config["hl7"])
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and message.msh.msh_12.to_er7() == "2.5"
    pid = message.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.PID
    assert pid.pid_3.to_er7() == "PAT-1^^^^MR"
    assert pid.pid_5.to_er7() == "Müller^Anna^Maria^MD^Dr."  # XPN puts the suffix before the prefix
    assert (pid.pid_7.to_er7(), pid.pid_8.to_er7()) == (CHILD_BIRTH_DATE, "F")
    order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    assert order.ORC.orc_1.to_er7() == "RE" and order.ORC.orc_3.to_er7() == "ACC-42"
    assert order.OBR.obr_3.to_er7() == order.OBR.obr_18.to_er7() == "ACC-42"
    assert order.ORC.orc_2.to_er7() == order.OBR.obr_2.to_er7() == "PL-9"
    assert order.OBR.obr_7.to_er7() == "20261120101500"
    assert order.OBR.obr_25.to_er7() == "P" and "pending review by a physician" in order.NTE.nte_3.to_er7()
    obx = observations(message)
    assert [o.obx_2.to_er7() for o in obx] == ["CWE", "NM", "NM", "NM", "ST", "ST"]
    assert {o.obx_11.to_er7() for o in obx} == {"P"}
    assert obx[0].obx_5.to_er7() == "53084003^Bacterial pneumonia^SCT"
    assert [float(o.obx_5.to_er7()) for o in obx[1:4]] == [10.0, 70.0, 20.0]
    assert obx[2].obx_3.to_er7() == "CTAI-P-BACTERIAL^Probability of bacterial pneumonia^99CTAI"
    assert obx[4].obx_3.to_er7() == "110180^Study Instance UID^DCM"
    assert obx[4].obx_5.to_er7() == source.StudyInstanceUID
    assert obx[5].obx_3.to_er7() == "CTAI-CALIBRATION^Calibration^99CTAI"


@pytest.mark.parametrize(("probabilities", "code"), [
    ((0.8, 0.1, 0.1), "17621005^Normal^SCT"),
    ((0.1, 0.8, 0.1), "53084003^Bacterial pneumonia^SCT"),
    ((0.1, 0.1, 0.8), "75570004^Viral pneumonia^SCT"),
])
def test_finding_is_the_predicted_class_in_snomed_ct(config, probabilities, code):
    assert observations(parsed(result(probabilities=probabilities), config["hl7"]))[0].obx_5.to_er7() == code


def test_delimiters_in_dicom_values_are_escaped(config):
    patient = PatientInfo(id="A|1", name="O&Neil^Ann~Marie", accession="X^1")
    message = parsed(result(patient=patient), config["hl7"])
    pid = message.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.PID
    assert pid.pid_3.to_er7() == r"A\F\1^^^^MR" and pid.pid_5.to_er7() == r"O\T\Neil^Ann\R\Marie"
    assert message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.OBR.obr_18.to_er7() == r"X\S\1"


def test_unknown_demographics_still_make_a_valid_message(config):
    message = parsed(result(patient=PatientInfo(id="P9")), config["hl7"])
    pid = message.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.PID
    assert pid.pid_5.to_er7() == "^^^^^^U" and pid.pid_7.to_er7() == "" and pid.pid_8.to_er7() == ""


@pytest.mark.parametrize(("date", "time", "expected"), [
    ("19610311", "083015.250", "19610311083015"), ("19610311", "0830", "196103110830"),
    ("19610230", "", ""), ("1961", "", ""), (None, None, ""), ("19610311", "2561", "19610311"),
])
def test_dicom_dates_become_hl7_timestamps_or_nothing(date, time, expected):
    assert dicom_datetime(date, time) == expected


def test_deliver_queues_one_message_per_result_keyed_by_patient(config):
    config["hl7"]["host"] = "127.0.0.1"
    classified = result()
    hl7.ctai_deliver(result=classified, job=Job("j", "test"), config=config)
    hl7.ctai_deliver(result=classified, job=Job("j", "test"), config=config)  # a job that ran again
    hl7.ctai_deliver(result=result(patient=PatientInfo()), job=Job("j", "test"), config=config)  # no Patient ID
    outbox = Outbox.from_config(config)
    [message] = outbox.messages()
    assert (message.channel, message.key) == ("hl7", "/PAT-1")
    [payload] = outbox.payloads([message])
    segments = payload.decode().split("\r")
    assert segments[0].startswith("MSH|") and segments[-1] == ""  # every segment ends with <CR>, the last too
    assert all(segments[:-1])
    assert mllp.control_id(payload.decode()) == control_id(
        f"hl7:{classified.source.dataset.SOPInstanceUID}:resnet18-test:0.0")


def test_nothing_is_queued_without_an_hl7_host(config):
    hl7.ctai_deliver(result=result(), job=Job("j", "test"), config=config)
    assert Outbox.from_config(config).messages() == []


@pytest.fixture
def his() -> Iterator[HIS]:
    receiver = HIS(free_port())
    yield receiver
    receiver.stop()


def queue_results(config, patients: list[PatientInfo]) -> Outbox:
    config["hl7"].update(host="127.0.0.1", ack_timeout=5.0)
    for image, patient in zip(RADIOGRAPHS, patients, strict=False):
        hl7.ctai_deliver(result=result(image, patient), job=Job("j", "test"), config=config)
    return Outbox.from_config(config)


def test_aa_delivers_a_strictly_valid_message(config, his):
    config["hl7"]["port"] = his.start().port
    outbox = queue_results(config, [PATIENT])
    assert send_due(outbox, "hl7", mllp.deliver) == 1
    assert len(his.accepted) == 1 and outbox.messages("pending") == []


@pytest.mark.parametrize("code", ["AE", "CR"])
def test_ae_or_cr_is_a_dead_letter_others_go_on_and_retry_delivers_it_once(config, his, code):
    his.codes = [code]
    config["hl7"]["port"] = his.start().port
    other = PatientInfo(id="PAT-2", name="Doe^John")
    outbox = queue_results(config, [PATIENT, other, PATIENT])
    assert send_due(outbox, "hl7", mllp.deliver) == 2  # the patient's next message too: it does not wait
    [dead] = outbox.messages("dead")
    assert dead.key == "/PAT-1" and dead.last_error == f"refused: the receiver answered {code}"
    assert outbox.revive(dead.id) == 1
    assert send_due(outbox, "hl7", mllp.deliver) == 1
    assert send_due(outbox, "hl7", mllp.deliver, now=9e9) == 0
    assert (his.received, len(his.accepted)) == (4, 3)


@pytest.mark.parametrize("code", ["AR", "CE"])
def test_ar_or_ce_is_sent_again_later_and_every_message_arrives_once_in_order(config, his, code):
    """HL7 v2.5 2.9.2.2: AR is "unrelated to [the message's] content or format"; the receiver is
    likely to accept the same message later. The HIS answers it to the first three results."""
    his.codes = [code] * 3
    config["hl7"]["port"] = his.start().port
    other = PatientInfo(id="PAT-2", name="Doe^John")
    outbox = queue_results(fast_outbox(config), [PATIENT, other, PATIENT])
    queued = [mllp.control_id(p.decode()) for p in outbox.payloads(outbox.messages())]
    sender = OutboxSender(config, {"hl7": mllp.deliver})
    sender.start()
    try:
        wait_until(lambda: len(outbox.messages("delivered")) == 3)
    finally:
        sender.stop()
    assert outbox.messages("dead") == [] and his.received == 6
    delivered = [mllp.control_id(m) for m in his.accepted]
    assert sorted(delivered) == sorted(queued)  # each once
    assert delivered.index(queued[0]) < delivered.index(queued[2])  # the patient's order kept


def test_ar_until_max_attempts_is_a_dead_letter(config, his):
    config["outbox"]["max_attempts"] = 2
    his.codes = ["AR"] * 2
    config["hl7"]["port"] = his.start().port
    outbox = queue_results(config, [PATIENT])
    assert [send_due(outbox, "hl7", mllp.deliver, now=9e9 + 1000 * n) for n in range(3)] == [0, 0, 0]
    [dead] = outbox.messages("dead")
    assert dead.attempts == 2 and dead.last_error.startswith("Rejected: the receiver answered AR")


def test_no_answer_is_retried_until_max_attempts(config):
    config["outbox"]["max_attempts"] = 2
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config["hl7"]["port"] = silent.getsockname()[1]
        outbox = queue_results(config, [PATIENT])

        def impatient(destination, payload: bytes) -> None:
            mllp.deliver({**destination, "ack_timeout": 0.2}, payload)

        sent = [send_due(outbox, "hl7", impatient, now=9e9 + 100 * n) for n in range(3)]
    [dead] = outbox.messages("dead")
    assert sent == [0, 0, 0] and dead.attempts == 2 and dead.last_error.startswith("TimeoutError")


def test_no_answer_in_time_means_retry(config):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config["hl7"]["port"] = silent.getsockname()[1]
        outbox = queue_results(config, [PATIENT])
        due = outbox.due("hl7", now=9e9)[:1]
        with pytest.raises(TimeoutError):
            mllp.deliver({**due[0].destination, "ack_timeout": 0.3}, outbox.payloads(due)[0])


def test_his_down_then_back_gets_every_message_once_in_order(config, his):
    config["hl7"]["port"] = his.port  # nothing listens yet
    other = PatientInfo(id="PAT-2", name="Doe^John")
    outbox = queue_results(fast_outbox(config), [PATIENT, other, PATIENT])
    first, second, third = (mllp.control_id(p.decode()) for p in outbox.payloads(outbox.messages()))
    sender = OutboxSender(config, {"hl7": mllp.deliver})
    sender.start()
    try:
        wait_until(lambda: all(m.attempts >= 1 for m in outbox.messages("pending")[:1]))
        his.start()
        wait_until(lambda: len(outbox.messages("delivered")) == 3)
    finally:
        sender.stop()
    assert his.received == 3
    ids = [mllp.control_id(m) for m in his.accepted]
    assert sorted(ids) == sorted([first, second, third]) and ids.index(first) < ids.index(third)
