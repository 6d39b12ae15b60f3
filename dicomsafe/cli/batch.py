"""Batch commands: ``export``, ``archive`` (+ ``archive verify``), ``restore``, ``audit verify``.

Thin shell: parse options (merged over a ``--config`` TOML file), call the library, print a
one-paragraph summary, and exit with the documented code. Nothing printed names a patient:
studies are named by keyed id, files by keyed id or count.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from . import EXIT_FINDINGS, EXIT_OK, main
from .. import audit as audit_mod
from ..errors import ConfigError, DicomsafeError


def _config(ctx: click.Context, command: str, path: str | None, cli: dict[str, Any]) -> dict[str, Any]:
    from ..config import load_config, merge

    cfg = load_config(path, command) if path else None
    merged = merge(cfg, cli)
    if merged.get("quiet") is None:
        merged["quiet"] = bool(ctx.find_root().obj.get("quiet")) if ctx.find_root().obj else False
    return merged


def _given_options(ctx: click.Context) -> list[str]:
    """Names (never values) of the options given on the command line, for the audit log."""
    names = []
    for p in ctx.command.params:
        if isinstance(p, click.Option):
            src = ctx.get_parameter_source(p.name)
            if src is not None and src.name == "COMMANDLINE":
                names.append(max(p.opts, key=len))
    return names


def _recipients(recipient: tuple[str, ...] | list[str] | None, files: list[str]) -> list[Any]:
    from .. import crypto

    found = [crypto.parse_recipient(r) for r in (recipient or ())]
    for f in files:
        found.extend(crypto.load_recipients_file(f))
    return found


def _identities(paths: tuple[str, ...] | list[str]) -> list[Any]:
    from .. import crypto

    if not paths:
        raise ConfigError("an identity file is required: -i IDENTITY")
    found: list[Any] = []
    for p in paths:
        found.extend(crypto.load_identities(p))
    return found


def _secret(path: str | None) -> bytes:
    from .deid import secret_from_options

    return secret_from_options(path)


def _need(values: dict[str, Any], key: str, what: str) -> Any:
    v = values.get(key)
    if v in (None, ""):
        raise ConfigError(f"missing {what} (argument or '{key}' in --config)")
    return v


_executor_options = [
    click.option("--jobs", "-j", type=click.IntRange(min=1), help="Worker processes (default: CPU count)."),
    click.option("--executor", type=click.Choice(["local", "dask"]), help="local process pool or a Dask cluster."),
    click.option("--scheduler", metavar="ADDR", help="Dask scheduler address (with --executor dask)."),
]


def _with(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


# --- export ---------------------------------------------------------------------------------


@main.command()
@click.argument("src", required=False, type=click.Path(file_okay=False))
@click.argument("dst", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML settings file ([export] table).")
@click.option("--profile", "-p", help="Profile name or .toml file (default basic).")
@click.option("--option", "options", multiple=True, metavar="OPT", help="Add a PS3.15 option (repeatable).")
@click.option("--secret-file", type=click.Path(dir_okay=False), help="Pseudonym secret (or $DICOMSAFE_SECRET_FILE).")
@click.option("-r", "--recipient", "recipient", multiple=True, metavar="RECIPIENT", help="age1… recipient (repeatable).")
@click.option("-R", "--recipients-file", "recipients_file", type=click.Path(dir_okay=False), help="File of recipients.")
@click.option("--format", "fmt", type=click.Choice(["age", "aes"]), help="age (default: any age tool opens it) or aes.")
@click.option("--quarantine", type=click.Path(file_okay=False), help="Quarantine directory (never under DST).")
@click.option("--tmp-dir", type=click.Path(file_okay=False), help="Where the temporary de-identified tree lives.")
@click.option("--audit-log", type=click.Path(dir_okay=False), help="Audit log (default DST/.dicomsafe/audit.jsonl).")
@_with(_executor_options)
@click.pass_context
def export(ctx: click.Context, src, dst, config_path, profile, options, secret_file, recipient, recipients_file,
           fmt, quarantine, tmp_dir, audit_log, jobs, executor, scheduler) -> None:
    """De-identify SRC, verify, and write one encrypted tar to DST/<export id>.tar.age.

    The recipient opens it with: age -d -i KEY FILE | tar -x. Exit 0 when every DICOM input
    is in the export, 1 when some were quarantined (they are not in it).
    """
    from ..export import export_tree
    from ..profiles import load_profile

    v = _config(ctx, "export", config_path, dict(
        source=src, destination=dst, profile=profile, options=list(options) or None, secret_file=secret_file,
        recipients=list(recipient) or None, recipients_file=recipients_file, format=fmt, quarantine=quarantine,
        audit_log=audit_log, jobs=jobs, executor=executor, scheduler=scheduler))
    src_p = _need(v, "source", "SRC")
    dst_p = _need(v, "destination", "DST")
    prof = load_profile(v.get("profile") or "basic", tuple(v.get("options") or ()))
    recips = _recipients(v.get("recipients"), [v["recipients_file"]] if v.get("recipients_file") else [])
    fmt_ = v.get("format") or "age"
    res = export_tree(src_p, dst_p, recips, prof, _secret(v.get("secret_file")), fmt=fmt_, jobs=v.get("jobs"),
                      executor=v.get("executor") or "local", scheduler=v.get("scheduler"),
                      quarantine=v.get("quarantine"), tmp_dir=tmp_dir, quiet=v["quiet"],
                      audit_log=v.get("audit_log"),
                      command=audit_mod.command_record("export", _given_options(ctx), format=fmt_))
    c = res.report.counts
    if not v["quiet"]:
        click.echo(f"dicomsafe: export {res.path.name}: {len(res.manifest['files'])} files; "
                   f"{c['inputs']} inputs, {c['written']} written, {c['quarantined']} quarantined, "
                   f"{c['skipped']} skipped; sha256 {res.sha256}", err=True)
    click.echo(str(res.path))
    ctx.exit(EXIT_FINDINGS if c["quarantined"] else EXIT_OK)


# --- archive / archive verify ---------------------------------------------------------------


class _ArchiveGroup(click.Group):
    """``archive SRC DST …`` runs the archive; ``archive verify DST …`` checks it.

    Why a group with a default: DESIGN.md §2 names both spellings; click groups do not take
    positional arguments themselves, so anything that is not a subcommand goes to ``run``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        elif not args:
            args = ["run"]
        return super().parse_args(ctx, args)


