"""Safe DICOM reading and atomic, streaming DICOM writing.

Why this module exists: pydicom is a forgiving reader. It accepts a truncated value without
complaint, follows a corrupted length wherever it points, and its exception and warning texts can
quote element values (PHI). A de-identification tool must instead *prove* a file is well formed
before trusting it, keep memory bounded whatever the length fields say, and never echo a value.

So reading happens in two passes:

1. A structural walk (:class:`_Walker`) over the raw bytes, reading only element headers. It checks
   every length against the file size and the enclosing container, bounds sequence depth, item
   count, element count and header size, and locates the top-level Pixel Data element. Nothing
   here allocates more than a few bytes per element, so a hostile length cannot exhaust memory.
2. pydicom then parses everything *except* the top-level Pixel Data, and every element is
   converted once, so malformed values surface at read time, not at write time.

Pixel data is described by a :class:`PixelRef` (offsets into the source file). The writer copies
those raw bytes in 1 MiB chunks after writing the (de-identified) header, so a 2 GB multi-frame file
never sits in memory and the pixel bytes stay bit-identical.

All errors are :class:`~dicomsafe.errors.InputFileError` with a stable ``code`` and a fixed,
value-free message.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Iterator

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO, DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import correct_ambiguous_vr, write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID,
)

from .errors import InputFileError, OutputError
from .fsutil import atomic_writer, staging_writer

log = logging.getLogger(__name__)


class _RedactPydicomLog(logging.Filter):
    """pydicom logs (and warns) with texts that quote element values, e.g. "Invalid value for VR
    PN: '<a name>'". Records of its loggers keep their level but lose their text, so no value
    can reach a log file or the terminal through them, whatever logging set-up the CLI uses."""

    MESSAGE = "pydicom reported a problem with a data element (details withheld: may quote values)"

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.MESSAGE
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def _install_pydicom_log_redaction() -> None:
    names = (
        "pydicom",
        "pydicom.pixels.decoders.base",
        "pydicom.pixels.encoders.base",
        "pydicom.pixels.utils",
    )
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactPydicomLog) for f in logger.filters):
            logger.addFilter(_RedactPydicomLog())


_install_pydicom_log_redaction()

#: dicomsafe's Implementation Class UID (a fixed UUID-derived OID under 2.25, PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.169421573672751245676750037997110103044"
#: Implementation Version Name written into the file meta (SH, at most 16 characters).
IMPLEMENTATION_VERSION_NAME = "DICOMSAFE_010"

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
PIXEL_DATA_TAG = 0x7FE00010
#: pydicom's stop_before_pixels stops at the first of these top-level tags.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: Sampled data (pixels, overlay planes, waveforms, spectra): bytes of measurements, not text.
_SAMPLE_TAGS = _PIXEL_TAGS | frozenset({0x54001010, 0x56000020, 0x56000010})


def is_sample_tag(tag: int) -> bool:
    """Pixel data of any kind, waveform and spectroscopy data, overlay planes (60xx,3000): the
    values the verifier scans for SSNs only and that the raw lane leaves to the full lane when
    they are not the top-level Pixel Data."""
    return tag in _SAMPLE_TAGS or ((tag >> 16) & 0xFF01 == 0x6000 and tag & 0xFFFF == 0x3000)


_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
COPY_CHUNK = 1 << 20  # 1 MiB

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
_VR_LONG = frozenset(
    b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split()
)
_VR_SHORT = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()
)
_VR_ALL = _VR_LONG | _VR_SHORT


# --------------------------------------------------------------------------------------------
# Limits and result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadLimits:
    """Bounds that keep a corrupt or hostile file from exhausting memory or time.

    The defaults are generous for real clinical data (RT structure sets with tens of thousands of
    contour items, deeply nested SR trees) yet small enough that the worst case stays cheap.
    """

    max_depth: int = 32  # nested sequence levels
    max_items: int = 1_000_000  # items in one sequence
    max_elements: int = 5_000_000  # elements in the whole file (all depths)
    max_element_bytes: int = 256 << 20  # any single non-pixel value
    max_header_bytes: int = 512 << 20  # all non-pixel values together (they are loaded)
    max_inflated_bytes: int = 256 << 20  # Deflated transfer syntax: decompressed size


DEFAULT_LIMITS = ReadLimits()

#: Every ``InputFileError.code`` that :func:`read_dicom` / :func:`read_header` can raise.
READ_ERROR_CODES = (
    "unreadable",  # cannot open/read, or not a regular file (FIFO, device, directory)
    "empty",
    "not-dicom",
    "truncated",  # the file ends inside an element, item or sequence
    "length-overflow",  # a length runs past its enclosing item/sequence, or is absurd
    "malformed",  # structure pydicom or the walk cannot accept (bad items, order, VR …)
    "malformed-text",  # binary bytes in a text value (a swallowed neighbour element)
    "too-deep",  # sequence nesting > max_depth
    "too-many-items",
    "too-many-elements",
    "too-large",  # a value / all header values / inflated size over the limits
    "encoding-mismatch",  # byte order of the body contradicts the meta
    "unsupported-transfer-syntax",  # private or unknown transfer syntax
    "changed",  # the file changed while read (or, at write time, since read)
)


@dataclass(frozen=True)
class PixelRef:
    """Where the top-level Pixel Data element lives in the source file.

    ``start`` is the offset of the element's tag, ``value_offset`` of its first value byte and
    ``end`` the offset just past it (past the Sequence Delimitation Item when encapsulated). The
    writer copies ``[start, end)`` verbatim: header and value in the source's own encoding, which
    is why the output keeps the input transfer syntax. ``size``/``mtime_ns`` detect a source that
    changed between read and write.
    """

    path: Path
    start: int
    value_offset: int
    end: int
    encapsulated: bool
    vr: str | None  # None for implicit VR
    is_implicit_vr: bool
    is_little_endian: bool
    transfer_syntax: str
    is_last_element: bool
    source_size: int
    source_mtime_ns: int

    @property
    def value_length(self) -> int:
        """Length of the value field in bytes (for encapsulated data: items + delimiter)."""
        return self.end - self.value_offset


@dataclass
class ReadResult:
    """A safely read DICOM file.

    ``dataset`` holds every element except the top-level Pixel Data (see ``pixel_ref``). Use
    :func:`load_pixel_data` only when pixels must change; otherwise pass ``pixel_ref`` to
    :func:`write_dicom` and the bytes are streamed.
    """

    dataset: FileDataset
    preamble: bytes | None
    preamble_threat: str | None
    pixel_ref: PixelRef | None
    transfer_syntax: str
    is_implicit_vr: bool
    is_little_endian: bool
    has_file_meta: bool
    trailing_bytes: int = 0
    size: int = 0
    path: Path | None = None
    mtime_ns: int = 0


# --------------------------------------------------------------------------------------------
# Preamble checks (CVE-2019-11687)
# --------------------------------------------------------------------------------------------

_MACHO_MAGICS = (
    b"\xfe\xed\xfa\xce",
    b"\xce\xfa\xed\xfe",
    b"\xfe\xed\xfa\xcf",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",  # universal (fat) binary; also Java class files, equally unwelcome
    b"\xbe\xba\xfe\xca",
    b"\xca\xfe\xba\xbf",  # fat64
    b"\xbf\xba\xfe\xca",
)
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"PK\x01\x02")


def preamble_threat(preamble: bytes | None) -> str | None:
    """Name the kind of foreign file a 128-byte preamble makes this file into, or None.

    The preamble is free-form by the standard, which makes "DICOM + executable" polyglots possible
    (CVE-2019-11687): the same bytes run as a Windows/Linux/macOS program or open as an archive.
    TIFF is listed too: the standard allows TIFF/DICOM dual-personality files, but an output of ours
    must not open as an image with unreviewed TIFF tags, so it is flagged (and zeroed) as well.
    Harmless non-zero preambles (vendor names) return None; every output preamble is zeroed anyway.
    """
    if not preamble:
        return None
    p = bytes(preamble)
    if p[:2] in (b"MZ", b"ZM"):
        return "pe"
    if p[:4] == b"\x7fELF":
        return "elf"
    if p[:4] in _MACHO_MAGICS:
        return "macho"
    if p[:4] in _ZIP_MAGICS:
        return "zip"
    if p[:2] == b"#!":
        return "script"
    if p[:4] == b"%PDF" or b"%PDF-" in p[:128]:
        return "pdf"
    if p[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if p[:6] in (b"7z\xbc\xaf\x27\x1c",) or p[:3] == b"\x1f\x8b\x08" or p[:5] == b"Rar!\x1a":
        return "archive"
    stripped = p.lstrip(b" \t\r\n\x00").lower()
    if stripped.startswith((b"<script", b"<html", b"<!doctype html", b"<svg", b"<?xml")):
        return "script"
    return None


# --------------------------------------------------------------------------------------------
# Opening files safely
# --------------------------------------------------------------------------------------------


def _open_regular(path: str | os.PathLike[str]) -> tuple[BinaryIO, os.stat_result]:
    """Open read-only without blocking on FIFOs or devices; refuse anything but a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError:
        raise InputFileError("unreadable", "file cannot be opened for reading") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError("unreadable", "not a regular file")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return fh, st


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    try:
        return fh.read(n)
    except OSError:
        raise InputFileError("unreadable", "read error") from None


