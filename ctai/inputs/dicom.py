"""DICOM files (PS3.10) and the grayscale display pipeline of PS3.4 N.2: Modality LUT, VOI LUT and
Presentation LUT turn stored values into what a viewer shows."""

from __future__ import annotations

import struct
import zlib
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.pixels.utils import _get_jpg_parameters
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from ctai.errors import InputError
from ctai.inputs import pool
from ctai.inputs.images import MIN_SIDE, check_not_too_large, check_size, skipped
from ctai.types import SourceImage

#: The most a deflated data set may inflate to: an image of MAX_PIXELS in 16 bits is 100 MB,
#: one in 8-bit colour 150 MB.
MAX_INFLATED = 256 * 2**20
#: PS3.10 7.1: a 128-byte preamble, then the prefix "DICM".
_PREFIX = slice(128, 132)
#: A data set written without preamble starts with a File Meta (0002) or Identifying (0008) group tag.
_FIRST_GROUPS = (0x0002, 0x0008)
#: Percentiles of the values windowed for a DX "for processing" image that carries no VOI.
PROCESSING_PERCENTILES = (0.5, 99.5)
_PIXEL_DATA = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: JPEG (ISO 10918), JPEG-LS (ISO 14495) and JPEG 2000 / HTJ2K (ISO 15444): their codestreams all
#: end with the marker 0xFFD9 (EOI, or EOC for JPEG 2000), and their decoders hold the GIL for long
#: (``ctai.inputs.pool``).
_JPEG_FAMILY = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes + JPEG2000TransferSyntaxes)
_END_MARKER = b"\xff\xd9"
#: What may follow the end marker in the last fragment: PS3.5 A.4 pads an odd-length stream to even
#: length (0x00), and encoders such as the NEMA WG04 set's pad with a 0xFF fill byte (ISO 10918 B.1.1.2).
_FILL = b"\x00\xff"
#: PS3.3 C.7.6.3.1.2: 4:2:2 interpretations store two Y samples and one Cb, Cr pair for every two
#: pixels, two samples' worth of bytes per pixel in native pixel data.
_STORED_SAMPLES = {"YBR_FULL_422": 2, "YBR_PARTIAL_422": 2}
#: Interpretations ctai shows as a grey image: what a radiograph is stored in, and colour
#: photographs (YBR ones are decoded to RGB) such as a phone's picture of a film.
_SHOWN = ("MONOCHROME1", "MONOCHROME2", "RGB")
_SYNTAX_OF_ENCODING = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pydicom lists each decoder plugin's error on its own)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _head(path: Path) -> bytes:
    """The first 132 bytes of a file, or InputError saying why it cannot be read."""
    if path.is_dir():
        raise InputError("this is a folder, not a file")
    if path.exists() and not path.is_file():  # reading would wait for a writer, or for ever
        raise InputError("not a regular file: a pipe, socket or device")
    try:
        with path.open("rb") as file:
            head = file.read(_PREFIX.stop)
    except FileNotFoundError as exc:
        raise InputError("file not found") from exc
    except PermissionError as exc:
        raise InputError("permission denied: cannot read the file") from exc
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or exc}") from exc
    if not head:
        raise InputError("empty file")
    return head


def is_dicom(path: Path) -> bool:
    """Whether a file holds DICOM, by content: the "DICM" prefix, or a data set without preamble."""
    return looks_dicom(_head(Path(path)))


def looks_dicom(head: bytes) -> bool:
    """Whether a file whose first 132 bytes are ``head`` holds DICOM (``is_dicom``)."""
    if head[_PREFIX] == b"DICM":
        return True
    return len(head) >= 8 and int.from_bytes(head[:2], "little") in _FIRST_GROUPS


def read_dataset(path: Path) -> Dataset:
    """Read a DICOM file, with or without preamble and File Meta Information (PS3.10 7.1)."""
    _head(Path(path))  # a file that cannot be read says why
    with open(path, "rb") as file:
        return parse_dataset(file)


