"""Seeded hostile mutants of realistic, PHI-bearing DICOM files (issue 9's fuzz corpus).

Why: archives hold truncated transfers, broken length fields, polyglots and worse. A reader that
only ever saw clean files will crash, hang, allocate gigabytes, or — worst — write out PHI that a
corrupted length smuggled into a neighbouring element. These mutants are aimed at the structure
of the file (preamble, meta, element headers, values, sequence items, pixel data) rather than at
random bytes, so every code path of a reader is exercised with few files.

``build_mutants(src_files, dst, n, seed)`` is deterministic: same inputs and seed, same bytes.
Each output is named ``m<NNNN>_<kind>.dcm``; :func:`mutant_kind` recovers the kind.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pydicom.datadict import dictionary_VR

__all__ = ["MUTATION_KINDS", "Element", "Layout", "build_mutants", "mutant_kind", "parse_layout"]

UNDEFINED = 0xFFFFFFFF
HUGE = 0xFFFFFFF0
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
#: Attributes whose value is planted PHI in the corpus: the "neighbour" a corrupted length swallows.
PHI_TAGS = {0x00100010, 0x00100020, 0x00100030, 0x00101040, 0x00102154, 0x00080050, 0x00080090,
            0x00080080, 0x00081030, 0x00204000, 0x00081040}
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
#: Big endian and deflated data sets: not parsed (their mutants come from other sources).
NOT_MODELLED = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}


@dataclass(frozen=True)
class Element:
    """Where one element (or item / delimiter) sits in the file."""

    offset: int  # first byte of the tag
    tag: int
    vr: str | None  # None for items and delimiters
    header: int  # bytes before the value
    length: int  # the length field as written
    depth: int  # 0 = top-level data set (or meta)
    length_size: int  # 2 or 4 bytes
    in_meta: bool = False

    @property
    def value_offset(self) -> int:
        return self.offset + self.header

    @property
    def length_offset(self) -> int:
        return self.offset + self.header - self.length_size


@dataclass
class Layout:
    """The parsed structure of a Part 10 little-endian file."""

    data: bytes
    explicit: bool
    meta_end: int  # first byte of the data set
    elements: list[Element]

    def top(self) -> list[Element]:
        return [e for e in self.elements if e.depth == 0 and not e.in_meta]

    def meta(self) -> list[Element]:
        return [e for e in self.elements if e.in_meta]

    def pixel(self) -> Element | None:
        return next((e for e in self.top() if e.tag == PIXEL_DATA), None)


class _Bad(ValueError):
    """The file is not a structure this parser models (big endian, deflate, no meta)."""


def _u16(b: bytes, o: int) -> int:
    return struct.unpack_from("<H", b, o)[0]


def _u32(b: bytes, o: int) -> int:
    return struct.unpack_from("<I", b, o)[0]


def _walk(data: bytes, pos: int, end: int, explicit: bool, depth: int, out: list[Element],
          until_delim: bool = False, fragments: bool = False) -> int:
    while pos + 8 <= end:
        group, elem = _u16(data, pos), _u16(data, pos + 2)
        tag = (group << 16) | elem
        if group == 0xFFFE:
            length = _u32(data, pos + 4)
            out.append(Element(pos, tag, None, 8, length, depth, 4))
            pos += 8
            if tag == ITEM:
                if fragments or length != UNDEFINED:
                    if length == UNDEFINED:
                        raise _Bad("undefined-length fragment")
                    if not fragments:
                        _walk(data, pos, min(pos + length, end), explicit, depth + 1, out)
                    pos += length
                else:
                    pos = _walk(data, pos, end, explicit, depth + 1, out, until_delim=True)
                continue
            if until_delim:
                return pos
            continue
        if explicit:
            vr_b = data[pos + 4:pos + 6]
            if not (vr_b.isalpha() and vr_b.isupper()):
                raise _Bad("bad VR")
            if vr_b in LONG_VRS:
                length, header, lsize = _u32(data, pos + 8), 12, 4
            else:
                length, header, lsize = _u16(data, pos + 6), 8, 2
            vr = vr_b.decode()
        else:
            length, header, lsize = _u32(data, pos + 4), 8, 4
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        out.append(Element(pos, tag, vr, header, length, depth, lsize))
        vpos = pos + header
        if length == UNDEFINED:
            pos = _walk(data, vpos, end, explicit, depth + 1, out, until_delim=True,
                        fragments=(tag == PIXEL_DATA))
        elif vr == "SQ":
            _walk(data, vpos, min(vpos + length, end), explicit, depth + 1, out)
            pos = vpos + length
        else:
            pos = vpos + length
    return pos


def parse_layout(data: bytes) -> Layout:
    """Parse preamble, meta and data set of an explicit/implicit VR little-endian Part 10 file."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _Bad("no Part 10 header")
    meta: list[Element] = []
    pos = 132
    ts = None
    while pos + 8 <= len(data) and _u16(data, pos) == 0x0002:
        vr_b = data[pos + 4:pos + 6]
        if vr_b in LONG_VRS:
            length, header, lsize = _u32(data, pos + 8), 12, 4
        else:
            length, header, lsize = _u16(data, pos + 6), 8, 2
        tag = (_u16(data, pos) << 16) | _u16(data, pos + 2)
        meta.append(Element(pos, tag, vr_b.decode("latin-1"), header, length, 0, lsize, in_meta=True))
        if tag == 0x00020010:
            ts = data[pos + header:pos + header + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos += header + length
    if ts is None or ts in NOT_MODELLED:
        raise _Bad("transfer syntax not modelled")
    explicit = ts != IMPLICIT_LE  # encapsulated syntaxes are explicit VR little endian too
    elements = list(meta)
    _walk(data, pos, len(data), explicit, 0, elements)
    return Layout(data, explicit, pos, elements)


# ---------------------------------------------------------------------------------------------
# Mutations: each takes (layout, rng) and returns new bytes, or None if it does not apply.
# ---------------------------------------------------------------------------------------------

Mutation = Callable[[Layout, random.Random], "bytes | None"]


def _flip(data: bytes, lo: int, hi: int, rng: random.Random, count: int) -> bytes | None:
    if hi <= lo:
        return None
    b = bytearray(data)
    for _ in range(count):
        i = rng.randrange(lo, hi)
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _set_length(data: bytes, el: Element, value: int) -> bytes:
    b = bytearray(data)
    if el.length_size == 2:
        struct.pack_into("<H", b, el.length_offset, value & 0xFFFF)
    else:
        struct.pack_into("<I", b, el.length_offset, value)
    return bytes(b)


def _header_end(lay: Layout) -> int:
    px = lay.pixel()
    return px.value_offset if px else len(lay.data)


def m_bitflip_header(lay: Layout, rng: random.Random) -> bytes | None:
    return _flip(lay.data, lay.meta_end, _header_end(lay), rng, rng.randint(1, 8))


def m_bitflip_meta(lay: Layout, rng: random.Random) -> bytes | None:
    return _flip(lay.data, 128, lay.meta_end, rng, rng.randint(1, 4))


def m_bitflip_element_header(lay: Layout, rng: random.Random) -> bytes | None:
    els = [e for e in lay.elements if not e.in_meta]
    el = rng.choice(els)
    return _flip(lay.data, el.offset, el.value_offset, rng, 1)


def m_truncate_preamble(lay: Layout, rng: random.Random) -> bytes | None:
    return lay.data[: rng.randrange(1, 128)]


def m_truncate_meta(lay: Layout, rng: random.Random) -> bytes | None:
    return lay.data[: rng.randrange(129, lay.meta_end)]


def m_truncate_element_header(lay: Layout, rng: random.Random) -> bytes | None:
    el = rng.choice([e for e in lay.elements if not e.in_meta])
    return lay.data[: rng.randrange(el.offset + 1, el.value_offset)]


def m_truncate_value(lay: Layout, rng: random.Random) -> bytes | None:
    els = [e for e in lay.elements if not e.in_meta and e.vr in TEXT_VRS and 2 <= e.length < UNDEFINED]
    if not els:
        return None
    el = rng.choice(els)
    return lay.data[: el.value_offset + rng.randrange(1, el.length)]


def m_truncate_item(lay: Layout, rng: random.Random) -> bytes | None:
    items = [e for e in lay.elements if e.tag == ITEM and e.depth > 0 or (e.tag == ITEM and e.vr is None)]
    items = [e for e in items if not _in_pixels(lay, e)]
    if not items:
        return None
    el = rng.choice(items)
    span = el.length if el.length not in (UNDEFINED, 0) else 16
    return lay.data[: min(len(lay.data) - 1, el.value_offset + rng.randrange(1, max(2, span)))]


def _in_pixels(lay: Layout, el: Element) -> bool:
    px = lay.pixel()
    return bool(px and el.offset >= px.offset)


def m_truncate_pixels(lay: Layout, rng: random.Random) -> bytes | None:
    px = lay.pixel()
    if not px or len(lay.data) - px.value_offset < 4:
        return None
    return lay.data[: rng.randrange(px.value_offset + 1, len(lay.data) - 1)]


def m_huge_length_text(lay: Layout, rng: random.Random) -> bytes | None:
    els = [e for e in lay.top() if e.vr in TEXT_VRS]
    if not els:
        return None
    el = rng.choice(els)
    return _set_length(lay.data, el, HUGE if el.length_size == 4 else 0xFFF0)


def m_huge_length_sequence(lay: Layout, rng: random.Random) -> bytes | None:
    els = [e for e in lay.elements if (e.vr == "SQ" or e.tag == ITEM) and not _in_pixels(lay, e)]
    if not els:
        return None
    return _set_length(lay.data, rng.choice(els), HUGE)


def m_huge_length_pixels(lay: Layout, rng: random.Random) -> bytes | None:
    px = lay.pixel()
    if not px or px.length == UNDEFINED:
        return None
    return _set_length(lay.data, px, HUGE)


def m_undefined_length_text(lay: Layout, rng: random.Random) -> bytes | None:
    els = [e for e in lay.top() if e.vr in TEXT_VRS and e.length_size == 4]
    if not els:
        return None
    return _set_length(lay.data, rng.choice(els), UNDEFINED)


def m_swallow_neighbour(lay: Layout, rng: random.Random) -> bytes | None:
    """Grow an element's length so its value swallows the next (PHI-bearing) element whole.

    The neighbour's header and value become part of this element's value: a reader that
    believes the lengths sees one odd value and no neighbour — the PHI is now hiding inside it.
    """
    top = lay.top()
    pairs = [(a, b) for a, b in zip(top, top[1:]) if b.tag in PHI_TAGS and a.vr not in ("SQ", None)
             and a.length != UNDEFINED and b.length != UNDEFINED]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    new = a.length + b.header + b.length
    if a.length_size == 2 and new > 0xFFFF:
        return None
    return _set_length(lay.data, a, new)


def m_shrink_length(lay: Layout, rng: random.Random) -> bytes | None:
    """Off-by-some length: the reader resynchronises inside a value (odd lengths too)."""
    els = [e for e in lay.top() if e.vr in TEXT_VRS and e.length >= 4 and e.length != UNDEFINED]
    if not els:
        return None
    el = rng.choice(els)
    return _set_length(lay.data, el, el.length - rng.choice([1, 2, 3]))


def m_append_garbage(lay: Layout, rng: random.Random) -> bytes | None:
    tail = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
    if rng.random() < 0.5:
        # trailing bytes that look like an element carrying PHI copied from the header
        head = lay.data[lay.meta_end:_header_end(lay)]
        tail += head[: rng.randint(8, min(400, max(9, len(head))))]
    return lay.data + tail


_SIGNATURES = {
    "mz": b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00\xb8" + b"\x00" * 7 + b"@",
    "elf": b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00",
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
    "script": b"#!/bin/sh\nexec /bin/true # ",
    "macho": b"\xcf\xfa\xed\xfe\x07\x00\x00\x01",
}


def _polyglot(kind: str) -> Mutation:
    def mutate(lay: Layout, rng: random.Random) -> bytes | None:
        pre = _SIGNATURES[kind] + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
        return pre[:128].ljust(128, b"\0") + lay.data[128:]

    mutate.__name__ = f"m_polyglot_{kind}"
    return mutate


def m_deep_nesting(lay: Layout, rng: random.Random) -> bytes | None:
    """Insert a ContentSequence nested hundreds or thousands of levels deep, PHI at the bottom."""
    depth = rng.choice([64, 300, 2000])
    top = lay.top()
    name = next((lay.data[e.value_offset:e.value_offset + e.length] for e in top if e.tag == 0x00100010), b"X^Y")
    if lay.explicit:
        sq = b"\x40\x00\x30\xa7SQ\x00\x00" + struct.pack("<I", UNDEFINED)
        inner = b"\x40\x00\x60\xa1UT\x00\x00" + struct.pack("<I", len(name) + (len(name) & 1)) + name + b" " * (len(name) & 1)
    else:
        sq = b"\x40\x00\x30\xa7" + struct.pack("<I", UNDEFINED)
        inner = b"\x40\x00\x60\xa1" + struct.pack("<I", len(name) + (len(name) & 1)) + name + b" " * (len(name) & 1)
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", UNDEFINED)
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    blob = (sq + item) * depth + inner + (item_end + seq_end) * depth
    at = next((e.offset for e in top if e.tag > 0x0040A730), len(lay.data))
    # drop an existing top-level ContentSequence so the tag is not duplicated
    existing = next((e for e in top if e.tag == 0x0040A730), None)
    if existing is not None:
        return None
    return lay.data[:at] + blob + lay.data[at:]


_ODD_VRS = [b"ZZ", b"\x00\x00", b"US", b"AT", b"FD", b"OB", b"SQ", b"UN", b"xx"]


def m_odd_vr(lay: Layout, rng: random.Random) -> bytes | None:
    if not lay.explicit:
        return None
    els = [e for e in lay.top() if e.vr in TEXT_VRS and e.length_size == 2]
    if not els:
        return None
    el = rng.choice(els)
    b = bytearray(lay.data)
    b[el.offset + 4:el.offset + 6] = rng.choice(_ODD_VRS)
    return bytes(b)


def m_ts_mismatch(lay: Layout, rng: random.Random) -> bytes | None:
    """Declare a transfer syntax the data set is not encoded in (same UID length)."""
    ts = next((e for e in lay.meta() if e.tag == 0x00020010), None)
    if ts is None:
        return None
    old = lay.data[ts.value_offset:ts.value_offset + ts.length]
    choices = {b"1.2.840.10008.1.2.1\0": [b"1.2.840.10008.1.2.2\0", b"1.2.840.10008.1.2.5\0", b"1.2.840.10008.1.2\0\0\0"],
               b"1.2.840.10008.1.2\0": [b"1.2.840.10008.1.2.5"[:18], b"1.2.840.10008.1.99"]}
    new = rng.choice(choices.get(old, [b"9" * len(old)]))[: len(old)].ljust(len(old), b"\0")
    return lay.data[:ts.value_offset] + new + lay.data[ts.value_offset + ts.length:]


def m_unsorted_duplicate(lay: Layout, rng: random.Random) -> bytes | None:
    """Swap two adjacent top-level elements, or duplicate one (both illegal, both seen in the wild)."""
    top = [e for e in lay.top() if e.tag != PIXEL_DATA and e.length != UNDEFINED and e.vr != "SQ"]
    if len(top) < 3:
        return None
    i = rng.randrange(len(top) - 1)
    a, b = top[i], top[i + 1]
    if b.offset != a.value_offset + a.length:
        return None
    a_bytes = lay.data[a.offset:b.offset]
    b_bytes = lay.data[b.offset:b.value_offset + b.length]
    end = b.value_offset + b.length
    if rng.random() < 0.5:
        return lay.data[:a.offset] + b_bytes + a_bytes + lay.data[end:]
    return lay.data[:end] + b_bytes + lay.data[end:]


def m_bitflip_anywhere(lay: Layout, rng: random.Random) -> bytes | None:
    return _flip(lay.data, 0, len(lay.data), rng, rng.randint(1, 32))


def m_zero_fill_tail(lay: Layout, rng: random.Random) -> bytes | None:
    """A transfer that stopped and was padded with zeros (common on failed copies)."""
    cut = rng.randrange(lay.meta_end, len(lay.data))
    return lay.data[:cut] + bytes(len(lay.data) - cut)


MUTATIONS: dict[str, Mutation] = {
    "bitflip-header": m_bitflip_header,
    "bitflip-meta": m_bitflip_meta,
    "bitflip-element-header": m_bitflip_element_header,
    "truncate-preamble": m_truncate_preamble,
    "truncate-meta": m_truncate_meta,
    "truncate-element-header": m_truncate_element_header,
    "truncate-value": m_truncate_value,
    "truncate-item": m_truncate_item,
    "truncate-pixels": m_truncate_pixels,
    "huge-length-text": m_huge_length_text,
    "huge-length-sequence": m_huge_length_sequence,
    "huge-length-pixels": m_huge_length_pixels,
    "undefined-length-text": m_undefined_length_text,
    "swallow-neighbour": m_swallow_neighbour,
    "shrink-length": m_shrink_length,
    "append-garbage": m_append_garbage,
    "polyglot-mz": _polyglot("mz"),
    "polyglot-elf": _polyglot("elf"),
    "polyglot-zip": _polyglot("zip"),
    "polyglot-script": _polyglot("script"),
    "polyglot-macho": _polyglot("macho"),
    "deep-nesting": m_deep_nesting,
    "odd-vr": m_odd_vr,
    "ts-mismatch": m_ts_mismatch,
    "unsorted-duplicate": m_unsorted_duplicate,
    "zero-fill-tail": m_zero_fill_tail,
    "bitflip-anywhere": m_bitflip_anywhere,
}
MUTATION_KINDS: tuple[str, ...] = tuple(MUTATIONS)


def mutant_kind(path: Path) -> str:
    """The mutation kind encoded in a mutant's file name (``m0007_swallow-neighbour.dcm``)."""
    return Path(path).stem.split("_", 1)[1]


def build_mutants(src_files: Sequence[Path], dst: Path, n: int = 300, seed: int = 0) -> list[Path]:
    """Write ``n`` mutants of ``src_files`` into ``dst``; return their paths in order.

    Kinds are used round-robin (so every kind appears once n ≥ len(MUTATION_KINDS)); the
    source for each mutant is the next one, in sorted order, to which that kind applies.
    Only little-endian Part 10 files can be parsed for structure-aware mutations; others are
    ignored. Raises ValueError if no source is usable.
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    layouts: list[Layout] = []
    for p in sorted(Path(s) for s in src_files):
        try:
            layouts.append(parse_layout(p.read_bytes()))
        except (_Bad, struct.error):
            continue
    if not layouts:
        raise ValueError("no usable (little-endian Part 10) source files for mutants")
    out: list[Path] = []
    for i in range(n):
        kind = MUTATION_KINDS[i % len(MUTATION_KINDS)]
        rng = random.Random(f"dicomsafe-mutant:{seed}:{i}")
        start = rng.randrange(len(layouts))
        data = None
        for k in range(len(layouts)):
            lay = layouts[(start + k) % len(layouts)]
            data = MUTATIONS[kind](lay, random.Random(f"dicomsafe-mutant:{seed}:{i}:{k}"))
            if data is not None and data != lay.data:
                break
            data = None
        if data is None:  # the kind applies to no source: fall back to a generic flip
            kind = "bitflip-anywhere"
            data = m_bitflip_anywhere(layouts[start], rng) or layouts[start].data[:-1]
        path = dst / f"m{i:04d}_{kind}.dcm"
        path.write_bytes(data)
        out.append(path)
    return out
