"""The dicomsafe command line.

This package is the only place that turns errors into exit codes (see EXIT_CODES). Each
``cli/<area>.py`` module defines the commands of one area and registers them on :data:`main`.
Why click: subcommands, typed options, file arguments and help text for free, and it is the
best-kept CLI library in the ecosystem; argparse would need hundreds of lines to match it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

# numpy (imported by pydicom) starts an OpenBLAS thread per core, and those threads spin for a
# while after start-up: ~0.09 s of CPU in every process that imports it (measured: 0.15 s vs
# 0.06 s for the import), i.e. in the command, the worker forkserver and each worker. dicomsafe
# does no linear algebra; one BLAS thread is plenty. Set before anything imports numpy; a value
# the user set is kept. Inherited by the forkserver and the workers.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .. import __version__, safelog
from ..errors import (
    ConfigError,
    CryptoError,
    DicomsafeError,
    Interrupted,
    LockedError,
    OutputError,
)

log = logging.getLogger("dicomsafe")

#: Exit codes, documented in README.md and DESIGN.md §2.
EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_CRYPTO = 3
EXIT_IO = 4
EXIT_INTERRUPTED = 130
#: The reader of standard output went away (``decrypt … | head``): exit as a Unix filter killed
#: by SIGPIPE would (128 + 13), silently — the age CLI and cat do the same.
EXIT_BROKEN_PIPE = 141

#: Error class → exit code; most specific first.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (Interrupted, EXIT_INTERRUPTED),
    (ConfigError, EXIT_USAGE),
    (CryptoError, EXIT_CRYPTO),
    (LockedError, EXIT_IO),
    (OutputError, EXIT_IO),
    (DicomsafeError, EXIT_USAGE),
]


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit code."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, OSError):
        return EXIT_IO
    return EXIT_USAGE


#: Command name → the area module that defines it. Modules are imported only when their command
#: runs (or for --help), so `dicomsafe encrypt` does not pay for pydicom's import.
COMMAND_MODULES: dict[str, str] = {
    "deidentify": "deid", "profiles": "profiles", "scan": "scan", "pixels": "pixels",
    "keygen": "crypto", "encrypt": "crypto", "decrypt": "crypto", "rekey": "crypto",
    "export": "batch", "archive": "batch", "restore": "batch", "audit": "batch",
}


class DicomsafeGroup(click.Group):
    """A click group that turns our errors into one-line messages and exit codes, and loads each
    area's commands on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMAND_MODULES:
            import importlib

            importlib.import_module(f"{__name__}.{COMMAND_MODULES[name]}")
        return self.commands.get(name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("dicomsafe: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError as exc:
            if not _stdout_reader_gone():  # some other pipe (a helper process): a real I/O error
                click.echo(f"dicomsafe: error: {safelog.safe_error_text(exc)}", err=True)
                ctx.exit(EXIT_IO)
            _detach_stdout()
            ctx.exit(EXIT_BROKEN_PIPE)
        except (DicomsafeError, OSError) as exc:
            click.echo(f"dicomsafe: error: {safelog.safe_error_text(exc)}", err=True)
            ctx.exit(exit_code_for(exc))
        finally:
            if "dicomsafe.executors" in sys.modules:  # a worker pool ran: account for its CPU
                sys.modules["dicomsafe.executors"].stop_server()


def _stdout_reader_gone() -> bool:
    """True when standard output is a pipe whose reading end is closed (poll reports POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout not a real file
        return False


def _detach_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush of stdout does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    safelog.configure(level)


@click.group(cls=DicomsafeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dicomsafe")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, errors only.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """De-identify and encrypt DICOM studies: safe to share, safe to keep.

    Exit codes: 0 success; 1 completed with findings (PHI found, files quarantined);
    2 usage or configuration error; 3 cryptographic failure; 4 I/O error; 130 interrupted;
    141 the reader of standard output stopped reading.
    """
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    _setup_logging(verbose, quiet)
    _sigterm_as_interrupt()


def _sigterm_as_interrupt() -> None:
    """SIGTERM (systemd stop, kill) takes the same clean path as Ctrl-C: the run stops between
    files, removes its staging area, writes its report and exits 130, resumable."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def load_all_commands() -> None:
    """Import every area module (tests and documentation use this to see the whole CLI)."""
    import importlib

    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"{__name__}.{module}")
