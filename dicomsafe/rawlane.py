"""The raw lane: de-identify a common-case file through dicomsafe.rawds instead of pydicom Datasets.

Same engine, same checks, less machinery. The file's header is read with one read and parsed by
:mod:`dicomsafe.rawds`; the *same* functions as the full lane then run on it — harvest
(verify.harvest), the compiled plan and the marks (Deidentifier.transform), the file meta
(dicomio.build_file_meta) — and the output is written to staging with the pixel value streamed
from the source. Verification is the full verifier's two layers on the staged file as written:
the dataset layer (verify.find_in_dataset) on a fresh parse of the staged bytes, the byte layer
(verify.find_in_bytes) over the whole file.

The lane never decides against a file. Whatever it cannot do exactly — an encoding, a structure,
a value pydicom would convert differently, an exception of any kind, *and any verification
finding* — raises :class:`~dicomsafe.rawds.NotEligible`, and the caller runs the full lane, whose
result (written, or quarantined with its reasons) is the authoritative one. So the raw lane can
only make a clean file faster; it can never make a file clean.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydicom.uid import UID

from . import dicomio
from . import verify as phi_verify
from .fsutil import staging_writer
from .rawds import (EXPLICIT_VR_LE, IMPLICIT_VR_LE, PIXEL_DATA, NotEligible, RawDataset, encode, file_meta_bytes, parse_dataset,
                    parse_meta)

if TYPE_CHECKING:
    from .deidentify import Deidentifier, FileResult

#: One read covers the header of nearly every image (a CT slice's is ~1.4 KB); longer headers are
#: read whole up to this bound, beyond it the full lane (which streams) takes the file.
FIRST_READ = 64 << 10
MAX_HEADER = 4 << 20
POPULATE_MAX = 8 << 20
ENCAPSULATED_MAX = 1_000_000
#: rawds refusals that mean "the bytes ran out": after the first read, a reason to read more.
CUT_SHORT = frozenset({"short-header", "short-item", "overrun"})


def supports(deid: Deidentifier) -> bool:
    """Whether the profile lets this lane run at all: pixels are kept as they are (any burned-in
    text policy needs the pixel stage, which works on pydicom Datasets)."""
    return deid.profile.pixels.burned_in == "keep"


def process_file(deid: Deidentifier, path: str | os.PathLike[str], staged: Path, file_id: str,
                 study: Any = None) -> FileResult:
    """De-identify one file to ``staged`` and verify it; a written :class:`FileResult`, or
    NotEligible (the caller then runs the full lane). Every other exception is NotEligible too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's conversion warnings can quote values
            return _process(deid, path, staged, file_id, study)
    except NotEligible:
        staged.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - the full lane decides (and names the reason)
        staged.unlink(missing_ok=True)
        raise NotEligible(type(exc).__name__) from None


def _process(deid: Deidentifier, path: str | os.PathLike[str], staged: Path, file_id: str,
             study: Any) -> FileResult:
    from .deidentify import FileResult

    src = Path(os.fspath(path))
    fh, st = dicomio._open_regular(src)  # noqa: SLF001 - the same safe opener as the full lane
    with fh:
        size = st.st_size
        buf = fh.read(min(size, FIRST_READ))
        meta, ts, start = parse_meta(buf)
        implicit, encapsulated = _syntax(ts)
        try:
            ds, pix, _ = parse_dataset(buf, start, implicit=implicit)
            complete = pix is not None or len(buf) == size
        except NotEligible as exc:
            if len(buf) == size or str(exc) not in CUT_SHORT:
                raise  # a real refusal, not the end of the first read
            complete = False
        if not complete:  # the meta fitted in the first read (parse_meta above), the dataset not
            buf += fh.read(min(size, MAX_HEADER) - len(buf))
            ds, pix, _ = parse_dataset(buf, start, implicit=implicit)
            if pix is None and len(buf) != size:
                raise NotEligible("long-header")
        pixels = _pixel_extent(fh, buf, pix, size, encapsulated, implicit) if pix is not None else None
        ds.file_meta = meta
        phi = phi_verify.harvest(ds)
        if study is not None:
            phi = phi.with_identity_of([study])
        relpath = deid.transform(ds, phi)
        if ds.anomalies:
            raise NotEligible("value-conversion")
        head = _file_head(ds, ts)
        sha = _write(staged, head, fh, buf, pix, pixels)
        now = os.fstat(fh.fileno())
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise NotEligible("changed")  # the full lane reports it (InputFileError "changed")
    if deid.verify and verify_staged(staged, phi, deid.ignore_kinds, deid.year_tags):
        raise NotEligible("verify")  # the full lane re-does the file and reports the findings
    return FileResult(file_id=file_id, outcome="written", staged=str(staged), out_relpath=relpath,
                      preamble_threat=dicomio.preamble_threat(buf[:128]), src_path=os.fspath(path),
                      size=size, sha256=sha)


