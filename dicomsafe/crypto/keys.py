"""The recipient/identity protocol both formats plug into.

A *recipient* wraps a file key into one or more stanzas; an *identity* tries to unwrap the file
key from a header's stanzas. This mirrors age's Recipient/Identity interfaces, so each key type
(X25519, scrypt, ML-KEM hybrid, RSA-OAEP, P-256, PBKDF2, …) is one small class and the envelope
code never needs to know which ones exist.

Contract for ``Identity.unwrap(stanzas, *, file_key_size)``:
- ``file_key_size`` is the format's file key length (age 16, aes 32): the body length MUST be
  checked against it *before* decrypting (partitioning-oracle mitigation, age spec);
- return the file key if one stanza opens;
- return ``None`` when no stanza is addressed to this identity (the next identity is tried);
- raise ``HeaderError`` when a stanza of this identity's type is malformed — age treats that as
  a fatal header failure rather than silently moving on.

``Recipient.labels`` (optional) follows age: all recipients of one file must carry the same label
set. A passphrase recipient returns a fresh random label so it can never be combined; a
post-quantum recipient returns {"postquantum"} so a file never silently mixes PQ and classic
recipients (which would make it only as strong as the classic one).
"""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence, runtime_checkable

from ..errors import ConfigError
from .header import Stanza


@runtime_checkable
class Recipient(Protocol):
    """Something that can wrap a file key for one reader."""

    def wrap(self, file_key: bytes) -> list[Stanza]: ...


@runtime_checkable
class Identity(Protocol):
    """Something that can unwrap a file key from a header's stanzas."""

    def unwrap(self, stanzas: Sequence[Stanza], *, file_key_size: int = 16) -> bytes | None: ...


def recipient_labels(recipient: Recipient) -> frozenset[str]:
    """The label set of a recipient (empty unless the class defines ``labels``)."""
    labels = getattr(recipient, "labels", None)
    if labels is None:
        return frozenset()
    return frozenset(labels() if callable(labels) else labels)


def check_labels(recipients: Iterable[Recipient]) -> None:
    """Refuse recipient combinations age refuses (passphrase + others, PQ + classic)."""
    recipients = list(recipients)
    if not recipients:
        raise ConfigError("no recipients given")
    first = recipient_labels(recipients[0])
    for r in recipients[1:]:
        if recipient_labels(r) != first:
            raise ConfigError(
                "incompatible recipients: a passphrase cannot be combined with other recipients, "
                "and post-quantum recipients cannot be mixed with classic ones"
            )
