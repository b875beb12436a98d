"""What the peers' answers mean, in one place: DIMSE statuses and association results, and HTTP
status codes, each as "stored", "try again later" or "refused for good"."""

from __future__ import annotations

#: C-STORE failures that may pass by themselves (PS3.4 B.2.3, PS3.7 C.4.2.1.4 and Annex C):
#: 0xA7xx Refused: Out of Resources, 0x0213 Resource Limitation, 0x0110 Processing Failure (no
#: reason given), 0x0210 Duplicate Invocation (a message ID in use), 0xFE00 Cancel. Every other
#: failure refuses the object for good: 0xA9xx Data Set Does Not Match SOP Class, 0xCxxx Cannot
#: Understand, 0x0122 SOP Class Not Supported, 0x0117 Invalid SOP Instance, 0x0124 Not Authorized...
#: STOW-RS Failure Reasons are the same statuses (PS3.18 Table 10.5.3-1).
TRANSIENT_FAILURES = ((0xA700, 0xA7FF), (0x0213, 0x0213), (0x0110, 0x0110), (0x0210, 0x0210),
                      (0xFE00, 0xFE00))
#: A-ASSOCIATE-RJ Result (PS3.8 9.3.4): 1 rejected-permanent, 2 rejected-transient.
REJECTED_PERMANENT = 0x01
#: 4xx answers that mean "not now" rather than "not this message" (RFC 9110 15.5.9, RFC 8470 5.2,
#: RFC 6585 4); every 5xx means the same.
TRANSIENT_HTTP = frozenset({408, 425, 429})


def dimse_stored(code: int) -> bool:
    """Success (0x0000) or Warning (0x0001, 0xBxxx; PS3.4 B.2.3): the object is stored."""
    return code == 0x0000 or code == 0x0001 or 0xB000 <= code <= 0xBFFF


def dimse_transient(code: int) -> bool:
    """A failure status that may pass by itself (``TRANSIENT_FAILURES``)."""
    return any(low <= code <= high for low, high in TRANSIENT_FAILURES)


def http_transient(code: int) -> bool:
    """An HTTP status that asks for the request later: 408, 425, 429 and every 5xx."""
    return code in TRANSIENT_HTTP or code >= 500
