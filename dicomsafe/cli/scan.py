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
name the file (its relative path, or its position ``#N`` when the path may itself be PHI), the
attribute path and the kind — never a value.
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


#: Opaque binary files (images, archives, PDFs) are searched for values of at least this length
#: only: a pooled harvest holds thousands of short names that random bytes spell by chance.
BINARY_MIN_LENGTH = 6


def looks_like_text(path: Path) -> bool:
    """No NUL byte in the first 8 KiB: the usual text/binary test (git, grep)."""
    with open(path, "rb") as fh:
        return b"\0" not in fh.read(8192)


def scan_file(path: Path, phi: PhiValues | None, ignore: frozenset[str],
              binary_phi: PhiValues | None = None) -> list[Finding]:
    """Findings for one file: parse + bytes for DICOM, bytes only for anything else.

    ``binary_phi`` is ``phi.with_min_length(BINARY_MIN_LENGTH)``, passed in so a whole tree
    compiles it once."""
    try:
        if is_dicom_file(path):
            return verify_file(path, phi, ignore_kinds=ignore)
        if path.stat().st_size == 0:
            return []
        if phi is not None and not looks_like_text(path):
            phi = binary_phi if binary_phi is not None else phi.with_min_length(BINARY_MIN_LENGTH)
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return find_in_bytes(mm, phi, ignore_kinds=ignore)
    except OSError:
        return [] if "unreadable" in ignore else [Finding("file", "unreadable")]


def path_findings(rel: str, phi: PhiValues | None, ignore: frozenset[str]) -> list[Finding]:
    """A file path is output too: a name or an SSN in it is a leak."""
    kinds = set(ALL_KINDS - ignore)
    out: list[Finding] = []
    if phi is not None:
        rxs, lookup = phi.str_matcher(frozenset(kinds - {"date"}), 3)
        for rx in rxs:
            out.extend(Finding("file-path", lookup.get(m.group(0).casefold(), "other")) for m in rx.finditer(rel))
    if "ssn" in kinds and ssn_spans(rel, bare=False):
        out.append(Finding("file-path", "ssn"))
    if "email" in kinds and email_spans(rel):
        out.append(Finding("file-path", "email"))
    return list(dict.fromkeys(out))


def own_names(path: Path) -> PhiValues | None:
    """The names (and birth date) a DICOM file carries itself, to judge its *path* in pattern
    mode: an identified tree is often laid out as ``SMITH^JOHN_12345/…``. Values equal to the
    file's own ids are dropped: in dicomsafe output the pseudonym is both the PatientName and the
    first path component, and that is by design."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phi = harvest(pydicom.dcmread(path, stop_before_pixels=True))
    except Exception:
        return None
    ids = phi.ids | phi.uids
    return PhiValues(names=phi.names - ids, patient_names=phi.patient_names - ids, dates=phi.dates)


@main.command("scan")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--against", "against", type=click.Path(path_type=Path), default=None,
              help="Source tree: search for the identifying values harvested from all its DICOM files.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Report format (both PHI-free: attribute paths and kinds, never values).")
@click.option("--ignore-kind", "ignore", multiple=True, type=click.Choice(sorted(ALL_KINDS)),
              help="Finding kind a profile keeps on purpose (e.g. uid with retain-uids). Repeatable.")
@click.option("--show-paths", is_flag=True,
              help="Without --against, name files by relative path instead of position (#N); paths "
                   "of an identified tree are often PHI themselves.")
@click.pass_context
def scan(ctx: click.Context, path: Path, against: Path | None, fmt: str, ignore: tuple[str, ...],
         show_paths: bool) -> None:
    """Report residual PHI in PATH (a file or a tree). Exit 1 on findings, 0 when clean.

    Files are numbered in a stable order (sorted walk, symlinks not followed). With --against,
    a file is named by its relative path unless the path holds a harvested value; without it,
    by its number (#N) unless --show-paths.
    """
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

    binary_phi = phi.with_min_length(BINARY_MIN_LENGTH) if phi is not None else None
    files = list(iter_files(path))
    base = path if path.is_dir() else path.parent
    show_bar = not quiet and sys.stderr.isatty()
    results = []
    total = 0
    from tqdm import tqdm

    with tqdm(total=len(files), unit="file", disable=not show_bar, desc="scan", leave=False) as bar:
        for index, p in enumerate(files, 1):
            rel = p.relative_to(base).as_posix()
            own = own_names(p) if phi is None and is_dicom_file(p) else None
            findings = path_findings(rel, phi if phi is not None else own, ignored)
            findings += scan_file(p, phi, ignored, binary_phi)
            if findings:
                hide = any(f.path == "file-path" for f in findings) or (phi is None and not show_paths)
                label = f"#{index}" if hide else rel
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