def parse_dataset(file: BinaryIO) -> Dataset:
    """The data set of a DICOM file given open (a file, an Orthanc instance's bytes), checked as
    ``read_dataset`` checks a file: InputError, and no other exception, when it cannot be used."""
    if not looks_dicom(file.read(_PREFIX.stop)):
        raise InputError("not a DICOM file: no 'DICM' prefix and no data set at its start")
    if (start := _deflated_from(file)) is not None:
        file.seek(start)
        check_inflated_size(file)
    file.seek(0)
    try:
        ds = pydicom.dcmread(file, force=True)
    except Exception as exc:  # pydicom raises many exception types on damaged files
        raise InputError(f"damaged DICOM file: {one_line(exc)}") from exc
    if not ds:  # pydicom keeps nothing of a data set whose file ends inside an undefined length
        raise InputError("truncated or damaged DICOM file: no data element could be read")
    if _last_value_cut(ds):
        raise InputError("truncated DICOM file: it ends inside a data element")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _SYNTAX_OF_ENCODING[ds.original_encoding]
    return ds


def _deflated_from(file: BinaryIO) -> int | None:
    """Where the data set of a Deflated Explicit VR Little Endian file (PS3.5 A.5) starts, after
    its preamble and File Meta Information (PS3.10 7.1), or after the File Meta Information alone
    in a file written without preamble; None for any other file. The File Meta Information is read
    alone: ``pydicom.dcmread`` would inflate the data set after it, whole."""
    file.seek(0)
    file.seek(_PREFIX.stop if file.read(_PREFIX.stop)[_PREFIX] == b"DICM" else 0)
    try:
        meta = pydicom.filereader.read_dataset(file, is_implicit_VR=False, is_little_endian=True,
                                               stop_when=lambda tag, *_: tag.group != 2)
    except Exception:  # noqa: BLE001 - no meta to read: pydicom's reading of the file says why
        return None
    return file.tell() if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian else None


def check_inflated_size(deflated: BinaryIO) -> None:
    """InputError if the deflated data set read from ``deflated`` inflates to more than
    ``MAX_INFLATED`` bytes, inflated here a piece at a time: pydicom and pynetdicom inflate it
    whole, and a 1 MB file of zeros became 1 GB (2.8 GB at the reading's peak)."""
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        while piece := deflated.read(1 << 16):
            while piece:
                total += len(inflater.decompress(piece, 1 << 20))
                if total > MAX_INFLATED:
                    raise InputError(f"its deflated data set inflates to over {MAX_INFLATED >> 20} MB, "
                                     f"more than any image ctai reads")
                piece = inflater.unconsumed_tail
    except zlib.error as exc:
        raise InputError(f"damaged DICOM file: its deflated data set does not inflate ({exc})") from exc


def _last_value_cut(ds: Dataset) -> bool:
    """Whether the file ended inside the value of its last element (pydicom keeps what it got)."""
    last = ds.get_item(max(ds.keys()))
    return (
        isinstance(last, RawDataElement)
        and isinstance(last.value, bytes)
        and last.length != 0xFFFFFFFF
        and len(last.value) < last.length
    )


def display_pixels(ds: Dataset, frame: int = 0) -> np.ndarray:
    """One frame as a viewer shows it: 2-D float32 in [0, 1], 0 = black. An image that decodes but
    cannot be a radiograph is skipped (``skipped``), one that does not decode refused."""
    _check_image(ds)
    values, photometric = stored_values(ds, frame)
    _check_radiograph(ds, photometric)
    if photometric == "RGB":
        top = 2.0 ** int(ds.BitsStored) - 1.0
        return np.asarray(_luminance(values) / top, dtype=np.float32)
    # Integer stored values whose VOI does not depend on the data go through a table of 0..their
    # maximum: each value's arithmetic done once, in the same float64 steps, so the same result.
    # A 2500 x 2500 radiograph: 11 ms instead of 16, and no float64 copy of it (50 MB).
    tabled = values.dtype.kind in "ui" and _fixed_voi(ds) and 0 <= values.min() and values.max() < values.size
    levels = np.arange(int(values.max()) + 1, dtype=values.dtype) if tabled else values
    gray = _voi(apply_modality_lut(levels, ds), ds)
    if photometric == "MONOCHROME1":  # PS3.3 C.7.6.3.1.2: its lowest value shows as white
        np.subtract(1.0, gray, out=gray)
    gray = gray.astype(np.float32)
    return gray[values] if tabled else gray


