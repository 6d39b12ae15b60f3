"""The de-identification run report (DESIGN.md §8), kept in bounded memory.

A run accounts for every input in ``report.json``: counts, reasons, and one PHI-free entry per
input (keyed id, outcome, reason). The counts are small; the entries are not — a nightly job over
100,000 inputs used to keep 100,000 dicts alive until the end, and then built the whole JSON text
in memory. :class:`FileEntries` keeps at most :data:`RUN_ENTRIES` of them in memory and spills
sorted runs to anonymous temporary files (gone with the process, even after a kill), and
:func:`write_report` merges the runs straight into the report file. The JSON is byte for byte what
``json.dumps(report, indent=2, sort_keys=True)`` gives, entries sorted by id, so the report does
not depend on the order workers finished in.
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

from . import __version__
from .errors import OutputError
from .fsutil import atomic_writer

if TYPE_CHECKING:
    from .deidentify import FileResult

#: Preamble signatures that make a file a polyglot executable or archive (CVE-2019-11687); TIFF
#: and PDF headers are legitimate dual-format files, zeroed all the same but not alarming.
EXECUTABLE_PREAMBLES = frozenset({"pe", "elf", "macho", "zip", "script", "archive"})
#: Entries kept in memory before a sorted run goes to disk (~0.7 MB of dicts).
RUN_ENTRIES = 2048
#: Spilled runs kept before they are merged into one (open files stay few on huge runs).
MAX_RUNS = 32


def _key(entry: dict) -> str:
    return entry["id"]


class FileEntries:
    """The report's per-file entries: appended in any order, read back sorted by id (as often as
    wanted; the spilled runs live as long as this object).

    ``spill_dir`` is where the anonymous run files are created (the destination's state
    directory: same file system as the run's other state); ``None`` keeps everything in memory.
    """

    def __init__(self, spill_dir: str | os.PathLike[str] | None = None, *, run_entries: int | None = None):
        self._dir = spill_dir
        self._limit = run_entries or RUN_ENTRIES
        self._buffer: list[dict] = []
        self._runs: list[IO[bytes]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, entry: dict) -> None:
        self._buffer.append(entry)
        self._count += 1
        if self._dir is not None and len(self._buffer) >= self._limit:
            self._spill()

    def __iter__(self) -> Iterator[dict]:
        """All entries sorted by id (a merge of the spilled runs and the buffer)."""
        self._buffer.sort(key=_key)
        if not self._runs:
            return iter(list(self._buffer))
        return heapq.merge(*(_read_run(r) for r in self._runs), list(self._buffer), key=_key)

    def _drop_runs(self) -> None:
        for run in self._runs:
            run.close()  # its space is freed at once: the file never had a name
        self._runs.clear()

    def _spill(self) -> None:
        self._buffer.sort(key=_key)
        self._runs.append(_write_run(self._dir, self._buffer))
        self._buffer = []
        if len(self._runs) >= MAX_RUNS:
            merged = _write_run(self._dir, heapq.merge(*(_read_run(r) for r in self._runs), key=_key))
            self._drop_runs()
            self._runs.append(merged)


def _write_run(directory: str | os.PathLike[str] | None, entries) -> IO[bytes]:
    try:
        run = tempfile.TemporaryFile(dir=directory)
        for entry in entries:
            run.write(json.dumps(entry, sort_keys=True).encode() + b"\n")
        run.flush()
    except OSError as exc:
        raise OutputError(f"cannot write the report's spill file ({exc.strerror})") from None
    return run


def _read_run(run: IO[bytes], chunk: int = 1 << 16) -> Iterator[dict]:
    """The entries of one spilled run, read with pread (no shared file offset, so two readers
    of one run never disturb each other)."""
    fd, pos, rest = run.fileno(), 0, b""
    while data := os.pread(fd, chunk, pos):
        pos += len(data)
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield json.loads(line)
    if rest:
        yield json.loads(rest)


@dataclass
class Report:
    """PHI-free run report (DESIGN.md §8). ``entries`` holds one entry per input; ``files`` is
    the same as a list, for callers of the library (it loads them all)."""

    tool: str = f"dicomsafe {__version__}"
    command: str = "deidentify"
    profile: str = ""
    profile_hash: str = ""
    options: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"inputs": 0, "written": 0, "quarantined": 0, "skipped": 0})
    preamble_threats: int = 0  # preambles with any foreign file signature (zeroed on output)
    preamble_executables: int = 0  # of those, executables/archives/scripts: CVE-2019-11687 polyglots
    reasons: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0
    bytes_in: int = 0
    entries: FileEntries = field(default_factory=FileEntries, repr=False, compare=False)

    @property
    def files(self) -> list[dict]:
        return list(self.entries)

    def add(self, res: FileResult) -> None:
        self.counts["inputs"] += 1
        self.counts[res.outcome] += 1
        self.bytes_in += res.size
        if res.preamble_threat:
            self.preamble_threats += 1
            if res.preamble_threat in EXECUTABLE_PREAMBLES:
                self.preamble_executables += 1
        entry = {"id": res.file_id, "outcome": res.outcome, "reason": res.reason}
        if res.preamble_threat:
            entry["preamble"] = f"{res.preamble_threat} signature cleaned (CVE-2019-11687)"
        if res.outcome == "quarantined" and res.details:
            entry["details"] = res.details[:10]
        self.entries.append(entry)
        if res.reason:
            self.reasons[res.reason] = self.reasons.get(res.reason, 0) + 1

    def summary(self) -> str:
        c = self.counts
        rate = c["inputs"] / self.seconds if self.seconds > 0 else 0.0
        text = (f"{c['inputs']} inputs: {c['written']} written, {c['quarantined']} quarantined, "
                f"{c['skipped']} skipped (not DICOM) in {self.seconds:.1f} s ({rate:.1f} files/s)")
        if self.preamble_threats:
            text += (f"; {self.preamble_threats} preamble(s) with a file signature zeroed, "
                     f"{self.preamble_executables} of them executable/archive (CVE-2019-11687)")
        if self.reasons:
            text += "; reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        return text

    def header(self) -> dict:
        """Everything but the entries, as the JSON object's fields."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "entries"}


_MARK = "\x00entries\x00"


def render_chunks(report: Report) -> Iterator[bytes]:
    """``json.dumps({**report.header(), "files": [...]}, indent=2, sort_keys=True) + "\\n"``,
    produced piece by piece: the entries are rendered one at a time where the list goes."""
    text = json.dumps({**report.header(), "files": _MARK}, indent=2, sort_keys=True)
    before, after = text.split(json.dumps(_MARK), 1)
    yield before.encode()
    first = True
    for entry in report.entries:
        item = json.dumps(entry, indent=2, sort_keys=True).replace("\n", "\n    ")
        yield (b"[\n    " if first else b",\n    ") + item.encode()
        first = False
    yield (b"[]" if first else b"\n  ]") + after.encode() + b"\n"


def write_report(report: Report, path: str | os.PathLike[str]) -> None:
    """Write ``report.json`` atomically, streaming the entries (memory stays bounded)."""
    try:
        with atomic_writer(Path(path)) as out:
            for chunk in render_chunks(report):
                out.write(chunk)
    except OSError as exc:
        raise OutputError(f"cannot write output file ({exc.strerror})") from None