# --------------------------------------------------------------------------------------------
# sniff
# --------------------------------------------------------------------------------------------


def _explicit_le_header(buf: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, value offset, value length) of the explicit VR little endian element header at
    ``pos``, or None when the header is cut off or its VR is not one we know."""
    if pos + 8 > len(buf):
        return None
    group, elem = struct.unpack_from("<HH", buf, pos)
    vr = buf[pos + 4 : pos + 6]
    if vr in _VR_LONG:
        if pos + 12 > len(buf):
            return None
        return group << 16 | elem, pos + 12, struct.unpack_from("<L", buf, pos + 8)[0]
    if vr in _VR_SHORT:
        return group << 16 | elem, pos + 8, struct.unpack_from("<H", buf, pos + 6)[0]
    return None


def _meta_sop_class(buf: bytes, pos: int) -> tuple[bool, str | None]:
    """Parse an explicit VR LE group 0002 from ``buf[pos:]``; return (ok, MediaStorageSOPClassUID)."""
    sop_class = None
    seen = False
    while (head := _explicit_le_header(buf, pos)) is not None:
        tag, vpos, length = head
        if tag >> 16 != 0x0002 or length == _UNDEFINED:
            break
        seen = True
        if tag == 0x00020002 and vpos + length <= len(buf):
            sop_class = buf[vpos : vpos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = vpos + length
    return seen, sop_class


def _plausible_first_element(buf: bytes, size: int) -> str | None:
    """Is ``buf`` (file start, no preamble) a plausible dataset? Return 'dicom'/'dicomdir'/None.

    Accepts a first element in group 0002 (meta without preamble), 0004 (a DICOMDIR without meta)
    or 0008 (a bare dataset, like pydicom's ExplVR_LitEndNoMeta.dcm), in implicit or explicit VR, little or big
    endian, with a length that fits in the file.
    """
    if len(buf) < 8:
        return None
    for endian in "<>":
        group, elem = struct.unpack_from(endian + "HH", buf, 0)
        if group not in (0x0002, 0x0004, 0x0008):
            continue
        vr = buf[4:6]
        if vr in _VR_ALL:
            if vr in _VR_LONG:
                if len(buf) < 12:
                    continue
                length = struct.unpack_from(endian + "L", buf, 8)[0]
                hdr = 12
            else:
                length = struct.unpack_from(endian + "H", buf, 6)[0]
                hdr = 8
        else:
            if endian == ">":
                continue  # big endian is explicit VR only
            length = struct.unpack_from("<L", buf, 4)[0]
            hdr = 8
        if length != _UNDEFINED and hdr + length > size:
            continue
        if group == 0x0004:
            return "dicomdir"
        if group == 0x0002:
            _, sop_class = _meta_sop_class(buf, 0)
            return "dicomdir" if sop_class == DICOMDIR_SOP_CLASS else "dicom"
        return "dicom"
    return None


def sniff(path: str | os.PathLike[str]) -> str:
    """Classify a file cheaply: ``"dicom"``, ``"dicomdir"``, ``"not-dicom"`` or ``"empty"``.

    Reads at most 64 KiB. A "dicom" verdict only means "looks like DICOM": :func:`read_dicom` is
    what proves a file well formed. Raises InputFileError("unreadable") when the file cannot be
    opened or is not a regular file.
    """
    return sniff_study(path)[0]


def sniff_study(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """:func:`sniff`, plus the StudyInstanceUID when the same 64 KiB show it plainly (see
    :func:`peek_study_uid`); None means "not found this way, read the header"."""
    fh, st = _open_regular(path)
    with fh:
        if st.st_size == 0:
            return "empty", None
        buf = _read_exact(fh, 65536)
    if not buf:
        return "empty", None
    if len(buf) >= 132 and buf[128:132] == b"DICM":
        _, sop_class = _meta_sop_class(buf, 132)
        if sop_class == DICOMDIR_SOP_CLASS:
            return "dicomdir", None
        return "dicom", peek_study_uid(buf)
    verdict = _plausible_first_element(buf, st.st_size)
    return verdict or "not-dicom", None


#: Transfer syntaxes whose dataset is not explicit VR little endian (the peek leaves them alone).
_PEEK_REFUSED_TS = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_STUDY_UID_TAG = 0x0020000D


def peek_study_uid(buf: bytes) -> str | None:
    """The StudyInstanceUID of a Part 10 file's first bytes, by walking top-level element headers.

    Why: grouping files into studies needs this one value from every file before any work can
    start; the full header read (:func:`read_header`) costs ~0.45 ms per CT file, this walk a
    tenth of that. It only handles the plain case: implicit or explicit VR little endian, only
    defined lengths up to the UID, a UID of digits and dots within ``buf``. Anything else gives
    None and the caller reads the header properly. Nothing here decides what is safe: every file
    is read and checked in full by the worker that de-identifies it.
    """
    pos, ts = _meta_end_and_ts(buf)
    if pos is None or ts is None or ts in _PEEK_REFUSED_TS:
        return None
    implicit = ts == "1.2.840.10008.1.2"
    n = len(buf)
    while pos + 8 <= n:
        if implicit:
            group, elem, length = struct.unpack_from("<HHL", buf, pos)
            tag, vpos = group << 16 | elem, pos + 8
        else:
            head = _explicit_le_header(buf, pos)
            if head is None:
                return None
            tag, vpos, length = head
        if length == _UNDEFINED or tag > _STUDY_UID_TAG:
            return None
        if tag == _STUDY_UID_TAG:
            if vpos + length > n:
                return None
            value = buf[vpos : vpos + length].strip(b" \x00")
            if not value or value.strip(b"0123456789."):
                return None
            return value.decode("ascii")
        pos = vpos + length
    return None


def _meta_end_and_ts(buf: bytes) -> tuple[int | None, str | None]:
    """(offset after group 0002, TransferSyntaxUID) of a Part 10 buffer, or (None, None)."""
    pos, ts = 132, None
    while pos + 8 <= len(buf):
        if struct.unpack_from("<H", buf, pos)[0] != 0x0002:
            return pos, ts
        head = _explicit_le_header(buf, pos)
        if head is None:
            return None, None
        tag, vpos, length = head
        if length == _UNDEFINED or vpos + length > len(buf):
            return None, None
        if tag == 0x00020010:
            ts = buf[vpos : vpos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos = vpos + length
    return None, None


# --------------------------------------------------------------------------------------------
# Structural walk
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TopElement:
    tag: int
    start: int
    value_offset: int
    end: int
    vr: str | None
    undefined: bool


class _Walker:
    """Validate the element structure of a byte stream by reading headers only.

    Mirrors pydicom's parsing decisions (explicit VR datasets whose sequence items switch to
    implicit VR, undefined-length UN treated as a sequence, private undefined-length elements that
    start with an Item are sequences) so that what is validated is what pydicom will parse.
    """

    def __init__(self, fh: BinaryIO, size: int, little: bool, limits: ReadLimits):
        self.fh = fh
        self.size = size
        self.e = "<" if little else ">"
        self.little = little
        self.limits = limits
        self.elements = 0
        self.header_bytes = 0
        self.top: list[_TopElement] = []
        self.trailing = 0

    # -- low level ---------------------------------------------------------------------------
    def _read(self, pos: int, n: int) -> bytes:
        self.fh.seek(pos)
        data = _read_exact(self.fh, n)
        return data

    def _tag_len(self, pos: int) -> tuple[int, int]:
        data = self._read(pos, 8)
        if len(data) < 8:
            raise InputFileError("truncated", "file ends inside an item header")
        group, elem, length = struct.unpack(self.e + "HHL", data)
        return (group << 16) | elem, length

    def _count(self) -> None:
        self.elements += 1
        if self.elements > self.limits.max_elements:
            raise InputFileError("too-many-elements", "too many data elements")

    def _check_value(self, vpos: int, length: int, limit: int) -> int:
        end = vpos + length
        if end > self.size:
            # a cut-off file and a corrupted length look alike; an absurd length is the latter
            if length >= 0x80000000 or length > 16 * self.size:
                raise InputFileError("length-overflow", "an element length exceeds the file size")
            raise InputFileError("truncated", "file ends inside an element value")
        if end > limit:
            raise InputFileError("length-overflow", "an element overruns its enclosing item")
        return end

    # -- datasets ----------------------------------------------------------------------------
    def dataset(
        self,
        pos: int,
        limit: int,
        implicit: bool,
        depth: int,
        *,
        top: bool = False,
        item: str | None = None,
    ) -> int:
        """Walk the elements of one dataset and return the position just after it.

        ``item`` is None for the top-level dataset (ends at ``limit`` = file size), "defined" for
        a defined-length item (ends exactly at ``limit``) or "undefined" for an undefined-length
        item (ends after its Item Delimitation Item, which must come before ``limit``).
        """
        if item is not None and not implicit and pos + 6 <= limit:
            # pydicom: a sequence item in an explicit VR file may be encoded implicit
            vrb = self._read(pos + 4, 2)
            if len(vrb) == 2 and not (0x40 < vrb[0] < 0x5B and 0x40 < vrb[1] < 0x5B):
                implicit = True
        last_tag = -1
        while True:
            if pos >= limit:
                if item == "undefined":
                    if limit >= self.size:
                        raise InputFileError("truncated", "item not terminated")
                    raise InputFileError("length-overflow", "item overruns its sequence")
                return pos
            remaining = limit - pos
            if remaining < 8:
                if item is None:
                    self.trailing = remaining
                    return limit
                if limit >= self.size:
                    raise InputFileError("truncated", "file ends inside an element header")
                raise InputFileError("length-overflow", "element header overruns its item")
            head = self._read(pos, 8)
            group, elem = struct.unpack_from(self.e + "HH", head, 0)
            tag = (group << 16) | elem
            if tag == _ITEM_DELIM:
                if item is not None:
                    return pos + 8
                raise InputFileError("malformed", "unexpected item delimiter")
            if tag in (_ITEM, _SEQ_DELIM):
                raise InputFileError("malformed", "unexpected item tag in a dataset")
            if tag <= last_tag:
                # PS3.5 7.1: ascending order, no repeats. pydicom would silently keep only the
                # last of two equal tags, so the first value would escape every later check.
                raise InputFileError("malformed", "data elements out of order or repeated")
            last_tag = tag
            self._count()
            vrb = head[4:6]
            vr: str | None
            if implicit:
                vr = None
                length = struct.unpack_from(self.e + "L", head, 4)[0]
                vpos = pos + 8
            elif vrb in _VR_LONG:
                tail = self._read(pos + 8, 4)
                if len(tail) < 4:
                    raise InputFileError("truncated", "file ends inside an element header")
                vr = vrb.decode("ascii")
                length = struct.unpack(self.e + "L", tail)[0]
                vpos = pos + 12
            elif 0x40 < vrb[0] < 0x5B and 0x40 < vrb[1] < 0x5B:
                vr = vrb.decode("ascii")  # known short VR or an unknown one: 2-byte length
                length = struct.unpack_from(self.e + "H", head, 6)[0]
                vpos = pos + 8
            else:  # pydicom's assume_implicit_vr_switch
                vr = None
                length = struct.unpack_from(self.e + "L", head, 4)[0]
                vpos = pos + 8
            is_pixel = item is None and tag == PIXEL_DATA_TAG
            undefined = length == _UNDEFINED
            if undefined:
                end = self._undefined(tag, vr, vpos, limit, implicit, depth, is_pixel)
            else:
                end = self._check_value(vpos, length, limit)
                if self._is_sq(tag, vr, implicit, length):
                    self._sequence(vpos, end, implicit or vr == "UN", depth + 1, defined=True)
                elif not is_pixel:
                    if length > self.limits.max_element_bytes:
                        raise InputFileError("too-large", "an element value is too large")
                    self.header_bytes += length
                    if self.header_bytes > self.limits.max_header_bytes:
                        raise InputFileError("too-large", "header values are too large")
            if top:
                self.top.append(_TopElement(tag, pos, vpos, end, vr, undefined))
            pos = end

    @staticmethod
    def _is_sq(tag: int, vr: str | None, implicit: bool, length: int = 0) -> bool:
        """Will pydicom parse this defined-length element as a sequence? (SQ; implicit VR with
        a dictionary VR of SQ; explicit UN of a public SQ attribute, which pydicom re-types
        when shorter than 64 KiB.)"""
        if vr == "SQ":
            return True
        if vr is None or (vr == "UN" and not (tag >> 16) & 1 and length < 0xFFFF):
            try:
                return dictionary_VR(tag) == "SQ"
            except KeyError:
                return False
        return False

    def _undefined(
        self, tag: int, vr: str | None, vpos: int, limit: int, implicit: bool, depth: int, is_pixel: bool
    ) -> int:
        if is_pixel or vr in ("OB", "OW"):
            return self._fragments(vpos, limit, count_bytes=not is_pixel)
        if vr == "UN":
            # PS3.5 6.2.2: an undefined-length UN is a sequence (its items are implicit VR LE;
            # like pydicom, detect the item encoding rather than assume it)
            return self._sequence(vpos, limit, implicit, depth + 1, defined=False)
        if vr in (None, "SQ"):
            if vr is None and not self._is_sq(tag, vr, implicit):
                nxt, _ = self._tag_len(vpos)
                if nxt != _ITEM and nxt != _SEQ_DELIM:
                    raise InputFileError("malformed", "undefined length on a non-sequence element")
            return self._sequence(vpos, limit, implicit, depth + 1, defined=False)
        raise InputFileError("malformed", "undefined length on a non-sequence element")

    def _sequence(self, pos: int, limit: int, implicit: bool, depth: int, *, defined: bool) -> int:
        if depth > self.limits.max_depth:
            raise InputFileError("too-deep", "sequences nested too deeply")
        items = 0
        while True:
            if defined and pos >= limit:
                return pos
            if not defined and pos + 8 > limit:
                if limit >= self.size:
                    raise InputFileError("truncated", "sequence not terminated")
                raise InputFileError("length-overflow", "sequence overruns its enclosing item")
            tag, length = self._tag_len(pos)
            if tag == _SEQ_DELIM and not defined:
                return pos + 8
            if tag != _ITEM:
                raise InputFileError("malformed", "sequence contains a non-item element")
            items += 1
            self._count()
            if items > self.limits.max_items:
                raise InputFileError("too-many-items", "too many items in a sequence")
            ipos = pos + 8
            if length == _UNDEFINED:
                pos = self.dataset(ipos, limit, implicit, depth, item="undefined")
            else:
                iend = self._check_value(ipos, length, limit)
                self.dataset(ipos, iend, implicit, depth, item="defined")
                pos = iend

    def _fragments(self, pos: int, limit: int, *, count_bytes: bool) -> int:
        """Encapsulated data: Items of defined length, then a Sequence Delimitation Item."""
        items = 0
        while True:
            if pos + 8 > limit:
                if limit >= self.size:
                    raise InputFileError("truncated", "encapsulated data not terminated")
                raise InputFileError("length-overflow", "encapsulated data overruns its item")
            tag, length = self._tag_len(pos)
            if tag == _SEQ_DELIM:
                return pos + 8
            if tag != _ITEM or length == _UNDEFINED:
                raise InputFileError("malformed", "bad fragment in encapsulated data")
            items += 1
            self._count()
            if items > self.limits.max_items:
                raise InputFileError("too-many-items", "too many fragments")
            end = self._check_value(pos + 8, length, limit)
            if count_bytes:
                self.header_bytes += length
                if self.header_bytes > self.limits.max_header_bytes:
                    raise InputFileError("too-large", "header values are too large")
            pos = end


# --------------------------------------------------------------------------------------------
# Encoding detection (mirrors pydicom.filereader.read_partial)
# --------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    preamble: bytes | None
    meta_start: int
    body_start: int
    transfer_syntax: str | None
    implicit: bool
    little: bool
    has_meta: bool


def _layout(fh: BinaryIO, size: int) -> _Layout:
    head = _read_exact(fh, 132)
    preamble = None
    pos = 0
    if len(head) == 132 and head[128:132] == b"DICM":
        preamble = head[:128]
        pos = 132
    meta_start = pos
    ts: str | None = None
    has_meta = False
    # File meta: explicit VR little endian, group 0002 (no recursion, small values only)
    while True:
        fh.seek(pos)
        hdr = _read_exact(fh, 8)
        if len(hdr) < 8:
            break
        group, elem = struct.unpack_from("<HH", hdr)
        if group != 0x0002:
            break
        has_meta = True
        vr = hdr[4:6]
        if vr in _VR_LONG:
            ext = _read_exact(fh, 4)
            if len(ext) < 4:
                raise InputFileError("truncated", "file ends inside the file meta")
            length = struct.unpack("<L", ext)[0]
            vpos = pos + 12
        elif 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B:
            length = struct.unpack_from("<H", hdr, 6)[0]
            vpos = pos + 8
        else:  # implicit VR meta (non-conformant but seen in the wild)
            length = struct.unpack_from("<L", hdr, 4)[0]
            vpos = pos + 8
        if length == _UNDEFINED or length > 1 << 20:
            raise InputFileError("malformed", "invalid file meta element length")
        if vpos + length > size:
            raise InputFileError("truncated", "file ends inside the file meta")
        if elem == 0x0010:
            fh.seek(vpos)
            raw = _read_exact(fh, length)
            ts = raw.rstrip(b"\x00 ").decode("ascii", "replace")
        pos = vpos + length
    body_start = pos
    implicit, little = True, True
    fh.seek(body_start)
    peek = _read_exact(fh, 6)
    if len(peek) < 6:
        pass
    elif ts is None:
        group = struct.unpack_from("<H", peek)[0]
        if peek[4:6] in _VR_ALL:
            implicit = False
            if group >= 1024:
                little = False
    elif ts == ImplicitVRLittleEndian:
        pass
    elif ts == ExplicitVRBigEndian:
        implicit, little = False, False
    else:
        implicit = False
    # pydicom re-checks the first body element's VR bytes and follows what it finds
    if len(peek) == 6 and ts != DeflatedExplicitVRLittleEndian:
        implicit = not (0x40 < peek[4] < 0x5B and 0x40 < peek[5] < 0x5B)
    return _Layout(preamble, meta_start, body_start, ts, implicit, little, has_meta)


def _transfer_syntax_for(layout: _Layout) -> str:
    if layout.transfer_syntax:
        return layout.transfer_syntax
    if layout.implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if layout.little else ExplicitVRBigEndian


# --------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom warnings while we call it: their texts may quote element values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
# C0 controls other than TAB, LF, FF, CR and ESC (ISO 2022 escapes): never legitimate in text
# values (PS3.5 6.1.2/6.1.3). NUL is only accepted as trailing padding.
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")


def _check_text(value: object) -> None:
    """Reject text values carrying binary bytes. A corrupted length field that makes a text
    element swallow its neighbour (tag, VR, length, *its value*) shows up exactly like this; the
    swallowed value (a patient name, say) would otherwise hide inside an innocent attribute where
    no tag-based rule looks for it."""
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else (value,)
    for v in values:
        if v is None:
            continue
        text = str(v).rstrip("\x00 ")
        if _BAD_TEXT.search(text):
            raise InputFileError(
                "malformed-text", "a text value contains binary bytes (possibly a swallowed element)"
            )


def _force_read(ds: Dataset, depth: int, limits: ReadLimits, *, check_text: bool = True) -> None:
    """Convert every element once (values, nested sequences) so malformed content fails here."""
    if depth > limits.max_depth:
        raise InputFileError("too-deep", "sequences nested too deeply")
    for tag in list(ds.keys()):
        elem = ds[tag]
        value = elem.value
        if check_text and elem.VR in _TEXT_VRS:
            _check_text(value)
        if elem.VR == "SQ":
            if not isinstance(value, Sequence):
                raise InputFileError("malformed", "sequence could not be parsed")
            if len(value) > limits.max_items:
                raise InputFileError("too-many-items", "too many items in a sequence")
            for item in value:
                _force_read(item, depth + 1, limits)


def _map_exception(exc: BaseException) -> InputFileError:
    """Turn any parser/OS exception into a PHI-free InputFileError (never uses str(exc))."""
    if isinstance(exc, InputFileError):
        return exc
    if isinstance(exc, RecursionError):
        return InputFileError("too-deep", "structure nested too deeply")
    if isinstance(exc, MemoryError):
        return InputFileError("too-large", "file needs too much memory to parse")
    if isinstance(exc, EOFError):
        return InputFileError("truncated", "file ends unexpectedly")
    if isinstance(exc, (PermissionError, IsADirectoryError, FileNotFoundError)):
        return InputFileError("unreadable", "file cannot be read")
    if isinstance(exc, OSError) and exc.errno is not None:
        return InputFileError("unreadable", "file cannot be read")
    if isinstance(exc, pydicom.errors.InvalidDicomError):
        return InputFileError("not-dicom", "not a DICOM file")
    return InputFileError("malformed", f"file could not be parsed ({type(exc).__name__})")


def read_dicom(path: str | os.PathLike[str], *, limits: ReadLimits = DEFAULT_LIMITS) -> ReadResult:
    """Read a DICOM file safely; pixel data stays in the source file (see :class:`PixelRef`).

    Raises InputFileError with one of :data:`READ_ERROR_CODES` and a fixed, value-free message.
    """
    try:
        return _read_dicom(Path(os.fspath(path)), limits)
    except InputFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a quarantine reason
        raise _map_exception(exc) from None


def _read_dicom(path: Path, limits: ReadLimits, *, full: bool = True) -> ReadResult:
    fh, st = _open_regular(path)
    with fh:
        size = st.st_size
        if size == 0:
            raise InputFileError("empty", "file is empty")
        layout = _layout(fh, size)
        if layout.preamble is None and not layout.has_meta:
            fh.seek(0)
            if _plausible_first_element(_read_exact(fh, 4096), size) is None:
                raise InputFileError("not-dicom", "not a DICOM file")
        if layout.body_start >= size:
            raise InputFileError("malformed", "file has no dataset")
        deflated = layout.transfer_syntax == DeflatedExplicitVRLittleEndian
        if layout.implicit and not layout.little:
            raise InputFileError("malformed", "implicit VR big endian is not a valid encoding")
        if deflated:
            walker = _walk_deflated(fh, layout, limits)
        else:
            walker = _Walker(fh, size, layout.little, limits)
            walker.dataset(layout.body_start, size, layout.implicit, 0, top=True)
        if walker.trailing:
            raise InputFileError("truncated", "file ends inside an element header")
        ts = _transfer_syntax_for(layout)
        if not UID(ts).is_transfer_syntax or UID(ts).is_private:
            # private/unknown syntaxes: we cannot know how to re-encode them faithfully
            raise InputFileError("unsupported-transfer-syntax", "unsupported transfer syntax")

        with _quiet_pydicom():
            fh.seek(0)
            ds = pydicom.dcmread(fh, stop_before_pixels=not deflated, force=True)
            enc = ds.original_encoding
            if not deflated and enc[1] != layout.little:
                raise InputFileError("encoding-mismatch", "byte order of the dataset is ambiguous")
            pixel_ref = None
            if not full:
                pass  # header only: the walk already proved the structure; values stay raw
            else:
                if not deflated:
                    pixel_ref = _attach_tail(fh, ds, walker, layout, path, st, ts)
                _force_read(ds, 0, limits)
                # the meta is rebuilt on output, nothing of it is written: convert, don't police
                _force_read(ds.file_meta, 0, limits, check_text=False)
            now = os.fstat(fh.fileno())
            if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise InputFileError("changed", "file changed while it was read")
    ds.filename = None  # no lazy re-reads from the source behind our back
    ds.preamble = b"\x00" * 128  # the original (possibly a polyglot) is in ReadResult.preamble
    threat = preamble_threat(layout.preamble)
    return ReadResult(
        dataset=ds,
        preamble=layout.preamble,
        preamble_threat=threat,
        pixel_ref=pixel_ref,
        transfer_syntax=ts,
        is_implicit_vr=layout.implicit,
        is_little_endian=layout.little,
        has_file_meta=layout.has_meta,
        trailing_bytes=walker.trailing,
        size=size,
        path=path,
        mtime_ns=st.st_mtime_ns,
    )


def _walk_deflated(fh: BinaryIO, layout: _Layout, limits: ReadLimits) -> _Walker:
    """Inflate with a hard output bound (pydicom inflates unbounded: a zip bomb), then walk."""
    fh.seek(layout.body_start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = io.BytesIO()
    try:
        while True:
            chunk = _read_exact(fh, COPY_CHUNK)
            if not chunk:
                break
            data = inflater.decompress(chunk, limits.max_inflated_bytes + 1 - out.tell())
            out.write(data)
            if out.tell() > limits.max_inflated_bytes or inflater.unconsumed_tail:
                raise InputFileError("too-large", "deflated dataset inflates too large")
        out.write(inflater.flush())
    except zlib.error:
        raise InputFileError("malformed", "deflated dataset is corrupt") from None
    size = out.tell()
    walker = _Walker(out, size, True, limits)
    walker.dataset(0, size, False, 0, top=True)
    walker.fh = io.BytesIO()  # drop the inflated copy now: pydicom inflates its own
    out.close()
    return walker


def _attach_tail(
    fh: BinaryIO,
    ds: FileDataset,
    walker: _Walker,
    layout: _Layout,
    path: Path,
    st: os.stat_result,
    ts: str,
) -> PixelRef | None:
    """pydicom stopped at the first top-level pixel tag: parse what follows it, except Pixel Data
    itself, element by element (each value is bounded by the walk), and describe Pixel Data."""
    tops = walker.top
    first = next((i for i, t in enumerate(tops) if t.tag in _PIXEL_TAGS), None)
    if first is None:
        return None
    pixel_ref = None
    charset = ds._character_set  # noqa: SLF001 - pydicom's resolved text encoding
    for i in range(first, len(tops)):
        t = tops[i]
        if t.tag == PIXEL_DATA_TAG:
            pixel_ref = PixelRef(
                path=path,
                start=t.start,
                value_offset=t.value_offset,
                end=t.end,
                encapsulated=t.undefined,
                vr=t.vr,
                is_implicit_vr=layout.implicit,
                is_little_endian=layout.little,
                transfer_syntax=ts,
                is_last_element=i == len(tops) - 1,
                source_size=st.st_size,
                source_mtime_ns=st.st_mtime_ns,
            )
            continue
        fh.seek(t.start)
        raw = _read_exact(fh, t.end - t.start)
        part = read_dataset(
            io.BytesIO(raw),
            layout.implicit,
            layout.little,
            bytelength=None,
            parent_encoding=charset,
        )
        for tag in part.keys():
            ds[tag] = part[tag]
    return pixel_ref


def read_header(path: str | os.PathLike[str], *, limits: ReadLimits = DEFAULT_LIMITS) -> Dataset:
    """The dataset up to (not including) the first top-level pixel element, for discovery.

    Same structural walk and limits as :func:`read_dicom` (so a hostile file fails here too, with
    the same codes), but values are not converted up front and elements after the pixel data
    are not parsed: study grouping needs a few UIDs, and the pipeline reads the file properly
    later. The walk reads element headers only, so the cost does not grow with pixel data size.
    """
    try:
        return _read_dicom(Path(os.fspath(path)), limits, full=False).dataset
    except InputFileError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _map_exception(exc) from None


# --------------------------------------------------------------------------------------------
# Pixel data access (for code that must change pixels)
# --------------------------------------------------------------------------------------------


def iter_pixel_chunks(
    ref: PixelRef, *, chunk: int = COPY_CHUNK, include_header: bool = False
) -> Iterator[bytes]:
    """Yield the raw Pixel Data bytes (value only, or element header + value) in chunks.

    Checks that the source has not changed since it was read (size, mtime, element header).
    """
    fh, st = _open_regular(ref.path)
    with fh:
        if st.st_size != ref.source_size or st.st_mtime_ns != ref.source_mtime_ns:
            raise InputFileError("changed", "file changed during the run")
        pos = ref.start if include_header else ref.value_offset
        remaining = ref.end - pos
        fh.seek(pos)
        while remaining > 0:
            data = _read_exact(fh, min(chunk, remaining))
            if not data:
                raise InputFileError("changed", "file changed during the run")
            remaining -= len(data)
            yield data


def load_pixel_data(ds: Dataset, ref: PixelRef) -> None:
    """Load Pixel Data into ``ds`` (in memory!) for code that must edit pixels.

    Once ``ds`` holds PixelData, :func:`write_dicom` writes it from ``ds`` and ignores any
    ``pixel_ref``. For encapsulated data the value is the item stream without the final Sequence
    Delimitation Item, which is how pydicom represents it.
    """
    value = b"".join(iter_pixel_chunks(ref))
    if ref.encapsulated:
        value = value[:-8]
    vr = ref.vr or ("OB" if ref.encapsulated else _native_pixel_vr(ds))
    ds.add_new(PIXEL_DATA_TAG, vr, value)
    if ref.encapsulated:
        ds[PIXEL_DATA_TAG].is_undefined_length = True


def _native_pixel_vr(ds: Dataset) -> str:
    return "OB" if int(ds.get("BitsAllocated", 16) or 16) <= 8 else "OW"


# --------------------------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------------------------


def _encoding_for(ts: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the dataset encoding of a transfer syntax."""
    if ts == ImplicitVRLittleEndian:
        return True, True
    if ts == ExplicitVRBigEndian:
        return False, False
    return False, True


