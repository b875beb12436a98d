"""Test helper for the network tests: free local ports, waiting, dcmtk tools, a classified result
built without the model (a committed radiograph wrapped as DICOM, fixed probabilities), and peers
not written here: an HIS (hl7apy's MLLPServer) and a PACS (a pynetdicom Storage SCP)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPServer
from hl7apy.parser import parse_message
from PIL import Image
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt

from ctai import config as configuration
from ctai.inputs.images import to_gray
from ctai.inputs.wrap import PatientInfo, wrap_image
from ctai.outputs.hl7 import escape
from ctai.transports import dicom_scu, mllp
from ctai.types import CLASSES, ModelInfo, Prediction, Result, SourceImage
from tests.conftest import CHILD_BIRTH_DATE, IMAGES

MODEL = ModelInfo("resnet18-test", "0.0")
PATIENT = PatientInfo(id="PAT-1", name="Müller^Anna^Maria^Dr.^MD", birth_date=CHILD_BIRTH_DATE, sex="F",
                      accession="ACC-42")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> object:
    """Poll ``condition`` until it returns something true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {condition}")


def tool(name: str) -> str:
    """Path of a command-line tool, skipping the test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian packages dcmtk, dicom3tools)")
    return path


def fast_outbox(config: configuration.Config) -> configuration.Config:
    """``config`` with outbox retries in fractions of a second."""
    config["outbox"].update(initial_backoff=0.2, max_backoff=1.0, poll_seconds=0.1)
    return config


def result(image: str = "person1000_bacteria_2931.jpeg", patient: PatientInfo = PATIENT,
           probabilities: tuple[float, float, float] = (0.1, 0.7, 0.2)) -> Result:
    """A classified radiograph, as the pipeline hands it to the output and delivery hooks."""
    path = IMAGES / image
    with Image.open(path) as im:
        dataset = wrap_image(im, patient, path.name)
        pixels = to_gray(im)
    prediction = Prediction(dict(zip(CLASSES, probabilities, strict=True)), MODEL)
    return Result(SourceImage(str(path), dataset, pixels), prediction)


class HIS:
    """hl7apy's MLLPServer as the HIS: parses each ORU strictly and answers with the next code."""

    def __init__(self, port: int, codes: list[str] | None = None) -> None:
        self.port = port
        self.codes = list(codes or [])
        self.accepted: list[str] = []
        self.received = 0
        self.server: MLLPServer | None = None

    def answer(self, message: str) -> str:
        parsed_message = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        parsed_message.validate()
        code = self.codes.pop(0) if self.codes else "AA"
        self.received += 1
        if code == "AA":
            self.accepted.append(message)
        return ack(message, code)

    def start(self) -> HIS:
        his = self

        class OruHandler(AbstractHandler):
            def reply(self) -> str:
                return his.answer(self.incoming_message)

        class ErrorHandler(AbstractErrorHandler):
            def reply(self) -> str:
                return ack(self.incoming_message, "AR", str(self.exc))

        handlers = {"ORU^R01^ORU_R01": (OruHandler,), "ERR": (ErrorHandler,)}
        self.server = MLLPServer("127.0.0.1", self.port, handlers, timeout=5)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def ack(message: str, code: str, text: str = "") -> str:
    """An original-mode ACK (HL7 v2.5 ch. 2.9.2), framed for MLLP as MLLPServer expects."""
    reply = Message("ACK", version="2.5")
    reply.msh.msh_9 = "ACK^R01^ACK"
    reply.msh.msh_10 = "ACK" + mllp.control_id(message)[:17]
    reply.msh.msh_11 = "P"
    reply.msa.msa_1 = code
    reply.msa.msa_2 = mllp.control_id(message)
    if text:
        reply.msa.msa_3 = escape(text[:80])
    return reply.to_mllp()


class StoreSCP:
    """A pynetdicom Storage SCP on 127.0.0.1 that accepts only the given SOP classes and answers
    each C-STORE with ``statuses[SOP Instance UID]``, Success if not there (what it answers with
    Success or Warning is received); ``associations`` counts the associations it accepted."""

    def __init__(self, *sop_classes: str) -> None:
        self.received: list[Dataset] = []
        self.statuses: dict[str, int] = {}
        self.associations = 0
        ae = AE(ae_title="PACS")
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, ExplicitVRLittleEndian)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store),
                                                    (evt.EVT_ACCEPTED, self.on_accepted)])
        self.peer = dicom_scu.Peer("127.0.0.1", self.server.server_address[1], "PACS", timeout=10)

    def on_accepted(self, event) -> None:
        self.associations += 1

    def on_store(self, event) -> int:
        status = self.statuses.get(event.dataset.SOPInstanceUID, 0x0000)
        if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
            self.received.append(event.dataset)
        return status