def _check_image(ds: Dataset) -> None:
    """Pixel data present, and a size worth decoding (PS3.3 C.7.6.3 Image Pixel Module)."""
    if not any(keyword in ds for keyword in _PIXEL_DATA):
        name = _name(ds)
        if "Image" in name:
            raise InputError(f"truncated or damaged file: this {name} object has no pixel data")
        raise InputError(f"not an image: this {name} object has no pixel data")
    columns, rows = _integer(ds, "Columns"), _integer(ds, "Rows")
    # An empty or huge image is refused here; a small one is skipped once it decodes (_check_radiograph).
    check_size(columns and max(columns, MIN_SIDE), rows and max(rows, MIN_SIDE))


def _name(ds: Dataset) -> str:
    """The name of the object's SOP Class, "DICOM" when it has none."""
    sop_class = ds.get("SOPClassUID")
    return UID(sop_class).name if sop_class else "DICOM"


def is_enhanced(ds: Dataset) -> bool:
    """Whether the object has the Multi-frame Functional Groups Module (PS3.3 C.7.6.16) of the
    enhanced CT, MR, XA, ... IODs."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _check_radiograph(ds: Dataset, photometric: str) -> None:
    """Skip, saying why, a whole image that cannot be a radiograph: too small, or in a photometric
    interpretation no radiograph or photograph of one is stored in (PS3.3 C.7.6.3.1.2)."""
    columns, rows = _integer(ds, "Columns"), _integer(ds, "Rows")
    if min(columns, rows) < MIN_SIDE:
        raise skipped(f"image of {columns}x{rows} pixels is too small to classify")
    if photometric not in _SHOWN:
        raise skipped(f"photometric interpretation {photometric} is not supported: a radiograph is grey")


def _integer(ds: Dataset, keyword: str, default: int = 0) -> int:
    """An Image Pixel Module number (US or IS, PS3.5 6.2), ``default`` when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"damaged data set: {keyword} is {value!r}, not a number") from exc


def _check_pixel_data(ds: Dataset) -> None:
    """InputError unless the Pixel Data holds every frame whole: native data as long as the Image
    Pixel Module says (PS3.5 8.1.1), each compressed frame complete for its codec (PS3.5 A.4).
    Decoders may pad a cut stream with grey instead of failing, so this is checked first."""
    if "PixelData" not in ds:
        return
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not syntax.is_encapsulated:
        _check_native_length(ds)
        return
    expected = _integer(ds, "NumberOfFrames", 1)
    try:
        frames = _frames(ds, expected)
    except Exception as exc:  # pydicom's item parser raises several types on damaged encapsulation
        raise InputError(f"pixel data truncated or damaged: {one_line(exc)}") from exc
    if len(frames) < expected:
        raise InputError(f"pixel data truncated: {len(frames)} of {expected} frames")
    size = (_integer(ds, "Columns"), _integer(ds, "Rows"))
    for number, frame in enumerate(frames, 1):
        _check_frame(frame, syntax, number)
        _check_stream_size(frame, syntax, number, size)


def _frames(ds: Dataset, expected: int) -> list[bytes]:
    """Up to ``expected`` encapsulated frames, each of one or more fragments (PS3.5 A.4), found by the
    Extended Offset Table (PS3.3 C.7.6.3.1.8), else the Basic Offset Table, else by end markers."""
    offsets, lengths = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
    extended = (offsets, lengths) if offsets and lengths else None
    return list(islice(generate_frames(ds.PixelData, number_of_frames=expected, extended_offsets=extended), expected))


def _check_native_length(ds: Dataset) -> None:
    """Native pixel data holds Rows x Columns x Number of Frames pixels of Samples per Pixel values
    of Bits Allocated bits each (PS3.5 8.1.1; 1-bit data packed), two samples' worth for 4:2:2
    (PS3.3 C.7.6.3.1.2); a pad byte after an odd length (PS3.5 7.1.1) is not needed."""
    # A missing attribute counts 0 here; the decoder then names it.
    rows, columns, bits = (_integer(ds, keyword) for keyword in ("Rows", "Columns", "BitsAllocated"))
    frames = _integer(ds, "NumberOfFrames", 1)
    samples = _STORED_SAMPLES.get(str(ds.get("PhotometricInterpretation", "")), _integer(ds, "SamplesPerPixel", 1))
    needed, length = (rows * columns * samples * frames * bits + 7) // 8, len(ds.PixelData)
    if length < needed:
        raise InputError(
            f"pixel data truncated: {length} bytes of native pixel data, the image needs {needed}"
            f" ({rows} rows x {columns} columns x {samples} samples x {frames} frames x {bits} bits)"
        )