def _output_transfer_syntax(ds: Dataset, pixel_ref: PixelRef | None) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    if pixel_ref is not None:
        return pixel_ref.transfer_syntax
    enc = getattr(ds, "original_encoding", (None, None))
    if enc == (True, True):
        return ImplicitVRLittleEndian
    if enc == (False, False):
        return ExplicitVRBigEndian
    return ExplicitVRLittleEndian


def build_file_meta(ds: Dataset, transfer_syntax: str) -> FileMetaDataset:
    """A fresh, minimal Part 10 file meta for ``ds``.

    Built from scratch rather than copied so that nothing from the source meta (source AE titles,
    private information, the original SOP Instance UID) can reach the output.
    """
    sop_class = ds.get("SOPClassUID")
    sop_instance = ds.get("SOPInstanceUID")
    if not sop_class or not sop_instance:
        raise InputFileError("no-sop-uid", "dataset lacks SOPClassUID or SOPInstanceUID")
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(str(sop_class))
    meta.MediaStorageSOPInstanceUID = UID(str(sop_instance))
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def write_dicom(
    ds: Dataset,
    out_path: str | os.PathLike[str],
    *,
    pixel_ref: PixelRef | None = None,
    source_path: str | os.PathLike[str] | None = None,
    staged: bool = False,
) -> str:
    """Write ``ds`` as a DICOM Part 10 file, atomically, with a zeroed preamble; return the
    SHA-256 (hex) of the bytes written (the ledger records it; no second read of the file).

    - File meta is rebuilt (see :func:`build_file_meta`); the transfer syntax is kept.
    - If ``ds`` has no top-level PixelData and ``pixel_ref`` is given, the source's Pixel Data
      element is copied verbatim in 1 MiB chunks between the elements before and after it.
      ``source_path`` overrides ``pixel_ref.path`` (e.g. if the caller moved the source).
    - ``staged=True``: ``out_path`` is a new file in a private staging directory, written in
      place without fsync (fsutil.staging_writer; the caller batches fsyncs with sync_files).
    - Raises OutputError on write failures (nothing is left behind), InputFileError("changed")
      if the source changed since it was read.
    """
    with _quiet_pydicom():
        return _write_dicom(ds, Path(os.fspath(out_path)), pixel_ref, source_path, staged)


