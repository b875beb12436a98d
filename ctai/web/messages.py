"""What the pages say about results and failures: one table of plain sentences.

Technical reasons (library errors, the input gate's scores) never reach a page: they are
logged and recorded for the staff, and ``for_phone`` turns them into a sentence of this table.
The sentences are English message ids, translated where they are shown (``ctai.web.i18n``);
an upload's stored error is one of them, so each reader sees it in their own language.
"""

from __future__ import annotations

from ctai.inputs.intended_use import OUTSIDE
from ctai.model.gate import NOT_A_CHEST
from ctai.model.typicality import ATYPICAL


def N_(message: str) -> str:
    """Marks ``message`` for the catalog; it is translated where it is shown. Here, not in
    ``ctai.web.i18n``: the plugins read these sentences in every command, the pages' languages
    (Babel, Jinja2, Starlette) only the web app needs."""
    return message


#: The classes' names as people read them.
LABELS = {"normal": N_("Normal"), "bacterial": N_("Bacterial pneumonia"), "viral": N_("Viral pneumonia")}

#: A job's or an upload's status as the staff page shows it.
STATUS = {"pending": N_("Waiting"), "running": N_("Analysing"), "done": N_("Done"),
          "failed": N_("Failed"), "skipped": N_("Skipped"),
          "withheld": N_("Done, not shown to the phone (shadow mode)")}

#: Shown with every AI result, and on the phone page before any.
NOTICE = N_("Decision support only: this is an AI estimate, not a diagnosis. A physician will review it.")

PHONE = {
    "invalid": N_("This upload link is not valid."),
    "expired": N_("This upload link has expired. Ask the staff for a new QR code."),
    "ended": N_("The staff have ended this upload link: it takes no more files."),
    "results_gone": N_("The results of this upload link are no longer available."),
    "no_such_upload": N_("No such upload in this session."),
    "picture_not_ready": N_("The result picture is not ready."),
    "file_limit": N_("This upload link takes no more files (limit: {files})."),
    "too_large": N_("The file is too large: this upload link takes at most {mb} MB more."),
    "not_supported": N_("This file is not a JPEG, PNG, HEIC or DICOM image."),
    "too_many_pixels": N_("This picture is too large to process. Send a photo taken with the phone's camera."),
    "too_small": N_("This picture is too small. Photograph the whole film or screen so that it fills the frame."),
    "damaged": N_("This picture cannot be read: it may be damaged or incomplete. Take the photo again."),
    "dicom_unreadable": N_("This DICOM file cannot be read."),
    "dicom_no_image": N_("This DICOM file holds no image."),
    "dicom_too_large": N_("This DICOM image is too large to process."),
    "wrong_patient": N_("This DICOM file belongs to another patient than the one of this upload session."),
    "not_a_chest": N_("This does not look like a chest X-ray. Photograph the whole chest film or screen, "
                      "straight on and filling the frame, or send the original image."),
    "intended_use": N_("This AI is made for chest X-rays of young children (aged 1 to 5), taken from the front: "
                        "it gives no result for this image. A physician will review it."),
    "atypical": N_("This image is unlike the X-rays this AI learnt from: it gives no result for it. "
                   "A physician will review it."),
    "not_kept": N_("The uploaded file is no longer kept. Ask the staff for a new QR code."),
    "failed": N_("The image could not be processed. Please ask the staff."),
    "shadow": N_("ctai is being validated at this hospital: no result yet. The staff will tell you the outcome."),
    "disk_full": N_("The hospital's system cannot take pictures right now. Please ask the staff."),
    "queue_down": N_("The hospital's system cannot process pictures right now. Send the photo again in a minute."),
}

#: Technical reasons, recognised by a part of their text, and the sentence the phone shows instead.
TECHNICAL = [
    (NOT_A_CHEST, "not_a_chest"),
    (OUTSIDE, "intended_use"),
    (ATYPICAL, "atypical"),
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