def _check_frame(frame: bytes, syntax: UID, number: int) -> None:
    """One compressed frame complete: its end marker (JPEG family), or its RLE segments within it."""
    if syntax in _JPEG_FAMILY and not _ends_with_marker(frame):
        raise InputError(
            f"pixel data truncated: the {syntax.name} stream of frame {number} ends before its"
            f" end marker (0xFFD9)"
        )
    if syntax == RLELossless:
        _check_rle_header(frame, number)


def _check_stream_size(frame: bytes, syntax: UID, number: int, size: tuple[int, int]) -> None:
    """A JPEG-family stream declares the size of the image the data set says (Columns x Rows):
    its decoder allocates what the stream declares, and a stream of a few hundred bytes may
    declare 20,000 x 20,000 pixels (2.4 GB to decode, before pydicom finds them too many)."""
    declared = _stream_size(frame, syntax)
    if declared is not None and declared != size:
        raise InputError(f"pixel data damaged: the {syntax.name} stream of frame {number} is "
                         f"{declared[0]}x{declared[1]} pixels, the data set says {size[0]}x{size[1]}")


def _stream_size(frame: bytes, syntax: UID) -> tuple[int, int] | None:
    """The width and height a JPEG-family stream declares: JPEG 2000's SIZ marker segment, second
    after SOC (ISO/IEC 15444-1 A.5.1), JPEG's and JPEG-LS's frame header (read by pydicom); None
    where the header cannot be read (the decoder then says why) or leaves the height to later."""
    if syntax in JPEG2000TransferSyntaxes:
        if frame[:4] != b"\xff\x4f\xff\x51" or len(frame) < 24:
            return None
        width, height, left, top = struct.unpack(">4I", frame[8:24])
        return width - left, height - top
    header = _get_jpg_parameters(frame)
    return (header["width"], header["height"]) if header.get("height") else None


def _ends_with_marker(frame: bytes) -> bool:
    """Whether a JPEG-family stream ends with 0xFFD9, padding or fill bytes after it allowed."""
    return frame.rstrip(_FILL).endswith(_END_MARKER)


def _check_rle_header(frame: bytes, number: int) -> None:
    """PS3.5 G.3.1: a 64-byte header of 16 little-endian 32-bit words, the number of segments
    (1 to 15), then each segment's offset, the first 64, increasing, all inside the frame."""
    if len(frame) < 64:
        raise InputError(f"pixel data truncated: RLE frame {number} is shorter than its 64-byte header")
    words = np.frombuffer(frame[:64], dtype="<u4")
    count, offsets = int(words[0]), [int(v) for v in words[1 : int(words[0]) + 1]]
    if not 1 <= count <= 15 or offsets[0] != 64 or offsets != sorted(set(offsets)) or offsets[-1] >= len(frame):
        raise InputError(f"pixel data truncated or damaged: RLE frame {number} has a bad segment table")


def check_decodable(ds: Dataset, keep: bool = False) -> None:
    """InputError unless a received data set is whole and its pixel data decodes (its first frame,
    every frame complete): what a Storage SCP checks before it answers Success (PS3.4 B.2.3).
    With ``keep``, a compressed frame's values are kept for the job that loads it next
    (``pool.decode``), which then does not decode it again."""
    if _last_value_cut(ds):
        raise InputError("truncated data set: it ends inside a data element")
    stored_values(ds, 0, keep)