class _HashingWriter:
    """Forward writes to ``fh`` and hash them: the output's digest without reading it back.
    Only appends: everything before the pixel data is encoded in memory first (no seeks)."""

    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.fh.write(data)


def _write_dicom(
    ds: Dataset,
    out_path: Path,
    pixel_ref: PixelRef | None,
    source_path: str | os.PathLike[str] | None,
    staged: bool = False,
) -> str:
    ts = _output_transfer_syntax(ds, pixel_ref)
    implicit, little = _encoding_for(ts)
    stream = pixel_ref is not None and PIXEL_DATA_TAG not in ds
    if stream:
        assert pixel_ref is not None
        if source_path is not None:
            pixel_ref = _replace_path(pixel_ref, Path(os.fspath(source_path)))
        if ts == DeflatedExplicitVRLittleEndian:
            raise ValueError("cannot stream pixel data into a deflated dataset")
        if pixel_ref.encapsulated and not little:
            raise ValueError("encapsulated pixel data cannot be written big endian")
    meta = build_file_meta(ds, ts)
    opener = staging_writer if staged else atomic_writer
    try:
        with opener(out_path) as raw:
            fh = _HashingWriter(raw)
            if ts == DeflatedExplicitVRLittleEndian:
                _write_whole(fh, ds, meta)  # type: ignore[arg-type]
            else:
                _write_parts(fh, ds, meta, implicit, little, pixel_ref if stream else None)  # type: ignore[arg-type]
        return fh.sha.hexdigest()
    except (InputFileError, OutputError, ValueError):
        raise
    except OSError as exc:
        raise OutputError(f"cannot write output file ({exc.strerror or 'I/O error'})") from None
    except Exception as exc:  # noqa: BLE001 - pydicom encoding errors may quote values
        raise InputFileError("unwritable", f"dataset could not be encoded ({type(exc).__name__})") from None


