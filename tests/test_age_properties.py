"""Property tests (hypothesis) for the encodings under the age format: stanzas, Bech32, armor,
STREAM. Each property is an exact round trip or an exact rejection."""

from __future__ import annotations

import io

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomsafe.crypto import bech32, header, stream
from dicomsafe.crypto.armor import ArmorReader, ArmorWriter

vchar = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(vchar, st.lists(vchar, max_size=3), st.binary(max_size=200)), min_size=1, max_size=4),
       st.binary(min_size=16, max_size=16))
def test_header_encode_parse_round_trip(stanzas, file_key):
    items = [header.Stanza(t, tuple(a), b) for t, a, b in stanzas]
    raw = header.encode_header(header.AGE_V1, items, file_key)
    reader = io.BytesIO(raw + b"payload")
    parsed = header.parse_header(header.AGE_V1, reader)
    assert parsed.stanzas == tuple(items)
    assert parsed.raw == raw
    assert reader.read() == b"payload"
    header.verify_mac(parsed, file_key)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["age", "AGE-SECRET-KEY-", "age1pq"]))
def test_bech32_round_trip(data, hrp):
    text = bech32.encode(hrp, data)
    got_hrp, got = bech32.decode(text)
    assert got == data and got_hrp.lower() == hrp.lower()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=500), st.integers(min_value=0, max_value=10_000))
def test_bech32_detects_single_character_change(data, where):
    text = bech32.encode("age", data)
    i = 4 + where % (len(text) - 4)  # after "age1"
    repl = "q" if text[i] != "q" else "p"
    try:
        _, got = bech32.decode(text[:i] + repl + text[i + 1 :])
    except bech32.Bech32Error:
        return
    raise AssertionError("a one-character change went undetected")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_armor_round_trip(data):
    out = io.BytesIO()
    w = ArmorWriter(out)
    w.write(data)
    w.close()
    assert ArmorReader(io.BufferedReader(io.BytesIO(out.getvalue()))).read() == data


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=3 * stream.CHUNK_SIZE + 3), st.sampled_from([ChaCha20Poly1305, AESGCM]))
def test_stream_round_trip_both_aeads(size, aead_cls):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    aead = aead_cls(b"k" * 32)
    ct = io.BytesIO()
    assert stream.encrypt(aead, io.BytesIO(data), ct) == size
    chunks = max(1, -(-size // stream.CHUNK_SIZE))
    assert len(ct.getvalue()) == size + chunks * stream.TAG_SIZE
    pt = io.BytesIO()
    assert stream.decrypt(aead, io.BytesIO(ct.getvalue()), pt) == size
    assert pt.getvalue() == data