@main.group("archive", cls=_ArchiveGroup)
def archive_group() -> None:
    """Nightly encrypted archive of original studies (one object per study), and its check.

    \b
    dicomsafe archive SRC DST -R RECIPIENTS --secret-file KEY [--format aes|age] [--jobs N]
    dicomsafe archive --config nightly.toml
    dicomsafe archive verify DST -i IDENTITY

    All archive options: dicomsafe archive run --help
    """


@archive_group.command("run", hidden=True)
@click.argument("src", required=False, type=click.Path(file_okay=False))
@click.argument("dst", required=False, type=click.Path(file_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML settings file ([archive] table).")
@click.option("-R", "--recipients-file", "recipients_file", type=click.Path(dir_okay=False), help="File of recipients.")
@click.option("-r", "--recipient", "recipient", multiple=True, metavar="RECIPIENT", help="Recipient (repeatable).")
@click.option("--secret-file", type=click.Path(dir_okay=False),
              help="Secret for keyed object names (or $DICOMSAFE_SECRET_FILE).")
@click.option("--format", "fmt", type=click.Choice(["aes", "age"]), help="aes (default, at rest) or age.")
@click.option("--checksum", is_flag=True, default=None, help="Compare file contents, not only size and mtime.")
@click.option("--retention-days", type=click.IntRange(min=0), help="Remove superseded versions older than N days.")
@click.option("--audit-log", type=click.Path(dir_okay=False), help="Audit log (default DST/.dicomsafe/audit.jsonl).")
@click.option("--deidentify", "deid", is_flag=True, default=None,
              help="Archive de-identified copies (with --profile) instead of the originals.")
@click.option("--profile", "-p", help="Profile for --deidentify (default basic).")
@click.option("--option", "options", multiple=True, metavar="OPT", help="PS3.15 option for --deidentify.")
@click.option("--quarantine", type=click.Path(file_okay=False), help="Quarantine for --deidentify (never under DST).")
@_with(_executor_options)
@click.pass_context
def archive_run(ctx: click.Context, src, dst, config_path, recipients_file, recipient, secret_file, fmt, checksum,
                retention_days, audit_log, deid, profile, options, quarantine, jobs, executor, scheduler) -> None:
    """Archive new or changed studies of SRC into DST (incremental, resumable)."""
    from ..archive import archive_tree

    v = _config(ctx, "archive", config_path, dict(
        source=src, destination=dst, recipients_file=recipients_file, recipients=list(recipient) or None,
        secret_file=secret_file, format=fmt, retention_days=retention_days, audit_log=audit_log, jobs=jobs,
        executor=executor, scheduler=scheduler, deidentify=deid, profile=profile, options=list(options) or None,
        quarantine=quarantine))
    prof = None
    if v.get("deidentify"):
        from ..profiles import load_profile

        prof = load_profile(v.get("profile") or "basic", tuple(v.get("options") or ()))
    src_p = _need(v, "source", "SRC")
    dst_p = _need(v, "destination", "DST")
    recips = _recipients(v.get("recipients"), [v["recipients_file"]] if v.get("recipients_file") else [])
    fmt_ = v.get("format") or "aes"
    rep = archive_tree(src_p, dst_p, recips, _secret(v.get("secret_file")), fmt=fmt_, jobs=v.get("jobs"),
                       executor=v.get("executor") or "local", scheduler=v.get("scheduler"),
                       checksum=bool(checksum), retention_days=v.get("retention_days") or 0, quiet=v["quiet"],
                       audit_log=v.get("audit_log"), deidentify_profile=prof, quarantine=v.get("quarantine"),
                       command=audit_mod.command_record("archive", _given_options(ctx), format=fmt_))
    if not v["quiet"]:
        click.echo(f"dicomsafe: {rep.summary()}", err=True)
    ctx.exit(EXIT_FINDINGS if rep.counts["failed_studies"] or rep.counts["quarantined"] else EXIT_OK)


@archive_group.command("verify")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("-i", "--identity", multiple=True, type=click.Path(dir_okay=False), help="Identity file (repeatable).")
@click.pass_context
def archive_verify(ctx: click.Context, dst: str, identity: tuple[str, ...]) -> None:
    """Decrypt every object of the archive DST and check every file's SHA-256 (exit 1 on a mismatch)."""
    from ..archive import verify_archive

    rep = verify_archive(dst, _identities(identity))
    for p in rep.problems:
        click.echo(f"dicomsafe: study {p['id']}: {p['problem']}", err=True)
    click.echo(f"dicomsafe: archive verify: {rep.objects} objects, {rep.files} files checked, "
               f"{len(rep.problems)} problem(s)", err=True)
    ctx.exit(EXIT_OK if rep.ok else EXIT_FINDINGS)


# --- restore --------------------------------------------------------------------------------


@main.command()
@click.argument("dst", type=click.Path(file_okay=False))
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("-i", "--identity", multiple=True, type=click.Path(dir_okay=False), help="Identity file (repeatable).")
@click.option("--study", multiple=True, metavar="UID", help="Only this StudyInstanceUID (repeatable).")
@click.option("--patient", multiple=True, metavar="ID", help="Only studies of this PatientID (repeatable).")
@click.option("--since", metavar="DATE", help="Only studies with StudyDate on or after DATE (YYYY-MM-DD).")
@click.option("--audit-log", type=click.Path(dir_okay=False), help="Audit log (default DST/.dicomsafe/audit.jsonl).")
@click.pass_context
def restore(ctx: click.Context, dst, outdir, identity, study, patient, since, audit_log) -> None:
    """Restore original files from the archive DST into OUTDIR, bit-exact (SHA-256 checked).

    Exit 0 when studies were restored, 1 when nothing matched the selection.
    """
    from ..archive import restore as do_restore

    run_id = audit_mod.new_run_id()
    started = audit_mod.utc_now()
    status = "failed"
    rep = None
    try:
        rep = do_restore(dst, outdir, _identities(identity), studies=study, patients=patient, since=since)
        status = "ok" if rep.studies else "findings"
    finally:
        try:
            audit_mod.append_run(
                Path(audit_log) if audit_log else Path(dst) / ".dicomsafe" / "audit.jsonl",
                event="restore", run_id=run_id, command=audit_mod.command_record("restore", _given_options(ctx)),
                counts={"studies": rep.studies, "files": rep.files, "already_present": rep.already_present}
                if rep else {}, status=status, started=started)
        except (DicomsafeError, OSError):  # e.g. the archive is mounted read-only
            click.echo("dicomsafe: warning: could not append to the audit log (use --audit-log FILE)", err=True)
    click.echo(f"dicomsafe: restored {rep.files} files of {rep.studies} studies"
               + (f" ({rep.already_present} already present)" if rep.already_present else ""), err=True)
    ctx.exit(EXIT_OK if rep.studies else EXIT_FINDINGS)


# --- audit verify ---------------------------------------------------------------------------


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
        sys.exit(EXIT_OK)
    where = f"line {res.first_bad_line}" if res.first_bad_line else "log"
    click.echo(f"audit log BROKEN at {where}: {res.reason} ({res.lines} line(s) verified before it)", err=True)
    sys.exit(EXIT_FINDINGS)
