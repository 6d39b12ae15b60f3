"""The run ledger: what was done, so ``--resume`` and incremental ``archive`` can skip it.

SQLite in ``DST/.dicomsafe/ledger.sqlite`` (WAL, synchronous=FULL). It holds only keyed ids of
source files and units (HMAC via ``Pseudonymizer.keyed_id``; a source path or Study UID never
enters it), sizes, mtimes, content SHA-256, outcomes, and the PHI-free relative paths and
digests of the outputs.

Crash consistency (kill -9 at any moment) rests on one ordering rule: a worker writes its
output files atomically *first*; only then does the single writer record the unit in one
transaction. So the ledger never claims more than exists on disk. The reverse (outputs on disk
that the ledger does not know yet) is harmless: the unit is redone and its deterministic
outputs replaced. On resume :meth:`Ledger.unit_done` re-checks every recorded output's digest,
so a deleted or damaged output also makes its unit run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import OutputError
from .lock import state_dir

LEDGER_NAME = "ledger.sqlite"
SCHEMA_VERSION = "1"
_CHUNK = 1 << 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, started TEXT NOT NULL,
    finished TEXT, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    unit TEXT PRIMARY KEY, outcome TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0,
    object TEXT, object_sha256 TEXT, cataloged INTEGER NOT NULL DEFAULT 0,
    run_id TEXT, updated TEXT);
CREATE TABLE IF NOT EXISTS files (
    file TEXT PRIMARY KEY, unit TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT, outcome TEXT NOT NULL, reason TEXT, run_id TEXT);
CREATE INDEX IF NOT EXISTS files_unit ON files(unit);
CREATE TABLE IF NOT EXISTS outputs (
    path TEXT PRIMARY KEY, unit TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS outputs_unit ON outputs(unit);
CREATE TABLE IF NOT EXISTS version_files (
    unit TEXT NOT NULL, version INTEGER NOT NULL, file TEXT NOT NULL, sha256 TEXT,
    PRIMARY KEY (unit, version, file));
"""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streaming SHA-256 of a file (64 KiB chunks: bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """One source file as the ledger sees it: keyed id, stat, digest, outcome."""

    file: str  # keyed id of the source relative path
    size: int
    mtime_ns: int
    sha256: str | None
    outcome: str  # written | quarantined | skipped | archived | duplicate …
    reason: str | None = None


@dataclass(frozen=True)
class OutputRecord:
    """One output file: path relative to DST (PHI-free by construction) and its digest."""

    path: str
    sha256: str
    size: int


@dataclass
class UnitState:
    unit: str
    outcome: str
    version: int
    object: str | None
    object_sha256: str | None
    cataloged: bool
    files: dict[str, FileRecord] = field(default_factory=dict)
    outputs: list[OutputRecord] = field(default_factory=list)


class Ledger:
    """A connection to one destination's ledger. Use from one thread at a time (the writer:
    the coordinator, or while units run its committer thread, batchrun.Committer)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
        except sqlite3.Error as exc:
            raise OutputError(f"cannot open the ledger ({exc})") from None
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)

    @classmethod
    def for_destination(cls, dst: str | os.PathLike[str]) -> "Ledger":
        return cls(state_dir(dst) / LEDGER_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE … COMMIT``: all or nothing, even under kill -9."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise OutputError(f"ledger is busy or unwritable ({exc})") from None
        try:
            yield self._db
        except sqlite3.Error as exc:
            # e.g. "database or disk is full" while a large transaction spills its pages: SQLite
            # has then often rolled back already, and a second ROLLBACK would fail in turn.
            self._rollback()
            raise OutputError(f"cannot write to the ledger ({exc})") from None
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutputError(f"cannot commit to the ledger ({exc})") from None

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- runs ---------------------------------------------------------------------------
    def begin_run(self, run_id: str, kind: str, started: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs(run_id, kind, started, status) VALUES (?, ?, ?, 'running')",
                (run_id, kind, started),
            )

    def finish_run(self, run_id: str, status: str, finished: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status=?, finished=? WHERE run_id=?", (status, finished, run_id))

    # -- units --------------------------------------------------------------------------
    def record_unit(
        self,
        unit: str,
        files: Sequence[FileRecord],
        outputs: Sequence[OutputRecord] = (),
        *,
        outcome: str = "done",
        run_id: str | None = None,
        updated: str | None = None,
        version: int | None = None,
        object: str | None = None,
        object_sha256: str | None = None,
        cataloged: bool = False,
        keep_version_files: bool = False,
    ) -> None:
        """Replace everything known about ``unit`` in one transaction.

        Call only after the unit's outputs are durably on disk (see module docstring).
        """
        with self.transaction() as db:
            if version is None:
                row = db.execute("SELECT version FROM units WHERE unit=?", (unit,)).fetchone()
                version = row[0] if row else 0
            db.execute("DELETE FROM files WHERE unit=?", (unit,))
            db.execute("DELETE FROM outputs WHERE unit=?", (unit,))
            db.execute(
                "INSERT OR REPLACE INTO units(unit, outcome, version, object, object_sha256, cataloged,"
                " run_id, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (unit, outcome, version, object, object_sha256, int(cataloged), run_id, updated),
            )
            db.executemany(
                "INSERT OR REPLACE INTO files(file, unit, size, mtime_ns, sha256, outcome, reason, run_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(f.file, unit, f.size, f.mtime_ns, f.sha256, f.outcome, f.reason, run_id) for f in files],
            )
            db.executemany(
                "INSERT OR REPLACE INTO outputs(path, unit, sha256, size) VALUES (?, ?, ?, ?)",
                [(o.path, unit, o.sha256, o.size) for o in outputs],
            )
            if keep_version_files:  # the archive keeps which files each object version holds
                db.execute("DELETE FROM version_files WHERE unit=? AND version=?", (unit, version))
                db.executemany(
                    "INSERT INTO version_files(unit, version, file, sha256) VALUES (?, ?, ?, ?)",
                    [(unit, version, f.file, f.sha256) for f in files],
                )

    def version_files(self, unit: str, version: int) -> dict[str, str | None] | None:
        """{file key: sha256} of one archived version, or None when the ledger does not know it."""
        rows = self._db.execute(
            "SELECT file, sha256 FROM version_files WHERE unit=? AND version=?", (unit, version)
        ).fetchall()
        return {r[0]: r[1] for r in rows} if rows else None

    def forget_version(self, unit: str, version: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM version_files WHERE unit=? AND version=?", (unit, version))

    def mark_cataloged(self, units: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE units SET cataloged=1 WHERE unit=?", [(u,) for u in units])

    def unit(self, unit: str) -> UnitState | None:
        row = self._db.execute(
            "SELECT unit, outcome, version, object, object_sha256, cataloged FROM units WHERE unit=?", (unit,)
        ).fetchone()
        if row is None:
            return None
        st = UnitState(row[0], row[1], row[2], row[3], row[4], bool(row[5]))
        for f in self._db.execute(
            "SELECT file, size, mtime_ns, sha256, outcome, reason FROM files WHERE unit=?", (unit,)
        ):
            st.files[f[0]] = FileRecord(*f)
        st.outputs = [
            OutputRecord(*o) for o in self._db.execute("SELECT path, sha256, size FROM outputs WHERE unit=?", (unit,))
        ]
        return st

    def units(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT unit FROM units ORDER BY unit")]

    def uncataloged(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT unit FROM units WHERE cataloged=0 ORDER BY unit")]

    def file_records(self) -> list[tuple[str, FileRecord]]:
        """Every file row as (unit, record): the report of a resumed run is built from these."""
        return [
            (r[0], FileRecord(*r[1:]))
            for r in self._db.execute(
                "SELECT unit, file, size, mtime_ns, sha256, outcome, reason FROM files ORDER BY file"
            )
        ]

    def unit_done(
        self,
        unit: str,
        files: Sequence[tuple[str, int, int]],
        *,
        dst: str | os.PathLike[str] | None = None,
        hashes: dict[str, str] | None = None,
        compare_mtime: bool = True,
        allow_removed: bool = False,
    ) -> bool:
        """True when ``unit`` needs no work: recorded as done with exactly these source files.

        ``files`` are (keyed id, size, mtime_ns) of the unit's current source files; ``hashes``
        optionally maps keyed id → content SHA-256 to compare as well (slower, stricter). With
        ``dst``, every recorded output must still exist there with its recorded digest.
        ``compare_mtime=False`` (with ``hashes``) suits trees regenerated on every run.
        ``allow_removed=True`` (the archive) does not count recorded files that are gone from the
        source as a change: a source that ages files out must not make the archive forget them.
        """
        st = self.unit(unit)
        if st is None or st.outcome != "done":
            return False
        current = {f[0] for f in files}
        if not (current <= set(st.files) if allow_removed else current == set(st.files)):
            return False
        for key, size, mtime_ns in files:
            rec = st.files[key]
            if rec.size != size or (compare_mtime and rec.mtime_ns != mtime_ns):
                return False
            if hashes is not None and rec.sha256 is not None and hashes.get(key) != rec.sha256:
                return False
        if dst is not None:
            root = Path(dst)
            for out in st.outputs:
                p = root / out.path
                try:
                    if p.stat().st_size != out.size or sha256_file(p) != out.sha256:
                        return False
                except OSError:
                    return False
        return True
