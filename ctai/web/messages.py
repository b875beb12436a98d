"""What the phone page says when something goes wrong: one table of plain sentences.

Technical reasons (library errors, the input gate's scores) never reach a page: they are
logged and recorded for the staff, and ``for_phone`` turns them into a sentence of this table.
"""

from __future__ import annotations

from ctai.model.gate import NOT_A_CHEST, PHONE_ADVICE

#: The classes' names as people read them.
LABELS = {"normal": "Normal", "bacterial": "Bacterial pneumonia", "viral": "Viral pneumonia"}

#: Shown with every AI result, and on the phone page before any.
NOTICE = "Decision support only: this is an AI estimate, not a diagnosis. A physician will review it."

PHONE = {
    "invalid": "This upload link is not valid.",
    "expired": "This upload link has expired. Ask the staff for a new QR code.",
    "results_gone": "The results of this upload link are no longer available.",
    "no_such_upload": "No such upload in this session.",
    "picture_not_ready": "The result picture is not ready.",
    "file_limit": "This upload link has reached its limit of {files}.",
    "too_large": "The file is too large: this upload link takes at most {mb} MB more.",
    "not_supported": "This file is not a JPEG, PNG, HEIC or DICOM image.",
    "too_many_pixels": "This picture is too large to process. Send a photo taken with the phone's camera.",
    "too_small": "This picture is too small. Photograph the whole film or screen so that it fills the frame.",
    "damaged": "This picture cannot be read: it may be damaged or incomplete. Take the photo again.",
    "dicom_unreadable": "This DICOM file cannot be read.",
    "dicom_no_image": "This DICOM file holds no image.",
    "dicom_too_large": "This DICOM image is too large to process.",
    "wrong_patient": "This DICOM file belongs to another patient than the one of this upload session.",
    "not_a_chest": PHONE_ADVICE,
    "not_kept": "The uploaded file is no longer kept. Ask the staff for a new QR code.",
    "failed": "The image could not be processed. Please ask the staff.",
    "disk_full": "The hospital's system cannot take pictures right now. Please ask the staff.",
    "queue_down": "The hospital's system cannot process pictures right now. Send the photo again in a minute.",
}

#: Technical reasons, recognised by a part of their text, and the sentence the phone shows instead.
TECHNICAL = [
    (NOT_A_CHEST, "not_a_chest"),
    ("decompression bomb", "too_many_pixels"),
    ("too large", "too_many_pixels"),
    ("too small", "too_small"),
    ("neither DICOM nor", "not_supported"),
    ("cannot decode", "damaged"),
]


def for_phone(reason: str) -> str:
    """The table's sentence for a failure ``reason``: itself if it is one, else the closest match."""
    if reason in PHONE.values():
        return reason
    return next((PHONE[key] for part, key in TECHNICAL if part in reason), PHONE["failed"])
