"""``dicomsafe deidentify``: one command over a whole tree (DESIGN.md §2)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import ConfigError
from . import EXIT_FINDINGS, EXIT_OK, main


def secret_from_options(secret_file: str | None) -> bytes:
    """The pseudonym secret: --secret-file, else $DICOMSAFE_SECRET_FILE. Never from argv itself."""
    from ..pseudonyms import load_secret

    path = secret_file or os.environ.get("DICOMSAFE_SECRET_FILE")
    if not path:
        raise ConfigError("a pseudonym secret is required: --secret-file FILE or DICOMSAFE_SECRET_FILE "
                          "(create one with: dicomsafe keygen --secret -o FILE)")
    return load_secret(path)


def profile_from_options(profile: str, options: tuple[str, ...]):
    from ..profiles import load_profile

    return load_profile(profile, options)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--profile", "-p", default="basic", show_default=True, help="Profile name or .toml/.deid file.")
@click.option("--option", "options", multiple=True, metavar="OPT",
              help="Add a PS3.15 option, e.g. clean-descriptors (repeatable).")
@click.option("--secret-file", type=click.Path(path_type=str), help="Pseudonym secret (or $DICOMSAFE_SECRET_FILE).")
@click.option("--quarantine", type=click.Path(path_type=Path),
              help="Where files that cannot be proven clean go (default ./dicomsafe-quarantine).")
@click.option("--report", type=click.Path(path_type=Path), help="Report path (default DST/.dicomsafe/report.json).")
@click.option("--review", type=click.Path(path_type=Path),
              help="Write an HTML before/after page of masked images here (operator side: it shows PHI).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Worker processes (default: CPU count).")
@click.option("--executor", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="local process pool or a Dask cluster.")
@click.option("--scheduler", metavar="ADDR", help="Dask scheduler address (with --executor dask).")
@click.option("--resume", is_flag=True, help="Skip studies a previous (interrupted) run finished.")
@click.option("--audit-log", type=click.Path(path_type=Path), help="Audit log (default DST/.dicomsafe/audit.jsonl).")
@click.option("--quiet", "-q", "quiet_flag", is_flag=True, help="No progress bar and no summary line.")
@click.pass_context
def deidentify(ctx: click.Context, src: Path, dst: Path, profile: str, options: tuple[str, ...],
               secret_file: str | None, quarantine: Path | None, report: Path | None,
               review: Path | None, jobs: int | None, executor: str, scheduler: str | None,
               resume: bool, audit_log: Path | None, quiet_flag: bool) -> None:
    """De-identify every DICOM file under SRC into DST.

    Output paths are built from pseudonyms only: DST/<patient>/<study>/<series>/<instance>.dcm.
    Exit 0 when every DICOM input was written, 1 when some were quarantined.
    """
    if executor == "local" and jobs != 1:
        from ..executors import warm_up

        warm_up()  # the workers' imports (pydicom and all) overlap ours and the grouping
    from .. import audit
    from ..batchrun import run_deidentify
    from ..pipeline import RunSettings

    prof = profile_from_options(profile, options)
    secret = secret_from_options(secret_file)
    quiet = quiet_flag or (bool(ctx.obj.get("quiet")) if ctx.obj else False)
    settings = RunSettings(src=src, dst=dst, profile=prof, secret=secret, quarantine=quarantine,
                           report=report, quiet=quiet, review=review)
    given = [max(p.opts, key=len) for p in ctx.command.params if isinstance(p, click.Option)
             and getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"]
    rep = run_deidentify(settings, jobs=jobs, executor=executor, scheduler=scheduler, resume=resume,
                         audit_log=audit_log, command=audit.command_record("deidentify", given, jobs=jobs))
    if not quiet:
        click.echo(f"dicomsafe: {rep.summary()}", err=True)
    ctx.exit(EXIT_FINDINGS if rep.counts["quarantined"] else EXIT_OK)
