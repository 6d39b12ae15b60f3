"""``dicomsafe scan PATH [--against SRC] [--format text|json]``: residual-PHI report for any tree.

The same detector that guards every output before it is committed (dicomsafe.verify), run over a
file or a tree. Exit 1 when anything is found, 0 when clean, 2 on a missing path.

* Without ``--against``: pattern detectors only — SSN, e-mail, phone and dates in free text, a
  non-empty PatientBirthDate, and PN attributes holding a name-like value (not a dummy, not a
  pseudonym token).
* With ``--against SRC``: the identifying values harvested from *every* DICOM file under SRC,
  pooled into one set, are searched in every scanned file. Why pooled: the scanned tree is
  de-identified, its UIDs and paths are keyed, so an output file cannot be paired with its source
  without the project secret; pooling is sound (a value of any source patient in any output is a
  leak) and needs no secret. Pooling makes ordinary dates collide across patients, so the date
  kinds are narrowed (see PhiValues.for_tree_scan).

Non-DICOM files under PATH are byte-scanned too: a leaked notes.txt is still a leak. Findings
name the file (its relative path, or ``#N`` when the path itself holds PHI), the attribute path
and the kind — never a value.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import click

from ..errors import ConfigError
from ..text import email_spans, ssn_spans
from ..verify import ALL_KINDS, Finding, PhiValues, find_in_bytes, harvest, verify_file
from . import EXIT_FINDINGS, EXIT_OK, main

log = logging.getLogger(__name__)


def iter_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in a deterministic order. Symlinks are not followed (a link
    could lead out of the tree or loop); a single file is yielded as is."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not p.is_symlink() and p.is_file():
                yield p


def is_dicom_file(path: Path) -> bool:
    """Part-10 files carry ``DICM`` after the 128-byte preamble; anything else is byte-scanned."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def harvest_tree(src: Path) -> tuple[PhiValues, int, int]:
    """Pool the harvests of every DICOM file under ``src`` → (values, harvested, unreadable)."""
    import pydicom

    parts: list[PhiValues] = []
    bad = 0
    for p in iter_files(src):
        if not is_dicom_file(p):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warnings can quote values
                parts.append(harvest(pydicom.dcmread(p, stop_before_pixels=True)))
        except Exception:
            bad += 1
    return PhiValues.union(parts).for_tree_scan(), len(parts), bad


def scan_file(path: Path, phi: PhiValues | None, ignore: frozenset[str]) -> list[Finding]:
    """Findings for one file: parse + bytes for DICOM, bytes only for anything else."""
    try:
        if is_dicom_file(path):
            return verify_file(path, phi, ignore_kinds=ignore)
        if path.stat().st_size == 0:
            return []
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return find_in_bytes(mm, phi, ignore_kinds=ignore)
    except OSError:
        return [] if "unreadable" in ignore else [Finding("file", "unreadable")]


def path_findings(rel: str, phi: PhiValues | None, ignore: frozenset[str]) -> list[Finding]:
    """A file path is output too: a name or an SSN in it is a leak."""
    kinds = set(ALL_KINDS - ignore)
    out: list[Finding] = []
    if phi is not None:
        rx, lookup = phi.str_matcher(frozenset(kinds - {"date"}), 3)
        if rx is not None:
            out.extend(Finding("file-path", lookup[m.group(0).lower()]) for m in rx.finditer(rel)
                       if m.group(0).lower() in lookup)
    if "ssn" in kinds and ssn_spans(rel, bare=False):
        out.append(Finding("file-path", "ssn"))
    if "email" in kinds and email_spans(rel):
        out.append(Finding("file-path", "email"))
    return list(dict.fromkeys(out))


@main.command("scan")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--against", "against", type=click.Path(path_type=Path), default=None,
              help="Source tree: search for the identifying values harvested from all its DICOM files.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Report format (both PHI-free: attribute paths and kinds, never values).")
@click.option("--ignore-kind", "ignore", multiple=True, type=click.Choice(sorted(ALL_KINDS)),
              help="Finding kind a profile keeps on purpose (e.g. uid with retain-uids). Repeatable.")
@click.pass_context
def scan(ctx: click.Context, path: Path, against: Path | None, fmt: str, ignore: tuple[str, ...]) -> None:
    """Report residual PHI in PATH (a file or a tree). Exit 1 on findings, 0 when clean."""
    # Messages never echo the paths: a source path can itself be PHI.
    if not path.exists():
        raise ConfigError("scan: PATH does not exist")
    if against is not None and not against.exists():
        raise ConfigError("scan: --against SRC does not exist")
    quiet = bool((ctx.obj or {}).get("quiet"))
    ignored = frozenset(ignore)

    phi: PhiValues | None = None
    if against is not None:
        phi, n_src, n_bad = harvest_tree(against)
        if n_bad:
            log.warning("scan: %d source file(s) could not be read and were not harvested", n_bad)
        if n_src == 0:
            raise ConfigError("scan: --against SRC holds no readable DICOM file")

    files = list(iter_files(path))
    base = path if path.is_dir() else path.parent
    show_bar = not quiet and sys.stderr.isatty()
    results = []
    total = 0
    from tqdm import tqdm

    with tqdm(total=len(files), unit="file", disable=not show_bar, desc="scan", leave=False) as bar:
        for index, p in enumerate(files, 1):
            rel = p.relative_to(base).as_posix()
            findings = path_findings(rel, phi, ignored) + scan_file(p, phi, ignored)
            if findings:
                label = f"#{index}" if any(f.path == "file-path" for f in findings) else rel
                results.append({"file": label, "findings": [{"path": f.path, "kind": f.kind} for f in findings]})
                total += len(findings)
            bar.update(1)

    summary = {
        "scanned": len(files),
        "files_with_findings": len(results),
        "findings": total,
        "mode": "against-source" if phi is not None else "patterns",
    }
    if fmt == "json":
        click.echo(json.dumps({**summary, "files": results}, indent=2, sort_keys=True))
    else:
        for r in results:
            click.echo(f"{r['file']}:")
            for f in r["findings"]:
                click.echo(f"  {f['path']}: {f['kind']}")
        if results:
            click.echo(f"{summary['scanned']} file(s) scanned: {summary['files_with_findings']} with residual PHI "
                       f"({summary['findings']} finding(s)).")
        else:
            click.echo(f"{summary['scanned']} file(s) scanned: no residual PHI found.")
    ctx.exit(EXIT_FINDINGS if results else EXIT_OK)
