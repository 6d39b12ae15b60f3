"""Research export: de-identify, verify, package with a manifest, encrypt — one file out.

``DST/<export id>.tar.age`` (or ``.tar.dsa``) holds one tar stream::

    <export id>/manifest.json          PHI-free: paths, SHA-256, sizes, counts, profile + hash
    <export id>/<patient>/<study>/<series>/<instance>.dcm

so a recipient needs only ``age -d -i KEY FILE | tar -x``.

Why a temporary directory: the de-identified files must be verified on disk (the pipeline
re-reads every output) before they are packaged; they are written nowhere else, in a private
(0700) directory that is removed afterwards, also on failure or interruption. Cleartext never
reaches DST: the tar is streamed straight into the encryptor (see
:func:`dicomsafe.archive.encrypt_through_pipe`) and the export appears by atomic rename.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Sequence

from . import __version__
from . import audit as audit_mod
from .archive import encrypt_through_pipe
from .errors import ConfigError, Interrupted, OutputError
from .fsutil import atomic_writer
from .ledger import sha256_file
from .lock import state_dir

MANIFEST_FORMAT = "dicomsafe-export-manifest/1"
EXT = {"age": "tar.age", "aes": "tar.dsa"}


def new_export_id() -> str:
    """``export-YYYYMMDDTHHMMSSZ-<8 hex>``: sortable, unique, PHI-free."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"export-{now}-{secrets.token_hex(4)}"


@dataclass
class ExportResult:
    export_id: str
    path: Path
    sha256: str
    manifest: dict[str, Any]
    report: Any  # pipeline.Report


def build_manifest(tree: Path, export_id: str, report: Any) -> dict[str, Any]:
    """File list with SHA-256 of the de-identified tree: paths are pseudonymous by construction."""
    files = []
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree).as_posix()
        if rel.split("/")[0] == ".dicomsafe" or not p.is_file():
            continue
        files.append({"path": rel, "sha256": sha256_file(p), "size": p.stat().st_size})
    return {
        "format": MANIFEST_FORMAT,
        "export_id": export_id,
        "created": audit_mod.utc_now(),
        "tool": f"dicomsafe {__version__}",
        "profile": {"name": report.profile, "hash": report.profile_hash, "options": list(report.options)},
        "counts": {**report.counts, "files_in_export": len(files)},
        "files": files,
    }


def _write_tar(wf: IO[bytes], tree: Path, export_id: str, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    mtime = int(time.time())
    with tarfile.open(fileobj=wf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted({export_id} | {f"{export_id}/{Path(f['path']).parent.as_posix()}"
                                       for f in manifest["files"]}):
            if d.endswith("/."):
                continue
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            ti.mtime = mtime
            tar.addfile(ti)
        ti = tarfile.TarInfo(f"{export_id}/manifest.json")
        ti.size = len(data)
        ti.mode = 0o644
        ti.mtime = mtime
        import io

        tar.addfile(ti, io.BytesIO(data))
        for f in manifest["files"]:
            p = tree / f["path"]
            ti = tarfile.TarInfo(f"{export_id}/{f['path']}")
            ti.size = f["size"]
            ti.mode = 0o644
            ti.mtime = mtime
            with open(p, "rb") as fh:
                tar.addfile(ti, fh)


def export_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    recipients: Sequence[Any],
    profile: Any,
    secret: bytes,
    *,
    fmt: str = "age",
    jobs: int | None = None,
    executor: str = "local",
    scheduler: Any = None,
    quarantine: str | os.PathLike[str] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    quiet: bool = True,
    audit_log: str | os.PathLike[str] | None = None,
    command: dict[str, Any] | None = None,
) -> ExportResult:
    """De-identify ``src``, verify, package and encrypt to ``dst/<export id>.<ext>``."""
    from .batchrun import run_deidentify
    from .pipeline import RunSettings, check_layout

    if fmt not in EXT:
        raise ConfigError("--format must be age or aes")
    if not recipients:
        raise ConfigError("no recipients: give -r RECIPIENT or -R FILE")
    src_p, dst_p = Path(src), Path(dst)
    check_layout(src_p, dst_p)
    q = Path(quarantine) if quarantine else Path.cwd() / "dicomsafe-quarantine"
    if q.resolve().is_relative_to(dst_p.resolve()):
        raise ConfigError("quarantine must not be under the export destination (it holds originals in clear)")
    dst_p.mkdir(parents=True, exist_ok=True)
    export_id = new_export_id()
    started = audit_mod.utc_now()
    try:
        work = Path(tempfile.mkdtemp(prefix="dicomsafe-export-", dir=tmp_dir))
    except OSError as exc:
        raise OutputError(f"cannot create a temporary directory ({exc.strerror})") from None
    status = "failed"
    counts: dict[str, int] = {}
    outputs: dict[str, str] = {}
    try:
        os.chmod(work, 0o700)
        tree = work / "tree"
        settings = RunSettings(src=src_p, dst=tree, profile=profile, secret=secret,
                               quarantine=Path(quarantine) if quarantine else None,
                               report=work / "report.json", quiet=quiet)
        report = run_deidentify(settings, jobs=jobs, executor=executor, scheduler=scheduler,
                                audit_log=work / "audit.jsonl",
                                command=audit_mod.command_record("export-deidentify"))
        counts = dict(report.counts)
        manifest = build_manifest(tree, export_id, report)
        # Verify before packaging: every file in the tree must be one the pipeline wrote *and*
        # verified (each output was re-read and checked against the PHI harvested from its input;
        # failures went to quarantine). Anything else in the tree means something wrote there
        # behind the pipeline's back: refuse rather than ship it.
        if len(manifest["files"]) != report.counts["written"] or not all(
                f["path"].endswith(".dcm") for f in manifest["files"]):
            raise OutputError("the de-identified tree does not match the run's report; export refused")
        target = dst_p / f"{export_id}.{EXT[fmt]}"
        try:
            with atomic_writer(target, 0o644) as out:
                encrypt_through_pipe(lambda wf: _write_tar(wf, tree, export_id, manifest), out,
                                     list(recipients), fmt)
        except OSError as exc:
            raise OutputError(f"cannot write the export ({exc.strerror})") from None
        digest = sha256_file(target)
        outputs = {"export": target.name, "sha256": digest, "manifest_files": str(len(manifest["files"]))}
        status = "ok" if not counts.get("quarantined") else "findings"
        return ExportResult(export_id, target, digest, manifest, report)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        audit_mod.append_run(
            Path(audit_log) if audit_log else state_dir(dst_p) / "audit.jsonl",
            event="export", run_id=export_id,
            command=command or audit_mod.command_record("export", format=fmt),
            counts=counts, profile={"name": profile.name, "hash": profile.hash},
            outputs=outputs, status=status, started=started)