def _syntax(ts: str) -> tuple[bool, bool]:
    """(implicit VR, encapsulated pixels) for a transfer syntax the lane takes: explicit VR little
    endian (native pixels), implicit VR little endian (native), or a compressed syntax, whose
    dataset is explicit VR little endian. Deflate, big endian, private and unknown syntaxes go to
    the full lane."""
    if ts == EXPLICIT_VR_LE:
        return False, False
    if ts == IMPLICIT_VR_LE:
        return True, False
    uid = UID(ts)
    if (uid.is_transfer_syntax and not uid.is_private and uid.is_encapsulated and not uid.is_deflated
            and uid.is_little_endian and not uid.is_implicit_VR):
        return False, True
    raise NotEligible("transfer-syntax")


def _pixel_header(buf: Any, pix: int, implicit: bool) -> tuple[int, int]:
    """(value offset, length field) of the Pixel Data element header at ``pix``: tag and 4-byte
    length in implicit VR; tag, VR, 2 reserved bytes and 4-byte length in explicit VR."""
    if implicit:
        return pix + 8, int.from_bytes(buf[pix + 4:pix + 8], "little")
    return pix + 12, int.from_bytes(buf[pix + 8:pix + 12], "little")


def _pixel_extent(fh: BinaryIO, buf: bytes, pix: int, size: int, encapsulated: bool,
                  implicit: bool) -> tuple[int, int]:
    """(value offset, end) of the Pixel Data element at ``pix``; it must be the file's last
    element. Native data has a defined even length; encapsulated data is a run of items ended by
    a Sequence Delimitation Item, walked by their headers (8 bytes read per fragment)."""
    if pix + 12 > len(buf):
        raise NotEligible("short-header")
    value, length = _pixel_header(buf, pix, implicit)
    vr = None if implicit else bytes(buf[pix + 4:pix + 6])
    if not encapsulated:
        if vr not in (None, b"OB", b"OW") or length == 0xFFFFFFFF or length & 1 or value + length != size:
            raise NotEligible("pixel-layout")  # odd, undefined, or not the last element
        return value, value + length
    if vr != b"OB" or length != 0xFFFFFFFF:
        raise NotEligible("pixel-layout")
    pos = value
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            raise NotEligible("pixel-layout")
        group, elem, ilen = struct.unpack("<HHI", head)
        if (group, elem) == (0xFFFE, 0xE0DD):
            if ilen != 0 or pos + 8 != size:
                raise NotEligible("pixel-layout")
            if pos - value > ENCAPSULATED_MAX:
                # verify_file reads pixel data up to 2 MB, defers (does not load) larger values
                # and then searches their bytes like any other; the full lane keeps that rule
                raise NotEligible("large-encapsulated")
            return value, pos + 8
        if (group, elem) != (0xFFFE, 0xE000) or ilen == 0xFFFFFFFF or pos + 8 + ilen > size:
            raise NotEligible("pixel-layout")
        pos += 8 + ilen


def _pixel_value_range(mm: Any, pix: int, implicit: bool) -> tuple[int, int]:
    """The Pixel Data value the byte layer treats as samples: the native value, or the items of
    encapsulated data without the final delimiter (what pydicom reads as the value, and so what
    verify.verify_file skips)."""
    value, length = _pixel_header(mm, pix, implicit)
    return value, (value + length if length != 0xFFFFFFFF else len(mm) - 8)


