"""One PHI-safe path for everything that reaches a log, a report or the terminal.

Third-party messages are the leak: pydicom warns with the offending value ("Invalid value for
VR PN: 'DOE^JANE'"), and exception texts quote values too. So only dicomsafe's own loggers reach
the handler (their messages are PHI-free by construction), pydicom's validation warnings are
switched off, and exceptions are rendered by :func:`safe_error_text`.
"""

from __future__ import annotations

import logging
import sys
import warnings

from .errors import DicomsafeError

OWN_LOGGER = "dicomsafe"


class OwnRecordsOnly(logging.Filter):
    """Pass only records of dicomsafe's own loggers; strip exception tracebacks (they quote values)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + ".")):
            return False
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_third_party() -> None:
    """Silence pydicom's value-quoting warnings and log output (idempotent).

    Called by the CLI and by the modules that import pydicom (dicomio, verify): commands that never
    touch DICOM (encrypt, keygen) then do not pay for importing pydicom.
    """
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    warnings.filterwarnings("ignore", category=UserWarning, message=r".*(VR|value|charset|encoding).*")
    pconf = sys.modules.get("pydicom.config")
    if pconf is not None:
        pconf.settings.reading_validation_mode = pconf.IGNORE


def configure(level: int) -> None:
    """Route dicomsafe's logging to stderr through the PHI-safe filter."""
    quiet_third_party()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("dicomsafe: %(levelname)s: %(message)s"))
    handler.addFilter(OwnRecordsOnly())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(OWN_LOGGER).setLevel(level)


def safe_error_text(exc: BaseException) -> str:
    """A message for ``exc`` that cannot carry a PHI value.

    Our own errors are written PHI-free; for OSError only the strerror is used (its filename may
    be a PHI-bearing source path); anything else is reduced to its type name.
    """
    if isinstance(exc, DicomsafeError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