def _replace_path(ref: PixelRef, path: Path) -> PixelRef:
    from dataclasses import replace

    return replace(ref, path=path)


def _pixel_header(ref: PixelRef, ds: Dataset, implicit: bool, little: bool) -> bytes:
    """Pixel Data element header in the *output* encoding (the source's may differ, e.g. a file
    whose meta says explicit VR but whose body is implicit VR)."""
    e = "<" if little else ">"
    length = _UNDEFINED if ref.encapsulated else ref.value_length
    tag = struct.pack(e + "HH", PIXEL_DATA_TAG >> 16, PIXEL_DATA_TAG & 0xFFFF)
    if implicit:
        return tag + struct.pack(e + "L", length)
    vr = ref.vr if ref.vr in ("OB", "OW") else ("OB" if ref.encapsulated else _native_pixel_vr(ds))
    return tag + vr.encode("ascii") + b"\x00\x00" + struct.pack(e + "L", length)


def _stream_pixel_data(fh: IO[bytes], ref: PixelRef, ds: Dataset, implicit: bool, little: bool) -> None:
    """Copy the source's Pixel Data value in 1 MiB chunks. Only when the byte order changes (a
    big endian source written little endian, or the reverse) are native OW values byte-swapped:
    per 16-bit word for 8-bit samples, per sample of BitsAllocated bits otherwise (which is how
    pydicom reads them; the little endian twins of pydicom's big endian test files agree)."""
    header = _pixel_header(ref, ds, implicit, little)
    fh.write(header)
    width = 0
    if ref.is_little_endian != little and not ref.encapsulated:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        vr = ref.vr or _native_pixel_vr(ds)
        if vr == "OW" and bits in (1, 8):
            width = 2  # OW is a stream of 16-bit words: 8-bit samples are swapped in pairs
        elif vr == "OW" and bits in (16, 32, 64):
            width = bits // 8
    if width and ref.value_length % width:
        raise InputFileError("malformed", "pixel data length is not a whole number of samples")
    chunk_size = COPY_CHUNK - COPY_CHUNK % 8  # a multiple of every sample width
    for chunk in iter_pixel_chunks(ref, chunk=chunk_size):
        fh.write(_swap(chunk, width) if width else chunk)