def _file_head(ds: RawDataset, ts: str) -> bytes:
    """Zeroed preamble, a fresh file meta (dicomio.build_file_meta's elements), the dataset
    before Pixel Data."""
    sop_class, sop_instance = ds.get("SOPClassUID"), ds.get("SOPInstanceUID")
    if not (isinstance(sop_class, str) and isinstance(sop_instance, str) and sop_class and sop_instance):
        raise NotEligible("sop-uid")  # missing or multi-valued: the full lane decides
    meta = file_meta_bytes(sop_class, sop_instance, ts, dicomio.IMPLEMENTATION_CLASS_UID,
                           dicomio.IMPLEMENTATION_VERSION_NAME)
    body = encode(ds, ds._charset, below=PIXEL_DATA)  # noqa: SLF001
    return b"\x00" * 128 + b"DICM" + meta + body


def _write(staged: Path, head: bytes, src: BinaryIO, buf: bytes, pix: int | None,
           pixels: tuple[int, int] | None) -> str:
    """Write the head, then the Pixel Data element (header from ``buf``, value ``pixels`` =
    (offset, end) copied from the open source in 1 MiB reads) to ``staged``; the SHA-256 of the
    bytes written."""
    with staging_writer(staged) as raw:
        out = dicomio._HashingWriter(raw)  # noqa: SLF001
        out.write(head)
        if pix is not None and pixels is not None:
            pos, end = pixels
            out.write(bytes(buf[pix:pos]))
            src.seek(pos)
            scratch = _scratch()
            while pos < end:
                n = src.readinto(scratch[:min(len(scratch), end - pos)])
                if not n:
                    raise NotEligible("changed")
                out.write(scratch[:n])
                pos += n
    return out.sha.hexdigest()


_local = threading.local()


def _scratch() -> memoryview:
    """A 1 MiB copy buffer per thread, reused: a fresh 0.5 MB bytes object per file cost its
    page faults every time (~0.1 ms of a CT slice)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(dicomio.COPY_CHUNK))
    return buf


def verify_staged(path: Path, phi: Any, ignore_kinds: frozenset[str], year_tags: frozenset[int]) -> list:
    """verify.verify_file's two layers on the staged file, with the dataset parsed by rawds.

    Returns the findings; NotEligible when the staged file is not something rawds parses
    (the full verifier then decides)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        # A small file is mapped populated (the byte layer reads every page; a fault per page
        # cost more); a large one page by page, so the byte layer can drop what it has scanned
        # and memory stays bounded (verify._ssn_in_samples).
        small = os.fstat(fd).st_size <= POPULATE_MAX
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if small else 0)
        mm = mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    with mm:
        meta, ts, start = parse_meta(mm)
        implicit = _syntax(ts)[0]
        ds, pix, _ = parse_dataset(mm, start, implicit=implicit)
        if len(ds) == 0:
            raise NotEligible("empty")
        ds.file_meta = meta
        spans, dataset_end, samples, trailing = phi_verify._raw_offsets(ds)  # noqa: SLF001
        if dataset_end is not None or samples or trailing:
            raise NotEligible("implausible-element")
        skips: list[tuple[int, int]] = []
        if pix is not None:
            spans.append((pix, phi_verify._tag_label(PIXEL_DATA)))  # noqa: SLF001
            skips.append(_pixel_value_range(mm, pix, implicit))
        findings, year_labels = phi_verify.dataset_layer(ds, phi, ignore_kinds=ignore_kinds, year_tags=year_tags)
        if ds.anomalies or meta.anomalies:
            raise NotEligible("value-conversion")
        findings += phi_verify.bytes_layer(mm, phi, ignore_kinds=ignore_kinds, skips=skips, spans=spans,
                                           dataset_end=None, year_labels=year_labels)
        del ds, meta  # their raw values are copies; nothing may hold the map open
    return phi_verify._dedupe(findings)  # noqa: SLF001
