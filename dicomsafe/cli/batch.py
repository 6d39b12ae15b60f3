"""Batch commands: ``export``, ``archive`` (+ ``archive verify``), ``restore``, ``audit verify``.

Thin shell: parse options (merging a ``--config`` TOML file), call the library, print a
summary, map outcomes to exit codes via the typed errors. No PHI is echoed: files are named by
keyed id or position only.
"""

from __future__ import annotations

import sys

import click

from . import main
from .. import audit as audit_mod

EXIT_FINDINGS = 1


@main.group("audit")
def audit_group() -> None:
    """Audit log tools."""


@audit_group.command("verify")
@click.argument("log", type=click.Path(dir_okay=False))
@click.option("--expect-head", metavar="SHA256", help="Digest of the last line recorded elsewhere (detects a cut tail).")
def audit_verify(log: str, expect_head: str | None) -> None:
    """Check the hash chain of an audit LOG: exit 0 intact, 1 on any edit/deletion/reordering."""
    res = audit_mod.verify(log, expect_head=expect_head)
    if res.ok:
        click.echo(f"audit log intact: {res.lines} line(s); head {res.head}")
        sys.exit(0)
    where = f"line {res.first_bad_line}" if res.first_bad_line else "log"
    click.echo(f"audit log BROKEN at {where}: {res.reason} ({res.lines} line(s) verified before it)", err=True)
    sys.exit(EXIT_FINDINGS)