def _swap(data: bytes, width: int) -> bytes:
    """Reverse the byte order of each ``width``-byte sample."""
    arr = bytearray(data)
    for i in range(width):
        arr[i::width] = data[width - 1 - i :: width]
    return bytes(arr)


def _write_whole(fh: IO[bytes], ds: Dataset, meta: FileMetaDataset) -> None:
    out = Dataset(ds)
    out.file_meta = meta
    out.preamble = b"\x00" * 128
    buf = io.BytesIO()  # deflated datasets are small (no streamed pixels); pydicom seeks
    pydicom.dcmwrite(buf, out, enforce_file_format=True)
    fh.write(buf.getbuffer())


def _write_parts(
    fh: IO[bytes],
    ds: Dataset,
    meta: FileMetaDataset,
    implicit: bool,
    little: bool,
    pixel_ref: PixelRef | None,
) -> None:
    """Preamble, meta and the elements before Pixel Data, encoded in memory and written at once;
    then the streamed pixel value; then any elements after it. Encoding in memory lets pydicom
    seek back to fix item lengths without seeking in the output, which is written append-only.
    Elements are passed to pydicom as found (``get_item``): values the transform did not touch
    stay raw bytes and are copied, not decoded and re-encoded."""
    tags = sorted(t for t in ds.keys() if (t >> 16) not in (0x0000, 0x0002))
    same_charset = ds.original_character_set == ds._character_set  # noqa: SLF001
    whole = Dataset({t: _as_written(ds, t, implicit, little, same_charset) for t in tags})
    if not implicit:
        # resolve "US or SS", "OB or OW" ... from PixelRepresentation etc. (needed for explicit VR)
        correct_ambiguous_vr(whole, little)
    charset = ds._character_set  # noqa: SLF001
    head = Dataset({t: whole.get_item(t) for t in tags if t < PIXEL_DATA_TAG})
    fh.write(_encode_head(head, meta, implicit, little, charset))
    if pixel_ref is not None:
        _stream_pixel_data(fh, pixel_ref, ds, implicit, little)
    tail = Dataset({t: whole.get_item(t) for t in tags if t >= PIXEL_DATA_TAG})
    if len(tail):
        tail.set_original_encoding(implicit, little, charset)
        fp = DicomBytesIO()
        fp.is_implicit_VR = implicit
        fp.is_little_endian = little
        write_dataset(fp, tail, parent_encoding=charset)
        fh.write(fp.getvalue())


