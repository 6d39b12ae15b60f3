"""Typed errors. Every message must be PHI-free: name files by position or keyed id, never by value.

The CLI (dicomsafe/cli/__init__.py) is the only place that maps these to exit codes.
"""

from __future__ import annotations


class DicomsafeError(Exception):
    """Base of every error dicomsafe raises on purpose."""


class ConfigError(DicomsafeError):
    """Usage or configuration problem: missing source, bad secret file, unknown profile (exit 2)."""


class ProfileError(ConfigError):
    """A profile that cannot be loaded or validated. Carries file and line where known."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        where = source or "<profile>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class SecretFileError(ConfigError):
    """A key or secret file that is missing, malformed or readable by group/world."""


class CryptoError(DicomsafeError):
    """Cryptographic failure: no matching identity, tampered or truncated ciphertext (exit 3)."""


class NoIdentityMatchedError(CryptoError):
    """None of the given identities opens the file."""


class IntegrityError(CryptoError):
    """Authentication failed: the ciphertext or its header was modified, truncated or extended."""


class FormatError(CryptoError):
    """Not a well-formed encrypted file (bad header, unknown version)."""


class OutputError(DicomsafeError):
    """Could not write output (disk full, permissions) (exit 4)."""


class LockedError(DicomsafeError):
    """Another run holds the destination lock (exit 4: the destination is busy)."""


class InputFileError(DicomsafeError):
    """One input file could not be processed; it is quarantined, the run goes on.

    ``code`` is a short stable reason code (e.g. ``truncated``, ``not-dicom``) for reports.
    """

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class NotDicomError(InputFileError):
    """The file is not DICOM at all (it is skipped, not quarantined)."""

    def __init__(self, message: str = "not a DICOM file"):
        super().__init__("not-dicom", message)


class PhiResidueError(InputFileError):
    """Verification found PHI in an output; the file goes to quarantine (fail closed)."""

    def __init__(self, message: str):
        super().__init__("phi-residue", message)


class Interrupted(DicomsafeError):
    """SIGINT/SIGTERM: the run stopped cleanly and can be resumed (exit 130)."""