def stored_values(ds: Dataset, frame: int, keep: bool = False) -> tuple[np.ndarray, str]:
    """Stored values of one frame, colour as RGB, with the photometric interpretation they are in;
    ``keep`` as ``pool.decode``'s."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise InputError(f"transfer syntax {syntax.name} is not supported") from exc
    # A compressed frame of a few bytes may claim any size: what a decoder would allocate is
    # refused first (the listener's check and CT slices come here without display_pixels's check).
    check_not_too_large(_integer(ds, "Columns"), _integer(ds, "Rows"))
    _check_pixel_data(ds)
    try:
        values, meta = pool.decode(ds, frame, keep) if syntax in _JPEG_FAMILY else decoder.as_array(ds, index=frame)
    except Exception as exc:  # decoder plugins raise many exception types on damaged data
        raise InputError(f"cannot decode the pixel data ({syntax.name}): {one_line(exc)}") from exc
    return values, str(meta["photometric_interpretation"])


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, as Pillow's convert("L") and YBR_FULL (PS3.3 C.7.6.3.1.2) use."""
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """PS3.3 C.11.2 VOI LUT Module, output in [0, 1]: the first VOI LUT, else the first window,
    else a window over the data (min to max; robust percentiles for DX "for processing"). The
    arithmetic is done in place: a 2500 x 2048 radiograph's every new float64 array costs 40 MB."""
    values = np.asarray(values, dtype=np.float64)  # ``display_pixels``'s own array: changed in place
    if ds.get("VOILUTSequence"):
        return _lookup(values, ds.VOILUTSequence[0], ds)
    if (window := _first_window(ds)) is not None:
        return _window(values, *window, str(ds.get("VOILUTFunction") or "LINEAR").upper())
    if ds.get("PresentationIntentType") == "FOR PROCESSING":
        low, high = np.percentile(values, PROCESSING_PERCENTILES)
    else:  # the 0th and 100th percentiles, without their partial sort (4 ms for a 1024-px image)
        low, high = values.min(), values.max()
    values -= low
    values /= max(high - low, 1e-9)
    return np.clip(values, 0.0, 1.0, out=values)


def _fixed_voi(ds: Dataset) -> bool:
    """Whether ``_voi`` maps each value on its own: a VOI LUT or a window, not the data's range."""
    return bool(ds.get("VOILUTSequence")) or _first_window(ds) is not None


def _first_window(ds: Dataset) -> tuple[float, float] | None:
    """The first Window Center and Width (PS3.3 C.11.2.1.2), None without a usable one."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    return None if center is None or width is None or width <= 0 else (center, width)


def _first(value: object) -> float | None:
    """The first of several alternative windows (PS3.3 C.11.2.1.2), None when absent or empty."""
    if isinstance(value, MultiValue):
        value = value[0] if value else None
    return None if value is None or value == "" else float(value)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window Center/Width by VOI LUT Function (PS3.3 C.11.2.1.2 LINEAR, C.11.2.1.3 LINEAR_EXACT
    and SIGMOID), scaled to [0, 1]; the linear ones change ``values`` in place."""
    if function == "SIGMOID":
        return 0.5 * (1.0 + np.tanh(2.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        values -= center
        values /= width
    else:
        values -= center - 0.5
        values /= max(width - 1.0, 1e-9)
    values += 0.5
    return np.clip(values, 0.0, 1.0, out=values)


def _lookup(values: np.ndarray, item: Dataset, ds: Dataset) -> np.ndarray:
    """A VOI LUT Sequence item (PS3.3 C.11.2.1.1): LUT Descriptor is (entries, first value
    mapped, bits per entry); values outside the table take its first or last entry."""
    _, first, bits = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words in the data set's byte order
        order = "<" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">"
        table = np.frombuffer(data, dtype=f"{order}u2")
    else:
        table = np.atleast_1d(np.asarray(data))
    index = np.clip(np.rint(values) - first, 0, table.size - 1).astype(np.intp)
    return table[index].astype(np.float64) / (2.0**bits - 1.0)


def source_images(ds: Dataset, path: str) -> list[SourceImage]:
    """The image to classify in a DICOM instance: the radiograph, frame 0 of a multi-frame one.
    An enhanced multi-frame object (a volume or a run) and a CT localizer are skipped once they decode."""
    if is_enhanced(ds):
        check_decodable(ds)
        raise skipped(f"{_name(ds)} is a multi-frame enhanced object, not a radiograph")
    if str(ds.get("Modality", "")).upper() == "CT":
        if "LOCALIZER" not in [str(v).upper() for v in ds.get("ImageType", [])]:
            raise InputError("CT series must be loaded as a series")
        check_decodable(ds)
        raise skipped("a CT localizer is not a radiograph")
    return [SourceImage(path=path, dataset=ds, pixels=display_pixels(ds, 0))]