def _as_written(ds: Dataset, tag: int, implicit: bool, little: bool, same_charset: bool):
    """The element to hand to pydicom's writer: raw bytes when they are already in the output's
    encoding (copied as they are: ~0.3 ms per CT file saved over decoding every value), else the
    converted element, which pydicom re-encodes. Sequences, undefined-length values and ambiguous
    VRs are always converted (pydicom resolves their VR and walks their items)."""
    elem = ds.get_item(tag)
    if (
        isinstance(elem, RawDataElement)
        and same_charset
        and elem.is_implicit_VR == implicit
        and elem.is_little_endian == little
        and elem.length != _UNDEFINED
        and (implicit or (elem.VR is not None and elem.VR not in _CONVERT_VRS))
        and (not implicit or dictionary_VR_or_none(tag) not in _CONVERT_VRS)
    ):
        return elem
    return ds[tag]


def dictionary_VR_or_none(tag: int) -> str | None:
    """The data dictionary's VR of ``tag``, or None (private and unknown tags)."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


#: VRs whose elements pydicom must see converted: sequences (items are walked) and the
#: dictionary's ambiguous VRs ("US or SS", "OB or OW", …), which correct_ambiguous_vr resolves.
_CONVERT_VRS = frozenset({"SQ", "US or SS", "OB or OW", "US or OW", "US or SS or OW", "OW or OB"})


def _encode_head(head: Dataset, meta: FileMetaDataset, implicit: bool, little: bool, charset) -> bytes:
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_file_meta_info(fp, meta, enforce_standard=True)
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    head.set_original_encoding(implicit, little, charset)
    write_dataset(fp, head, parent_encoding=charset)
    return fp.getvalue()


from . import safelog as _safelog  # noqa: E402

_safelog.quiet_third_party()  # pydicom is imported now: switch its value-quoting validation off
