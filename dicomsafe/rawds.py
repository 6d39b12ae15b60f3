"""A light dataset over the raw bytes of an explicit VR little endian file (the raw lane's codec).

Why it exists: building a pydicom Dataset, converting every value and encoding every value again
is most of the cost of de-identifying a small file (~5 ms of CPU per CT slice where pydicom's own
read + write takes ~1 ms). For the common case — an explicit VR little endian dataset with a
single-byte or UTF-8 character set (dicomsafe.rawlane decides which files) — this module parses the
header bytes
itself into a :class:`RawDataset` that the rules engine, the harvest and the verifier use in place
of a pydicom Dataset:

* values are converted by pydicom's own converter (``convert_value``, as
  ``convert_raw_data_element`` calls it) on first use only, exactly as ``Dataset.__getitem__``
  would, so every value the engine sees is the value pydicom would have given it;
* an element whose value was never changed is written back as its original bytes; a changed or
  new one is encoded byte-for-byte as pydicom's writer would (:func:`encode_text_element` for
  plain strings, ``write_data_element`` itself for the rest).

The parser is strict on purpose: anything it does not fully understand (another encoding, UN or
undefined-length values, odd lengths, a nested character set, pixel data inside sequences,
elements after the pixel data, text values carrying control bytes …) raises :class:`NotEligible`
and the caller hands the file to the full pydicom lane, which knows every case. NotEligible is
never an error the user sees.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

import pydicom.config
import pydicom.uid
from pydicom.charset import convert_encodings, default_encoding
from pydicom.errors import BytesLengthException
from pydicom.hooks import _LUT_DESCRIPTOR_TAGS, _private_vr_for_tag, raw_element_value, raw_element_vr
from pydicom.hooks import hooks as _hooks
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import _AMBIGUOUS_US_SS_TAGS, write_data_element, write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.values import convert_value

from .dicomio import _BAD_TEXT, DEFAULT_LIMITS, PIXEL_DATA_TAG, is_sample_tag

EXPLICIT_VR_LE = str(ExplicitVRLittleEndian)
IMPLICIT_VR_LE = str(ImplicitVRLittleEndian)
PIXEL_DATA = PIXEL_DATA_TAG
CHARSET_TAG = 0x00080005
PIXEL_REPRESENTATION = 0x00280103
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF

_LONG_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UT", "UC", "UR", "SV", "UV"})
_SHORT_VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH",
                        "SL", "SS", "ST", "TM", "UI", "UL", "US"})
_VRS = {vr.encode("ascii"): vr for vr in _LONG_VRS | _SHORT_VRS}
_WIDTH = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "UV": 8, "SV": 8,
          "OW": 2, "OF": 4, "OD": 8, "OL": 4, "OV": 8}
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
                       "UI", "UR", "UT"})
#: Character sets whose values decode one way only, the same in every reader.
PLAIN_CHARSETS = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"})
#: The control bytes dicomio._check_text refuses in text, as bytes: for these single-byte and
#: UTF-8 sets a byte below 0x20 decodes to the same code point (UTF-8 multi-byte sequences have
#: no byte below 0x80), so checking the raw bytes is checking the decoded text.
_BAD_BYTES = bytes(b for b in range(0x20) if _BAD_TEXT.match(chr(b)))
#: The full lane's read limits: at or beyond them it quarantines, so the raw lane declines.
MAX_ITEMS = DEFAULT_LIMITS.max_items
MAX_DEPTH = DEFAULT_LIMITS.max_depth
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG_VR = struct.Struct("<HH2s")


class NotEligible(Exception):
    """The file needs the full pydicom lane. Carries a short PHI-free reason (for tests, debug)."""


class SeqElement:
    """A sequence: ``value`` is a list of item datasets (RawDataset or, for new items, pydicom's)."""

    __slots__ = ("tag", "value", "value_tell")
    VR = "SQ"
    VM = 1
    is_raw = False

    def __init__(self, tag: int, items: list[Any], value_tell: int | None = None):
        self.tag = Tag(tag)
        self.value = list(items)
        self.value_tell = value_tell  # where the value starts in the parsed bytes (verify labels)

    @property
    def keyword(self) -> str:
        return keyword_for_tag(self.tag)

    @property
    def is_private(self) -> bool:
        return bool(self.tag.group & 1)


class RawDataset:
    """The part of pydicom's Dataset interface the engine, harvest and verifier use, over raw
    elements: ``keys``, ``in``, ``ds[tag]`` (converts on first use), ``get_item``, ``get``,
    ``del``, keyword assignment, ``file_meta``. Values keep pydicom's types and semantics."""

    __slots__ = ("_dict", "_orig", "_buf", "_spans", "_charset", "_anomalies", "_implicit", "file_meta")
    is_little_endian = True  # what rawds parses and writes: little endian only

    def __init__(self, buf: bytes, charset: list[str], anomalies: list[str] | None = None,
                 implicit: bool = False):
        # One list per parse, shared by every item: a value pydicom could not convert anywhere
        # in the tree is noted there, because callers such as the verifier catch conversion
        # errors and carry on (on the raw bytes); the raw lane then defers to the full lane.
        object.__setattr__(self, "_anomalies", [] if anomalies is None else anomalies)
        object.__setattr__(self, "_implicit", implicit)
        object.__setattr__(self, "_dict", {})
        object.__setattr__(self, "_orig", {})  # tag -> (converted element, its value at conversion)
        object.__setattr__(self, "_buf", buf)
        object.__setattr__(self, "_spans", {})  # tag -> (start, end) of the element's bytes in buf
        object.__setattr__(self, "_charset", charset)
        object.__setattr__(self, "file_meta", None)

    # -- mapping ---------------------------------------------------------------------------
    def keys(self):
        return self._dict.keys()

    def __len__(self) -> int:
        return len(self._dict)

    def __iter__(self) -> Iterator[Any]:
        return (self[t] for t in sorted(self._dict))

    def __contains__(self, key: Any) -> bool:
        tag = tag_for_keyword(key) if isinstance(key, str) else key
        return tag is not None and int(tag) in self._dict

    def get_item(self, tag: int, *, keep_deferred: bool = False) -> Any:
        return self._dict[int(tag)]

    def __getitem__(self, tag: int) -> Any:
        tag = int(tag)
        raw = elem = self._dict[tag]
        if isinstance(raw, RawDataElement):
            charset = self._charset if tag != CHARSET_TAG else default_encoding
            try:
                elem = _convert(raw, charset)
            except Exception:
                self._anomalies.append("value-conversion")
                raise
            if elem.VR != raw.VR:
                self._anomalies.append("value-conversion")
                raise NotEligible("value-conversion")  # pydicom fell back to UN: full lane
            self._dict[tag] = elem
            self._orig[tag] = (elem, _frozen(elem.value))
        return elem

    def __delitem__(self, tag: int) -> None:
        del self._dict[int(tag)]

    def get(self, key: Any, default: Any = None) -> Any:
        """As pydicom: a keyword gives the value, a tag gives the element."""
        if isinstance(key, str):
            tag = tag_for_keyword(key)
            if tag is None or tag not in self._dict:
                return default
            return self[tag].value
        tag = int(key)
        return self[tag] if tag in self._dict else default

    def __getattr__(self, name: str) -> Any:
        tag = tag_for_keyword(name) if name[:1].isupper() else None
        if tag is None or tag not in self._dict:
            raise AttributeError(name)
        return self[tag].value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in RawDataset.__slots__:
            object.__setattr__(self, name, value)
            return
        tag = tag_for_keyword(name)
        if tag is None:
            raise AttributeError(name)
        vr = dictionary_VR(tag)
        if vr == "SQ":
            self._dict[tag] = SeqElement(tag, list(value))
        else:
            self._dict[tag] = DataElement(tag, vr, value)

    @property
    def is_implicit_VR(self) -> bool:
        return self._implicit

    @property
    def anomalies(self) -> list[str]:
        """Values of this parse (any depth) that pydicom could not convert as parsed."""
        return self._anomalies

    # -- writing ---------------------------------------------------------------------------
    def unchanged_bytes(self, tag: int) -> bytes | None:
        """The element's original bytes when it is still exactly as read, else None."""
        elem = self._dict[tag]
        span = self._spans.get(tag)
        if span is None:
            return None
        if isinstance(elem, RawDataElement):
            return self._buf[span[0]:span[1]]
        orig = self._orig.get(tag)
        # compared by value, not identity: a value list changed in place must not keep old bytes
        if orig is not None and orig[0] is elem and _frozen(elem.value) == orig[1]:
            return self._buf[span[0]:span[1]]
        return None


def _frozen(value: Any) -> Any:
    """A snapshot of a converted value that later changes, in place or not, cannot alter."""
    if isinstance(value, (list, MultiValue)):
        return (type(value), tuple((type(v), v) for v in value))
    return (type(value), value)


def _convert(raw: RawDataElement, charset: list[str]) -> DataElement:
    """``convert_raw_data_element`` without its hook dispatch, when the hooks are pydicom's own.

    The parser has already given the element the VR pydicom's default hooks would (explicit: the
    one in the file; implicit: see :func:`_implicit_vr`), and those hooks then call
    ``convert_value``; this does the same directly (a third of the cost). LUT descriptors (whose first value pydicom
    corrects), a non-default hook or callback, and a wrong-length value (pydicom's fallback to
    UN) go through pydicom's own function."""
    if raw.tag in _LUT_TAGS or not _default_hooks():
        return convert_raw_data_element(raw, encoding=charset)
    try:
        value = convert_value(raw.VR, raw, charset)
    except BytesLengthException:
        return convert_raw_data_element(raw, encoding=charset)
    return DataElement(raw.tag, raw.VR, value, raw.value_tell, False, already_converted=True)


_LUT_TAGS = frozenset(_LUT_DESCRIPTOR_TAGS)  # a set: BaseTag == int is a Python-level call per item


def _default_hooks() -> bool:
    return (pydicom.config.data_element_callback is None and not _hooks.raw_element_kwargs
            and _hooks.raw_element_vr is raw_element_vr and _hooks.raw_element_value is raw_element_value)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def parse_meta(buf: bytes) -> tuple[RawDataset, str, int]:
    """The file meta (group 0002) after the preamble: (meta, transfer syntax, dataset start)."""
    if len(buf) < 144 or buf[128:132] != b"DICM":
        raise NotEligible("no-preamble")
    meta = RawDataset(buf, [default_encoding])
    pos = 132
    n = len(buf)
    while pos + 8 <= n:
        group = _U16.unpack_from(buf, pos)[0]
        if group != 0x0002:
            break
        pos = _element(buf, pos, n, meta, 0)
    ts_elem = meta.get_item(0x00020010) if 0x00020010 in meta._dict else None
    if ts_elem is None:
        raise NotEligible("no-transfer-syntax")
    ts = bytes(ts_elem.value).rstrip(b"\x00 ").decode("ascii", "replace")
    return meta, ts, pos


def parse_dataset(buf: bytes, start: int, *, limit: int | None = None, implicit: bool = False
                  ) -> tuple[RawDataset, int | None, list[tuple[int, int]]]:
    """The top-level dataset from ``start`` (explicit VR unless ``implicit``): (dataset, offset of
    the Pixel Data element or None, [(start, tag)] of every top-level element). Stops at Pixel
    Data, which must be last."""
    n = len(buf) if limit is None else limit
    if implicit and start + 6 <= n and bytes(buf[start + 4:start + 6]) in _VRS:
        raise NotEligible("encoding")  # the meta says implicit, the body looks explicit
    charset = _charset_of(buf, start, n, implicit)
    ds = RawDataset(buf, charset, implicit=implicit)
    tops: list[tuple[int, int]] = []
    pos = start
    prev = -1
    while pos < n:
        if pos + 8 > n:
            raise NotEligible("short-header")
        tag = (_U16.unpack_from(buf, pos)[0] << 16) | _U16.unpack_from(buf, pos + 2)[0]
        if tag <= prev:
            raise NotEligible("tag-order")
        prev = tag
        tops.append((pos, tag))
        if tag >> 16 in (0x0000, 0x0002):
            raise NotEligible("meta-in-dataset")
        if tag == PIXEL_DATA:
            return ds, pos, tops
        pos = _element(buf, pos, n, ds, 0)
    return ds, None, tops


def _charset_of(buf: bytes, start: int, n: int, implicit: bool = False) -> list[str]:
    """The dataset's character set, found by a quick look for (0008,0005) near the start."""
    pos = start
    while pos + 8 <= n:
        group, elem, vrb = _TAG_VR.unpack_from(buf, pos)
        tag = (group << 16) | elem
        if tag > CHARSET_TAG:
            break
        if implicit:
            length, hdr = _U32.unpack_from(buf, pos + 4)[0], 8
        else:
            vr = _VRS.get(vrb)
            if vr is None:
                raise NotEligible("vr")
            if vr in _LONG_VRS:
                length, hdr = _U32.unpack_from(buf, pos + 8)[0], 12
            else:
                length, hdr = _U16.unpack_from(buf, pos + 6)[0], 8
        if length == _UNDEFINED:
            raise NotEligible("undefined-length")
        if tag == CHARSET_TAG:
            value = bytes(buf[pos + hdr:pos + hdr + length]).strip(b" \x00")
            if value not in PLAIN_CHARSETS:
                raise NotEligible("charset")
            return convert_encodings([value.decode("ascii")]) if value else [default_encoding]
        pos += hdr + length
    return [default_encoding]


def _element(buf: bytes, pos: int, end: int, ds: RawDataset, depth: int) -> int:
    """Parse one element at ``pos`` into ``ds``; return the offset after it."""
    group, elem, vrb = _TAG_VR.unpack_from(buf, pos)
    tag = (group << 16) | elem
    if ds._implicit:
        vr = _implicit_vr(tag, ds, depth)
        length, hdr = _U32.unpack_from(buf, pos + 4)[0], 8
    else:
        vr = _VRS.get(vrb)
        if vr is None:
            raise NotEligible("vr")  # UN, a bad VR, or an item/delimiter where an element belongs
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise NotEligible("short-header")
            length, hdr = _U32.unpack_from(buf, pos + 8)[0], 12
        else:
            length, hdr = _U16.unpack_from(buf, pos + 6)[0], 8
    vpos = pos + hdr
    if is_sample_tag(tag):  # the top-level Pixel Data is never parsed here (parse_dataset stops)
        raise NotEligible("nested-samples")
    if vr == "SQ":
        if depth >= MAX_DEPTH:
            raise NotEligible("deep")
        items, stop = _sequence(buf, vpos, length, end, ds._charset, depth + 1, ds._anomalies, ds._implicit)
        ds._dict[tag] = SeqElement(tag, items, vpos)
        ds._spans[tag] = (pos, stop)
        return stop
    if length == _UNDEFINED:
        raise NotEligible("undefined-length")
    stop = vpos + length
    if stop > end:
        raise NotEligible("overrun")
    if length & 1:
        raise NotEligible("odd-length")
    width = _WIDTH.get(vr)
    if width and length % width:
        raise NotEligible("numeric-length")
    value = buf[vpos:stop]
    if vr in _TEXT_VRS and value and _has_bad_text(value):
        raise NotEligible("text-bytes")  # the full lane quarantines it (malformed-text)
    if depth and tag == CHARSET_TAG:
        raise NotEligible("nested-charset")
    ds._dict[tag] = RawDataElement(BaseTag(tag), vr, length, value, vpos, ds._implicit, True)
    ds._spans[tag] = (pos, stop)
    return stop


def _implicit_vr(tag: int, ds: RawDataset, depth: int) -> str:
    """The VR pydicom gives an implicit VR element (hooks.raw_element_vr): the dictionary's;
    for a private tag its creator's private dictionary entry (or LO for a creator, UN when
    unknown); UL for an unknown group length; UN for another unknown tag.

    An ambiguous dictionary VR is resolved only where pydicom's rule is simple: a top-level
    "US or SS" attribute (PixelPaddingValue, SmallestImagePixelValue …) after a top-level
    PixelRepresentation of 0 (US) or 1 (SS), as correct_ambiguous_vr_element decides. LUT
    descriptors (whose first value pydicom also adjusts), nested ones and every other ambiguous
    VR are refused."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        if tag >> 16 & 1:
            vr = _private_vr_for_tag(ds, BaseTag(tag))
        elif tag & 0xFFFF == 0:
            vr = "UL"
        else:
            vr = "UN"
    if vr == "US or SS" and depth == 0 and tag in _AMBIGUOUS_US_SS_TAGS and tag not in _LUT_TAGS:
        rep = ds._dict.get(PIXEL_REPRESENTATION)
        if rep is not None:
            value = ds[PIXEL_REPRESENTATION].value
            if value in (0, 1) and type(value) is int:
                return "US" if value == 0 else "SS"
    if vr != "UN" and vr.encode("ascii") not in _VRS:
        raise NotEligible("ambiguous-vr")
    return str(vr)


def _has_bad_text(value: bytes) -> bool:
    """dicomio._check_text on raw bytes: a control byte before the trailing NUL/space padding."""
    body = value.rstrip(b"\x00 ")
    return len(body.translate(None, _BAD_BYTES)) != len(body)


def _sequence(buf: bytes, pos: int, length: int, end: int, charset: list[str], depth: int,
              anomalies: list[str], implicit: bool) -> tuple[list[RawDataset], int]:
    """Items of a sequence value at ``pos``; returns (items, offset after the sequence)."""
    limit = end if length == _UNDEFINED else pos + length
    if limit > end:
        raise NotEligible("overrun")
    items: list[RawDataset] = []
    while True:
        if pos == limit and length != _UNDEFINED:
            return items, pos
        if pos + 8 > limit:
            raise NotEligible("short-item")
        tag = (_U16.unpack_from(buf, pos)[0] << 16) | _U16.unpack_from(buf, pos + 2)[0]
        ilen = _U32.unpack_from(buf, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END and length == _UNDEFINED:
            return items, pos
        if tag != _ITEM or len(items) >= MAX_ITEMS:
            raise NotEligible("item")
        item = RawDataset(buf, charset, anomalies, implicit)
        istop = limit if ilen == _UNDEFINED else pos + ilen
        if istop > limit:
            raise NotEligible("overrun")
        prev = -1
        while True:
            if ilen != _UNDEFINED and pos == istop:
                break
            if pos + 8 > istop:
                raise NotEligible("short-item")
            t = (_U16.unpack_from(buf, pos)[0] << 16) | _U16.unpack_from(buf, pos + 2)[0]
            if t == _ITEM_END and ilen == _UNDEFINED:
                pos += 8
                break
            if t <= prev:
                raise NotEligible("tag-order")
            prev = t
            pos = _element(buf, pos, istop, item, depth)
        items.append(item)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

_ITEM_HEAD = struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED)
_ITEM_TAIL = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQ_TAIL = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def encode(ds: Any, charset: list[str], *, below: int | None = None, implicit: bool | None = None) -> bytes:
    """Encode ``ds`` (a RawDataset, or a pydicom Dataset for new items) in little endian, explicit
    VR unless ``implicit`` (default: as the RawDataset was parsed), elements sorted by tag, group
    lengths left out (they are optional and the engine drops them); ``below`` stops before that
    tag (the streamed Pixel Data)."""
    if implicit is None:
        implicit = ds._implicit if isinstance(ds, RawDataset) else False
    if not isinstance(ds, RawDataset):
        return _encode_new_item(ds, charset, implicit)
    out: list[bytes] = []
    for tag in sorted(ds._dict):
        if below is not None and tag >= below:
            break
        elem = ds._dict[tag]
        if isinstance(elem, SeqElement):
            if implicit:
                out.append(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, _UNDEFINED))
            else:
                out.append(struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, _UNDEFINED))
            for item in elem.value or ():
                out.append(_ITEM_HEAD)
                out.append(encode(item, charset, implicit=implicit))
                out.append(_ITEM_TAIL)
            out.append(_SEQ_TAIL)
            continue
        same = ds.unchanged_bytes(tag)
        if same is not None:
            out.append(same)
            continue
        fast = encode_text_element(elem, charset, implicit=implicit)
        if fast is not None:
            out.append(fast)
            continue
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_data_element(fp, elem, charset)
        out.append(fp.getvalue())
    return b"".join(out)


_ITEM_CACHE: dict[tuple, bytes] = {}


def _encode_new_item(item: Any, charset: list[str], implicit: bool = False) -> bytes:
    """A new pydicom item (the marks' CID 7050 code items), encoded by pydicom's write_dataset.
    Items whose elements all hold plain strings are remembered by their (tag, VR, value)s: the
    same three code items go into every output of a run."""
    key = None
    if all(type(e.value) is str for e in item):
        key = (implicit, tuple(charset), tuple((int(e.tag), e.VR, e.value) for e in item))
        got = _ITEM_CACHE.get(key)
        if got is not None:
            return got
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, item, parent_encoding=charset)
    data = fp.getvalue()
    if key is not None and len(_ITEM_CACHE) < 256:
        _ITEM_CACHE[key] = data
    return data


#: VRs pydicom writes with write_string (ASCII, the default encoding whatever the character set)
#: and those it writes with write_text (the dataset's character set); DA/DT/TM given as strings
#: go through write_string too. PN (component groups) and numbers are left to pydicom.
_STRING_WRITTEN = frozenset({"AE", "AS", "CS", "UI", "UR", "DA", "DT", "TM"})
_TEXT_WRITTEN = frozenset({"LO", "SH", "LT", "ST", "UT", "UC"})
_PLAIN_CODECS = frozenset({"iso8859", "latin_1", "UTF8"})


def encode_text_element(elem: Any, charset: list[str], *, implicit: bool = False) -> bytes | None:
    """The bytes pydicom's ``write_data_element`` writes for a string-valued element, or None
    when the case is not the plain one (then pydicom encodes it). Byte-for-byte equal to
    pydicom's output (tests/test_rawlane.py compares them); four times faster."""
    vr = elem.VR
    value = elem.value
    if vr in _STRING_WRITTEN:
        codec = default_encoding
    elif vr in _TEXT_WRITTEN and len(charset) == 1 and charset[0] in _PLAIN_CODECS:
        codec = charset[0]
    else:
        return None
    if value is None or value == "":
        data = b""
    elif type(value) is str or type(value) is pydicom.uid.UID:
        data = _encode_str(value, codec)
    elif isinstance(value, (list, MultiValue)) and all(type(v) in (str, pydicom.uid.UID) for v in value):
        if not value:
            data = b""
        elif vr in _STRING_WRITTEN:
            data = _encode_str("\\".join(value), codec)
        else:
            parts = [_encode_str(v, codec) for v in value]
            data = None if any(p is None for p in parts) else b"\\".join(parts)  # type: ignore[arg-type]
    else:
        return None
    if data is None:
        return None
    if len(data) & 1:
        data += b"\0" if vr == "UI" else b" "
    tag = int(elem.tag)
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data)) + data
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(data)) + data
    if len(data) > 0xFFFF:
        return None  # pydicom turns it into UN
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


def _encode_str(value: str, codec: str) -> bytes | None:
    try:
        return value.encode(codec)
    except UnicodeError:
        return None  # pydicom's fallbacks and replacements apply: let it encode


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str,
                    implementation_uid: str, implementation_name: str) -> bytes:
    """The file meta group pydicom's ``write_file_meta_info(enforce_standard=True)`` writes for
    dicomio.build_file_meta's six elements (tests compare the bytes)."""
    def ui(tag: int, value: str) -> bytes:
        data = value.encode(default_encoding)
        data += b"\0" * (len(data) & 1)
        return struct.pack("<HH2sH", 0x0002, tag, b"UI", len(data)) + data

    name = implementation_name.encode(default_encoding)
    name += b" " * (len(name) & 1)
    body = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
        ui(0x0002, sop_class), ui(0x0003, sop_instance), ui(0x0010, transfer_syntax),
        ui(0x0012, implementation_uid),
        struct.pack("<HH2sH", 0x0002, 0x0013, b"SH", len(name)) + name,
    ))
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body
