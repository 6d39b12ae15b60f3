#!/usr/bin/env python3
"""dicomsafe benchmark harness (issue 8): dicomsafe vs bare pydicom, cp and the peer tools.

Run it through ``scripts/bench`` (which makes the two venvs and installs the Debian tools); this
file is the engine. Everything measured is a child process, timed by wall clock and measured for
peak RSS through ``os.wait4`` (the largest process of the child's tree), so Python, Go and C++
tools are measured the same way. Each measurement runs ``--runs`` times, interleaved round by
round so a burst of load elsewhere on the machine hits every tool alike, and the median is kept.

Before every run the input is read once (page cache warm for everybody) and the disk is synced
(so nobody pays for the previous tool's write-back); the output goes to the same directory tree as
the input (same disk). Many-file outputs are deleted together between rounds, followed by a rest
(see rest_after_deletes).

Private sub-commands (``_floor``, ``_floor_reread``, ``_deid``, ``_chart``) are the small programs that are measured or
that draw the chart; they import their libraries lazily so the peers' venv can run this file too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
GiB = 1 << 30
MARK_START = "<!-- bench:results:start -->"
MARK_END = "<!-- bench:results:end -->"
PROF_START = "<!-- bench:profile:start -->"
PROF_END = "<!-- bench:profile:end -->"


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    """How big each part of the benchmark is. ``quick`` is for development, not for publishing."""

    ct_files: int = 2000
    scale_files: tuple[int, ...] = (200,)  # extra corpus sizes for "how cost grows"
    # RSS against file count at 10x the CT corpus, cheaply: 32x32 slices (~4 KB each), so 20,000
    # of them cost ~80 MB of disk where 20,000 CT slices would cost 10 GB
    small_files: tuple[int, ...] = (2000, 20000)
    small_side: int = 32
    multiframe: tuple[int, ...] = (200 * MiB, GiB, 2 * GiB)
    encrypt: int = GiB
    profile_files: int = 500
    runs: int = 3  # two were not enough on a shared VM: one tool's two runs differed by 1.9x
    patients: int = 6  # dicomsafe.corpus.MAX_PATIENTS

    @classmethod
    def for_mode(cls, mode: str) -> "Sizes":
        if mode == "quick":
            return cls(ct_files=100, scale_files=(20,), small_files=(100, 1000), multiframe=(20 * MiB, 50 * MiB), encrypt=100 * MiB,
                       profile_files=100, runs=2, patients=2)
        if mode == "full":
            return cls(scale_files=(200, 20000))
        return cls()


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


# ---------------------------------------------------------------------------------------------
# Running one command
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    maxrss_mib: float
    rc: int
    ok: bool
    note: str = ""
    cpu_s: float = 0.0  # user + system CPU of the whole child tree (robust to other load)


@dataclass
class Case:
    """One measured command. ``group`` decides which table it lands in."""

    key: str
    label: str
    group: str  # files | scale | rss | crypto
    cmd: list[str]
    inputs: list[Path]  # what to read to warm the page cache
    out: Path
    n_files: int
    n_bytes: int
    check: str = "files"  # files | dicomsafe | file
    expect: int = 0
    prepare: list[str] | None = None  # untimed command run before each timed run
    runs: list[Run] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def median(self) -> dict | None:
        good = [r for r in self.runs if r.ok]
        if not good:
            return None
        sec = statistics.median(r.seconds for r in good)
        cpu = statistics.median(r.cpu_s for r in good)
        return {
            "seconds": sec,
            "cpu_s": cpu,
            "cpu_files_per_s": self.n_files / cpu if cpu else 0.0,
            "cpu_mb_per_s": self.n_bytes / 1e6 / cpu if cpu else 0.0,
            "files_per_s": self.n_files / sec if sec else 0.0,
            "mb_per_s": self.n_bytes / 1e6 / sec if sec else 0.0,
            "maxrss_mib": max(r.maxrss_mib for r in good),
            "runs": len(good),
        }


def files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        out.extend(Path(root) / f for f in sorted(files))
    return out


def warm(paths: list[Path]) -> None:
    """Read every input once so each tool starts with the same (hot) page cache."""
    buf = bytearray(4 * MiB)
    for top in paths:
        for f in files_under(top):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


TIME = "/usr/bin/time"


#: Seconds a deleted inode stays "recently deleted" to ext4's inode allocator (RECENTCY_MIN in
#: fs/ext4/ialloc.c) once its inode table block is written back.
INODE_AGE_S = 61
#: Case groups whose outputs are many files (their deletion is what the allocator remembers).
MANY_FILES = ("files", "scale")


def defer_deletes(cases: list, out: Path) -> bool:
    """Whether one round's many-file outputs fit on disk side by side (then they are deleted
    together between rounds, see rest_after_deletes)."""
    files = [c for c in cases if c.group in MANY_FILES]
    need = sum(c.n_bytes for c in files) * 1.15 + (4 << 30)
    return shutil.disk_usage(out).free > need


def rest_after_deletes(paths: list[Path]) -> None:
    """Delete the previous round's outputs, write back, and wait until ext4 no longer treats
    their inodes as recently deleted.

    Why: deleting a 2,000-file output right before the next tool runs made that tool's file
    creation slow: ext4's allocator skips recently deleted inodes, re-checking them from the start
    of the block group for every new file (perf: recently_deleted / find_get_block_common under
    openat). Which tool paid depended on where its directories landed: measured by hand, dicomsafe
    --jobs 1 on 2,000 CT files spent 3.2–3.4 s in the kernel right after a delete and 1.3 s after
    this rest; bare pydicom 2.6 s and 1.0 s.
    Real runs do not follow a mass delete by seconds; no tool should pay for the one before it.
    """
    if not paths:
        return
    for p in paths:
        remove(p)
    paths.clear()
    os.sync()
    print(f"  (previous outputs deleted; {INODE_AGE_S} s for the file system to settle)", flush=True)
    time.sleep(INODE_AGE_S)


def timed(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, float, int, float]:
    """Wall seconds, peak RSS (MiB, largest process of the tree), exit code and CPU seconds
    (user + system, the whole tree) of ``cmd``.

    Peak RSS comes from GNU time (``%M``, from wait4): not from our own wait4, because Linux
    charges the memory of the forking process to the child until exec, so every child of this
    (large) Python process would report at least our own RSS. GNU time is a small C program.
    """
    rss_file = log.with_name("time.out")
    with open(log, "ab") as lf:
        lf.write(("\n$ " + " ".join(cmd[:12]) + (" …" if len(cmd) > 12 else "") + "\n").encode())
        lf.flush()
        t0 = time.perf_counter()
        p = subprocess.run([TIME, "-f", "%M %U %S", "-o", str(rss_file), *cmd], stdout=lf,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        dt = time.perf_counter() - t0
    try:
        kib, user, system = (float(x) for x in rss_file.read_text().strip().splitlines()[-1].split())
    except (OSError, ValueError, IndexError):
        kib = user = system = 0.0
    return dt, kib / 1024.0, p.returncode, user + system


def count_outputs(out: Path) -> int:
    if out.is_file():
        return 1
    n = 0
    for root, dirs, files in os.walk(out):
        dirs[:] = [d for d in dirs if d != ".dicomsafe"]
        n += sum(1 for f in files if not f.endswith(".tmp"))
    return n


def run_case(case: Case, log: Path) -> Run:
    remove(case.out)
    if case.check == "files" and case.info.get("mkdir_out"):
        case.out.mkdir(parents=True)
    warm(case.inputs)
    os.sync()
    if case.prepare:
        subprocess.run(case.prepare, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sec, rss, rc, cpu = timed(case.cmd, log)
    note = ""
    ok = rc == 0
    if case.check == "dicomsafe":
        rep = case.out / ".dicomsafe" / "report.json"
        try:
            counts = json.loads(rep.read_text())["counts"]
        except (OSError, ValueError, KeyError):
            counts = {}
        case.info["counts"] = counts
        ok = rc in (0, 1) and counts.get("inputs") == case.expect
        if counts.get("quarantined"):
            note = f"{counts['quarantined']} quarantined"
    elif case.check == "files":
        got = count_outputs(case.out)
        if got != case.expect:
            ok = False
            note = f"{got}/{case.expect} outputs"
    elif case.check == "file":
        ok = ok and case.out.is_file()
    if not ok and not note:
        note = f"exit {rc}"
    if case.info.get("needles") is not None and "residue" not in case.info and case.out.exists():
        case.info["residue"] = residue_scan(case.out, case.info["needles"])
    return Run(sec, rss, rc, ok, note, cpu)


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------


def build_ct(dst: Path, n: int, patients: int, side: int = 512) -> None:
    """Single-frame side×side (512×512 unless told) 16-bit CT files with fake PHI
    (dicomsafe.corpus), cached by a stamp."""
    stamp = dst.with_name(dst.name + ".stamp")  # beside, not inside: every tool sees only .dcm files
    want = f"ct n={n} patients={patients} v1" + (f" side={side}" if side != 512 else "")
    if stamp.is_file() and stamp.read_text() == want:
        return
    from dicomsafe.corpus import build_ct_series

    remove(dst)
    t0 = time.perf_counter()
    build_ct_series(dst, n, rows=side, cols=side, patients=patients)
    stamp.write_text(want)
    print(f"  corpus: {n} CT files in {time.perf_counter() - t0:.0f} s", flush=True)


def build_flat(src: Path, dst: Path) -> int:
    """A flat view of ``src`` made of hard links (same inodes, so the same cached bytes): for peers
    that only take one directory level (dicom-anonymizer) or write flat (deid)."""
    remove(dst)
    dst.mkdir(parents=True)
    files = [f for f in files_under(src) if f.name.endswith(".dcm")]
    for i, f in enumerate(files):
        os.link(f, dst / f"{i:06d}.dcm")
    return len(files)


def build_mf(dst_dir: Path, size: int) -> Path:
    stamp = dst_dir.with_name(dst_dir.name + ".stamp")
    want = f"mf size={size} v1"
    if stamp.is_file() and stamp.read_text() == want:
        return next(dst_dir.glob("*.dcm"))
    from dicomsafe.corpus import build_multiframe

    remove(dst_dir)
    dst_dir.mkdir(parents=True)
    p = build_multiframe(dst_dir, size)
    stamp.write_text(want)
    return p


def planted_needles(patients: int, seed: int = 0) -> dict[str, list[bytes]]:
    """The fake PHI the CT generator planted (dicomsafe.corpus identities), by kind."""
    from dicomsafe.corpus import _make_identities

    out: dict[str, list[bytes]] = {"name": [], "patient id": [], "ssn": [], "other id": [], "address": [],
                                   "physician": []}
    for who in _make_identities(seed, patients):
        out["name"] += [who.family.encode("latin-1"), who.given.encode("latin-1")]
        out["patient id"].append(who.patient_id.encode())
        out["ssn"].append(who.ssn.encode())
        out["other id"].append(who.other_id.encode())
        out["address"].append(who.address.encode("latin-1", "replace"))
        out["physician"].append(who.physician.encode("latin-1", "replace"))
    return out


def residue_scan(out: Path, needles: dict[str, list[bytes]]) -> dict:
    """Untimed check of a tool's outputs: how many files still hold a planted value, by kind.
    A crude exact-bytes search (no charsets or case variants): a floor on what leaked."""
    files = 0
    by_kind: dict[str, int] = {}
    for f in files_under(out):
        if ".dicomsafe" in f.parts:
            continue
        data = f.read_bytes()
        hit = False
        for kind, vals in needles.items():
            if any(v and v in data for v in vals):
                by_kind[kind] = by_kind.get(kind, 0) + 1
                hit = True
        files += hit
    return {"files": files, "by_kind": by_kind}


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in files_under(path) if f.name.endswith(".dcm") or path.is_file())


def make_certificate(dst: Path) -> Path:
    """Self-signed RSA certificate for gdcmanon's PS3.15 mode (it encrypts the removed attributes
    to it). Made with `cryptography` so no openssl CLI is needed."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dicomsafe bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7)).sign(key, hashes.SHA256()))
    path = dst / "gdcmanon-cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def basic_profile_erase_tags() -> list[str]:
    """Attributes of PS3.15 Table E.1-1 that the Basic profile does not keep, as dcmodify -ea
    arguments. UIDs (U) are left alone: dcmodify cannot derive keyed replacements."""
    from dicomsafe.standard import load_table

    args: list[str] = []
    for row in load_table().rows():
        if row.is_wildcard or row.basic in ("K", "C", "U"):
            continue
        if row.tag_text[1:5] in ("0000", "0002"):  # dcmodify refuses command/file-meta groups
            continue
        args += ["-ea", row.tag_text]
    return args


# ---------------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def machine_info(out: Path, bench_py: str) -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    fs = _first_line(["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(out)])
    du = shutil.disk_usage(out)
    import pydicom

    peers = subprocess.run([bench_py, "-c", (
        "import importlib.metadata as m\n"
        "for p in ('pydicom','deid','dicognito','dicom-anonymizer','matplotlib'):\n"
        "    try: print(p, m.version(p))\n"
        "    except Exception: print(p, 'missing')")], capture_output=True, text=True).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "disk": f"{fs} ({du.total / 1e9:.0f} GB, {du.free / 1e9:.0f} GB free at start)",
        "peers_venv": dict(line.split(" ", 1) for line in peers.strip().splitlines() if " " in line),
        "age": _first_line(["age", "--version"]),
        "dcmodify": _first_line(["dcmodify", "--version"]),
        "gdcmanon": _first_line(["gdcmanon", "--version"]),
        "loadavg_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


def dicomsafe_has_jobs(ds: str) -> bool:
    out = subprocess.run([ds, "deidentify", "--help"], capture_output=True, text=True).stdout
    return "--jobs" in out


def plan(args, sizes: Sizes, out: Path, py: str, bench_py: str) -> list[Case]:
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    work = out / "work"  # outputs: same disk as inputs
    work.mkdir(parents=True, exist_ok=True)
    keys = out / "keys"
    keys.mkdir(exist_ok=True)
    bench = str(Path(__file__).resolve())
    ds = str(Path(py).parent / "dicomsafe")

    print("building inputs (untimed) …", flush=True)
    ct = data / f"ct{sizes.ct_files}"
    build_ct(ct, sizes.ct_files, sizes.patients)
    flat = data / f"ct{sizes.ct_files}-flat"
    n_flat = build_flat(ct, flat)
    assert n_flat == sizes.ct_files, (n_flat, sizes.ct_files)
    ct_bytes = tree_bytes(ct)

    secret = keys / "project.secret"
    if not secret.exists():
        subprocess.run([ds, "keygen", "--secret", "-o", str(secret)], check=True, capture_output=True)
    identity = keys / "identity.txt"
    if not identity.exists():
        subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = _first_line(["age-keygen", "-y", str(identity)])
    cert = make_certificate(keys)

    jobs = dicomsafe_has_jobs(ds)

    def dicomsafe_cmd(src: Path, dst: Path, extra: list[str] | None = None) -> list[str]:
        """Single process unless told otherwise: with the batch layer, --jobs defaults to the CPU count."""
        if extra is None:
            extra = ["--jobs", "1"] if jobs else []
        return [ds, "-q", "deidentify", str(src), str(dst), "--profile", "basic", "--secret-file", str(secret),
                "--quarantine", str(work / "quarantine"), *extra]

    cases: list[Case] = []
    needles = planted_needles(sizes.patients)

    def add(key, label, group, cmd, inputs, dst, n, nbytes, **kw):
        if args.only and not any(re.search(p, key) for p in args.only):
            return
        if args.skip and any(re.search(p, key) for p in args.skip):
            return
        info = kw.pop("info", {})
        if group == "files" and key != "cp":
            info["needles"] = needles
        c = Case(key, label, group, cmd, inputs, dst, n, nbytes, **kw)
        c.info.update(info)
        cases.append(c)

    n = sizes.ct_files
    # (a)-(d): the same CT corpus through every tool
    add("cp", "cp -r", "files", ["cp", "-r", str(ct), str(work / "cp")], [ct], work / "cp", n, ct_bytes, expect=n)
    add("pydicom", "bare pydicom read+write", "files", [py, bench, "_floor", str(ct), str(work / "pydicom")],
        [ct], work / "pydicom", n, ct_bytes, expect=n)
    add("pydicom-reread", "bare pydicom read+write, then re-read each output and decode its text values", "files",
        [py, bench, "_floor_reread", str(ct), str(work / "pydicom-reread")],
        [ct], work / "pydicom-reread", n, ct_bytes, expect=n)
    add("pydicom-durable", "the same, plus SHA-256 of each output and fsync per 32 files", "files",
        [py, bench, "_floor_reread", "--durable", str(ct), str(work / "pydicom-durable")],
        [ct], work / "pydicom-durable", n, ct_bytes, expect=n)
    batch_api = not jobs and subprocess.run([py, "-c", "from dicomsafe.batchrun import run_deidentify"],
                                            capture_output=True).returncode == 0
    add("dicomsafe", "dicomsafe deidentify" + (" --jobs 1" if jobs else "") + " (basic, verified)", "files",
        dicomsafe_cmd(ct, work / "dicomsafe"), [ct], work / "dicomsafe", n,
        ct_bytes, check="dicomsafe", expect=n)
    if jobs:
        add("dicomsafe-j2", "dicomsafe deidentify --jobs 2 (basic, verified)", "files",
            dicomsafe_cmd(ct, work / "dicomsafe-j2", ["--jobs", "2"]), [ct], work / "dicomsafe-j2",
            n, ct_bytes, check="dicomsafe", expect=n)
    if batch_api:  # the batch layer is on main but `deidentify --jobs` is not wired yet: use its API
        for j in (1, 2):
            add(f"dicomsafe-batch-j{j}", f"dicomsafe batch layer, jobs={j} (API: batchrun.run_deidentify)", "files",
                [py, bench, "_batch", str(ct), str(work / f"dicomsafe-batch-j{j}"), str(secret), str(work / "quarantine"),
                 str(j)], [ct], work / f"dicomsafe-batch-j{j}", n, ct_bytes, check="dicomsafe", expect=n)
    add("dicomsafe-noverify", "diagnostic: dicomsafe with verification off (API only)", "files",
        [py, bench, "_noverify", str(ct), str(work / "dicomsafe-noverify"), str(secret), str(work / "quarantine")],
        [ct], work / "dicomsafe-noverify", n, ct_bytes, check="dicomsafe", expect=n)
    add("deid", "deid (default recipe, Python API)", "files", [bench_py, bench, "_deid", str(flat), str(work / "deid")],
        [ct], work / "deid", n, ct_bytes, expect=n)
    add("dicognito", "dicognito", "files", [bench_py, "-m", "dicognito", "-q", "-o", str(work / "dicognito"), str(ct)],
        [ct], work / "dicognito", n, ct_bytes, expect=n)
    add("dicom-anonymizer", "dicom-anonymizer", "files",
        [str(Path(bench_py).parent / "dicom-anonymizer"), str(flat), str(work / "dicom-anonymizer")],
        [ct], work / "dicom-anonymizer", n, ct_bytes, expect=n, info={"mkdir_out": True})
    add("gdcmanon", "gdcmanon -e (PS3.15 basic, certificate)", "files",
        ["gdcmanon", "-e", "-c", str(cert), "-r", "--continue", "-i", str(ct), "-o", str(work / "gdcmanon")],
        [ct], work / "gdcmanon", n, ct_bytes, expect=n)
    erase = basic_profile_erase_tags()
    add("dcmodify", "cp -r + dcmodify (erase basic-profile tags, private)", "files",
        ["sh", "-c", 'src=$1; dst=$2; shift 2; cp -r "$src" "$dst" && '
         'find "$dst" -type f -name "*.dcm" -exec dcmodify "$@" {} +',
         "sh", str(ct), str(work / "dcmodify"), "-nb", "-ie", "-imt", "-ep", *erase],
        [ct], work / "dcmodify", n, ct_bytes, expect=n, info={"erase_tags": len(erase) // 2})

    # (f) how cost grows with the number of files
    for m in sizes.scale_files:
        if m == n:
            continue
        d = data / f"ct{m}"
        build_ct(d, m, sizes.patients)
        b = tree_bytes(d)
        add(f"scale-pydicom-{m}", f"bare pydicom, {m} files", "scale", [py, bench, "_floor", str(d), str(work / f"pyd{m}")],
            [d], work / f"pyd{m}", m, b, expect=m)
        add(f"scale-dicomsafe-{m}", f"dicomsafe, {m} files", "scale", dicomsafe_cmd(d, work / f"ds{m}"), [d],
            work / f"ds{m}", m, b, check="dicomsafe", expect=m)

    # (f) memory against file count at 10x, on small slices (same headers, same PHI, tiny pixels)
    for m in sizes.small_files:
        d = data / f"small{m}"
        build_ct(d, m, sizes.patients, side=sizes.small_side)
        b = tree_bytes(d)
        side = f"{sizes.small_side}×{sizes.small_side}"
        add(f"small-pydicom-{m}", f"bare pydicom, {m} small files ({side})", "scale",
            [py, bench, "_floor", str(d), str(work / f"spyd{m}")], [d], work / f"spyd{m}", m, b, expect=m)
        add(f"small-dicomsafe-{m}", f"dicomsafe, {m} small files ({side})", "scale", dicomsafe_cmd(d, work / f"sds{m}"),
            [d], work / f"sds{m}", m, b, check="dicomsafe", expect=m)

    # (f) peak RSS vs file size: one multi-frame file per size
    free = shutil.disk_usage(out).free
    mf_files: dict[int, Path] = {}
    for size in sizes.multiframe:
        need = 3 * size + 2 * sizes.encrypt + GiB
        if need > free:
            print(f"  skip multi-frame {human_bytes(size)}: not enough free disk ({free / 1e9:.0f} GB)", flush=True)
            continue
        d = data / f"mf-{size // MiB}M"
        p = build_mf(d, size)
        mf_files[size] = p
        sz = p.stat().st_size
        add(f"rss-dicomsafe-{size // MiB}M", f"dicomsafe, one {human_bytes(size)} multi-frame", "rss",
            dicomsafe_cmd(d, work / f"mfds{size // MiB}"), [d], work / f"mfds{size // MiB}", 1, sz,
            check="dicomsafe", expect=1)
        if size <= GiB or args.floor_big:
            add(f"rss-pydicom-{size // MiB}M", f"bare pydicom, one {human_bytes(size)} multi-frame", "rss",
                [py, bench, "_floor", str(d), str(work / f"mfpy{size // MiB}")], [d], work / f"mfpy{size // MiB}", 1, sz,
                expect=1)

    # (e) encryption of one large file
    enc_in = mf_files.get(sizes.encrypt) or build_mf(data / f"enc-{sizes.encrypt // MiB}M", sizes.encrypt)
    eb = enc_in.stat().st_size
    age_ct = data / "enc-input.age"
    aes_ct = data / "enc-input.dsa"
    if not age_ct.exists():
        subprocess.run(["age", "-r", recipient, "-o", str(age_ct), str(enc_in)], check=True)
    if not aes_ct.exists():
        subprocess.run([ds, "encrypt", "-r", recipient, "--format", "aes", "-o", str(aes_ct), str(enc_in)], check=True)
    w = work
    add("enc-cp", "cp (one file)", "crypto", ["cp", str(enc_in), str(w / "enc.cp")], [enc_in], w / "enc.cp", 1, eb, check="file")
    # dicomsafe fsyncs every output before its rename (a crash must not leave a half-written file
    # under the final name); neither cp nor age does. This row is the durable copy, for context.
    add("enc-cp-sync", "cp + sync of the copy (durable copy)", "crypto",
        ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(enc_in), str(w / "enc.cps")],
        [enc_in], w / "enc.cps", 1, eb, check="file")
    add("enc-age", "age -e (age CLI)", "crypto", ["age", "-r", recipient, "-o", str(w / "enc.age"), str(enc_in)],
        [enc_in], w / "enc.age", 1, eb, check="file")
    add("enc-dicomsafe-age", "dicomsafe encrypt --format age", "crypto",
        [ds, "encrypt", "-r", recipient, "--format", "age", "-o", str(w / "enc.ds.age"), str(enc_in)],
        [enc_in], w / "enc.ds.age", 1, eb, check="file")
    add("enc-dicomsafe-aes", "dicomsafe encrypt --format aes", "crypto",
        [ds, "encrypt", "-r", recipient, "--format", "aes", "-o", str(w / "enc.ds.dsa"), str(enc_in)],
        [enc_in], w / "enc.ds.dsa", 1, eb, check="file")
    add("dec-age", "age -d (age CLI)", "crypto", ["age", "-d", "-i", str(identity), "-o", str(w / "dec.age"), str(age_ct)],
        [age_ct], w / "dec.age", 1, eb, check="file")
    add("dec-dicomsafe-age", "dicomsafe decrypt, age format (file made by the age CLI)", "crypto",
        [ds, "decrypt", "-i", str(identity), "-o", str(w / "dec.ds.age"), str(age_ct)],
        [age_ct], w / "dec.ds.age", 1, eb, check="file")
    add("dec-dicomsafe-aes", "dicomsafe decrypt, aes format", "crypto",
        [ds, "decrypt", "-i", str(identity), "-o", str(w / "dec.ds.dsa"), str(aes_ct)],
        [aes_ct], w / "dec.ds.dsa", 1, eb, check="file")
    return cases


# ---------------------------------------------------------------------------------------------
# Profile
# ---------------------------------------------------------------------------------------------


def profile_run(sizes: Sizes, out: Path, py: str) -> dict:
    """cProfile of one single-process dicomsafe run over ``profile_files`` CT files."""
    import pstats

    data = out / "data" / f"ct{sizes.profile_files}"
    build_ct(data, sizes.profile_files, sizes.patients)
    dst = out / "work" / "profile"
    remove(dst)
    prof = out / "dicomsafe.prof"
    secret = out / "keys" / "project.secret"
    warm([data])
    cmd = [py, "-m", "cProfile", "-o", str(prof), "-m", "dicomsafe", "-q", "deidentify", str(data), str(dst),
           "--profile", "basic", "--secret-file", str(secret), "--quarantine", str(out / "work" / "quarantine")]
    if dicomsafe_has_jobs(str(Path(py).parent / "dicomsafe")):
        cmd += ["--jobs", "1"]  # a pool's workers are invisible to cProfile in the parent
    sec, rss, rc, _ = timed(cmd, out / "bench.log")
    st = pstats.Stats(str(prof))
    total = st.total_tt
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
        rows.append({"func": f"{_short(fn)}:{line}({name})" if fn != "~" else name, "ncalls": nc, "tottime": tt, "cumtime": ct})
    by_tot = sorted(rows, key=lambda r: -r["tottime"])[:20]
    by_cum = sorted(rows, key=lambda r: -r["cumtime"])[:40]
    with open(out / "profile.txt", "w") as fh:
        st.stream = fh
        st.sort_stats("cumulative").print_stats(60)
        st.sort_stats("tottime").print_stats(40)
    remove(dst)
    return {"files": sizes.profile_files, "seconds": sec, "rc": rc, "total_tt": total,
            "by_tottime": by_tot, "by_cumtime": by_cum}


def _short(fn: str) -> str:
    if "site-packages/" in fn:
        return fn.split("site-packages/", 1)[1]
    if "/dicomsafe/" in fn:
        return "dicomsafe/" + fn.rsplit("/dicomsafe/", 1)[1]
    m = re.search(r"lib/python3\.\d+/(.*)$", fn)
    if m:
        return m.group(1)
    return "" if fn == "~" else fn


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _fmt(v: float, digits: int = 1) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a: dict | None, b: dict | None, key: str) -> str:
    if not a or not b or not b.get(key):
        return "–"
    return f"{a[key] / b[key]:.2f}×"


def round_ratios(res: dict, fast: str, slow: str) -> str:
    """Throughput of ``fast`` over ``slow`` (same files) per round, and best of the rounds.

    Why beside the median: runs are interleaved, so one round's two runs saw the same machine;
    this VM's CPU time for identical work varied by 40% between rounds of one run, and a ratio
    of two medians can pair a quiet run with a loaded one. The verdict stays on the medians.
    """
    runs = {c["key"]: c.get("runs") or [] for c in res["cases"]}
    a, b = runs.get(fast, []), runs.get(slow, [])
    if not a or len(a) != len(b) or not all(r.get("ok") and r.get("seconds") for r in a + b):
        return ""
    per = ", ".join(f"{rb['seconds'] / ra['seconds']:.2f}×" for ra, rb in zip(a, b))
    best = min(r["seconds"] for r in b) / min(r["seconds"] for r in a)
    return f"per round {per}; best of {len(a)} each {best:.2f}×"


def targets(res: dict) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for the issue's target lines, computed from the medians."""
    m = {c["key"]: c["median"] for c in res["cases"]}
    out = []
    floor = m.get("pydicom")
    j1 = m.get("dicomsafe")  # --jobs 1 when the batch layer has it
    if floor and j1:
        r = j1["files_per_s"] / floor["files_per_s"]
        rc = j1["cpu_files_per_s"] / floor["cpu_files_per_s"] if floor.get("cpu_files_per_s") else 0.0
        detail = round_ratios(res, "dicomsafe", "pydicom")
        out.append(("dicomsafe single process ≥ 0.7× bare pydicom read+write (files/s)",
                    f"{r:.2f}× wall ({rc:.2f}× by CPU time{'; ' + detail if detail else ''})",
                    "met" if r >= 0.7 else "not met"))
        for key, label in (("pydicom-reread", "read+write+re-read of the output's text values"),
                           ("pydicom-durable", "the same + SHA-256 + fsync of every output")):
            if m.get(key):
                out.append((f"(context) pydicom {label} vs bare read+write",
                            f"{m[key]['files_per_s'] / floor['files_per_s']:.2f}×",
                            "not a target: a floor for any pydicom tool that does as much"))
        if m.get("pydicom-durable"):
            out.append(("(context) dicomsafe single process vs that last floor (the I/O the "
                        "non-negotiables require, without de-identification)",
                        f"{j1['files_per_s'] / m['pydicom-durable']['files_per_s']:.2f}×",
                        "not a target: proposed restatement of the 0.7× target"))
    j2 = m.get("dicomsafe-j2")
    if j2 and j1:
        r = j2["files_per_s"] / j1["files_per_s"]
        detail = round_ratios(res, "dicomsafe-j2", "dicomsafe")
        out.append(("--jobs 2 ≥ 1.8× --jobs 1", f"{r:.2f}×" + (f" ({detail})" if detail else ""),
                    "met" if r >= 1.8 else "not met"))
    elif m.get("dicomsafe-batch-j1") and m.get("dicomsafe-batch-j2"):
        r = m["dicomsafe-batch-j2"]["files_per_s"] / m["dicomsafe-batch-j1"]["files_per_s"]
        out.append(("--jobs 2 ≥ 1.8× --jobs 1 (batch layer through its API: the CLI option was not wired yet)",
                    f"{r:.2f}×", "met" if r >= 1.8 else "not met"))
    else:
        out.append(("--jobs 2 ≥ 1.8× --jobs 1", "not measured", "n/a: --jobs is not on main at run time"))
    for prefix, what in (("scale-dicomsafe", "files"), ("small-dicomsafe", "small files")):
        scale = sorted(((c["n_files"], c["median"]) for c in res["cases"]
                        if c["median"] and (c["key"].startswith(prefix) or (prefix == "scale-dicomsafe"
                                                                             and c["key"] == "dicomsafe"))),
                       key=lambda t: t[0])
        if len(scale) >= 2:
            lo, hi = scale[0], scale[-1]
            grow = hi[1]["maxrss_mib"] / lo[1]["maxrss_mib"]
            out.append((f"peak RSS flat in file count ({lo[0]:,} → {hi[0]:,} {what})",
                        f"{lo[1]['maxrss_mib']:.0f} → {hi[1]['maxrss_mib']:.0f} MiB ({grow:.2f}×)",
                        "met" if grow <= 1.15 else "not met"))
    rss = sorted(((c["n_bytes"], c["median"]) for c in res["cases"] if c["key"].startswith("rss-dicomsafe") and c["median"]),
                 key=lambda t: t[0])
    if rss:
        size, med = rss[-1]
        label = f"peak RSS < 150 MiB per worker on a 2 GB file (largest measured: {human_bytes(size)})"
        out.append((label, f"{med['maxrss_mib']:.0f} MiB",
                    ("met" if med["maxrss_mib"] < 150 else "not met") + ("" if size >= 2 * GiB - MiB else " (smaller file)")))
    if m.get("enc-dicomsafe-age") and m.get("enc-age"):
        r = m["enc-dicomsafe-age"]["mb_per_s"] / m["enc-age"]["mb_per_s"]
        out.append(("encryption, age format ≥ 1.0× the age CLI", f"{r:.2f}×", "met" if r >= 1.0 else "not met"))
    if m.get("enc-dicomsafe-aes") and m.get("enc-cp"):
        r = m["enc-dicomsafe-aes"]["mb_per_s"] / m["enc-cp"]["mb_per_s"]
        out.append(("encryption, aes format ≥ 0.8× cp", f"{r:.2f}×", "met" if r >= 0.8 else "not met"))
        if m.get("enc-cp-sync"):
            r2 = m["enc-dicomsafe-aes"]["mb_per_s"] / m["enc-cp-sync"]["mb_per_s"]
            out.append(("(context) aes format vs a durable copy (cp + sync)", f"{r2:.2f}×", "not a target"))
    return out


def scale_note(res: dict) -> str:
    """Why the 20,000-file point is missing (when it is), with the cost estimated from this run."""
    if 20000 in res["sizes"]["scale_files"]:
        return ""
    m = {c["key"]: c for c in res["cases"] if c["median"]}
    per_round = sum(c["median"]["seconds"] for c in m.values() if c["group"] == "files")
    est = f"about {10 * per_round * res['runs'] / 60:.0f} min for every tool, " if per_round else ""
    return ("20,000 files were not run (`scripts/bench --full` adds them for dicomsafe and bare pydicom): "
            f"10 GB more corpus plus 10 GB of output per run, and {est}on a 2-core machine shared with the "
            "rest of the team while it was measured. The 200 → 2,000 rows show whether the rate and RSS stay flat; "
            "the small-file rows take memory to 20,000 files (tiny pixel data, same headers and PHI).")


def render(res: dict) -> str:
    mi = res["machine"]
    m = {c["key"]: c["median"] for c in res["cases"]}
    L: list[str] = []
    L.append(f"Measured {res['started']} ({res['mode']} mode, {res['runs']} runs per measurement, median shown; "
             f"{res['elapsed_s'] / 60:.0f} min in all).")
    L.append("")
    L.append("**Machine.** " + f"{mi['nproc']} CPUs ({mi['cpu']}), {mi['memory']} RAM, Linux {mi['kernel']}, "
             f"disk {mi['disk']}. Python {mi['python']}, pydicom {mi['pydicom']} (dicomsafe venv); peers' venv: "
             + ", ".join(f"{k} {v}" for k, v in mi["peers_venv"].items()) + f". {mi['age']} (age); "
             f"{mi['dcmodify']}; {mi['gdcmanon']}.")
    la0, la1 = mi["loadavg_start"], res.get("loadavg_end", [0, 0, 0])
    L.append("")
    L.append(f"**Load.** 1-minute load average {la0[0]:.1f} at the start and {la1[0]:.1f} at the end. "
             + res.get("load_note", ""))
    L.append("")
    if res.get("deletes") == "after each run":
        L.append("**Deletes.** One round's outputs did not fit on the disk, so each output was deleted right "
                 "after its run and the next tool may have paid for recently deleted inodes (see Method).")
        L.append("")
    for rr in res.get("reruns", []):
        L.append(f"**Re-measured** {rr['started']} (same machine, 1-minute load {rr['loadavg'][0][0]:.1f} → "
                 f"{rr['loadavg'][1][0]:.1f}): {', '.join('`' + k + '`' for k in rr['keys'])} — {rr['why']}")
        L.append("")
    L.append(f"**Command.** `{res['command']}`")
    L.append("")
    L.append(f"**Verification.** {res['verify_note']}")
    L.append("")
    floor, cp = m.get("pydicom"), m.get("cp")
    L.append(f"### De-identification of {res['sizes']['ct_files']:,} single-frame CT files "
             f"({res['ct_bytes'] / 1e9:.2f} GB, 512×512 16-bit, fake PHI)")
    L.append("")
    L.append("| tool | files/s | MB/s | CPU ms/file | peak RSS (MiB) | vs bare pydicom (wall) | vs bare pydicom (CPU) "
             "| vs cp | files with planted PHI left | note |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for c in res["cases"]:
        if c["group"] != "files":
            continue
        med = c["median"]
        note = "; ".join(sorted({r["note"] for r in c["runs"] if r["note"]}))
        res_ = c["info"].get("residue")
        left = "–" if not res_ else (f"{res_['files']:,}" + (" (" + ", ".join(f"{k} {v:,}" for k, v in
                                                                      sorted(res_["by_kind"].items())) + ")"
                                                            if res_["files"] else ""))
        if not med:
            L.append(f"| {c['label']} | failed | | | | | | | {left} | {note} |")
            continue
        L.append(f"| {c['label']} | {_fmt(med['files_per_s'])} | {_fmt(med['mb_per_s'])} "
                 f"| {1000 * med['cpu_s'] / c['n_files']:.1f} | {med['maxrss_mib']:.0f} "
                 f"| {ratio(med, floor, 'files_per_s')} | {ratio(med, floor, 'cpu_files_per_s')} "
                 f"| {ratio(med, cp, 'files_per_s')} | {left} | {note} |")
    L.append("")
    L.append("### How cost grows with the number of files")
    L.append("")
    L.append("| run | files | seconds | files/s | CPU ms/file | peak RSS (MiB) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in sorted((c for c in res["cases"] if c["group"] == "scale" or c["key"] in ("dicomsafe", "pydicom")),
                    key=lambda c: (c["key"].startswith("small-"),
                                   c["key"].replace("scale-", "").replace("small-", "").split("-")[0], c["n_files"])):
        med = c["median"]
        if med:
            L.append(f"| {c['label'] if c['group'] == 'scale' else c['label'].split(' (')[0] + ', ' + str(c['n_files']) + ' files'} "
                     f"| {c['n_files']:,} | {med['seconds']:.1f} | {_fmt(med['files_per_s'])} "
                     f"| {1000 * med['cpu_s'] / c['n_files']:.1f} | {med['maxrss_mib']:.0f} |")
    if res.get("scale_note"):
        L.append("")
        L.append(res["scale_note"])
    L.append("")
    L.append("### Peak RSS vs file size (one multi-frame file)")
    L.append("")
    L.append("| run | file size | seconds | MB/s | CPU s | peak RSS (MiB) |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in sorted((c for c in res["cases"] if c["group"] == "rss"), key=lambda c: (c["key"].split("-")[1], c["n_bytes"])):
        med = c["median"]
        if med:
            L.append(f"| {c['label']} | {human_bytes(c['n_bytes'])} | {med['seconds']:.1f} | {_fmt(med['mb_per_s'])} "
                     f"| {med['cpu_s']:.1f} | {med['maxrss_mib']:.0f} |")
        else:
            L.append(f"| {c['label']} | {human_bytes(c['n_bytes'])} | failed | | | |")
    if res.get("rss_note"):
        L.append("")
        L.append(res["rss_note"])
    L.append("")
    enc = next((c for c in res["cases"] if c["key"] == "enc-cp"), None)
    L.append(f"### Encryption and decryption of one {human_bytes(enc['n_bytes']) if enc else '?'} file")
    L.append("")
    L.append("| tool | seconds | MB/s | CPU s | peak RSS (MiB) | vs age CLI | vs cp |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in res["cases"]:
        if c["group"] != "crypto":
            continue
        med = c["median"]
        ref = m.get("dec-age" if c["key"].startswith("dec") else "enc-age")
        if med:
            L.append(f"| {c['label']} | {med['seconds']:.2f} | {_fmt(med['mb_per_s'])} | {med['cpu_s']:.2f} "
                     f"| {med['maxrss_mib']:.0f} | {ratio(med, ref, 'mb_per_s')} | {ratio(med, m.get('enc-cp'), 'mb_per_s')} |")
        else:
            L.append(f"| {c['label']} | failed | | | | | |")
    L.append("")
    L.append("### Targets (issue 8)")
    L.append("")
    L.append("| target | measured | status |")
    L.append("| --- | --- | --- |")
    for t, v, s in res["targets"]:
        L.append(f"| {t} | {v} | {s} |")
    L.append("")
    L.append("![throughput per tool](benchmarks.png)" if res.get("doc_is_docs") else "![throughput per tool](benchmarks.png)")
    return "\n".join(L) + "\n"


def render_profile(p: dict) -> str:
    L = [f"cProfile of one single-process `dicomsafe deidentify --profile basic` run over {p['files']} CT files "
         f"({p['seconds']:.1f} s wall under the profiler, {p['total_tt']:.1f} s profiled). Top functions by own time:",
         "", "| function | calls | own s | cumulative s |", "| --- | ---: | ---: | ---: |"]
    for r in p["by_tottime"][:15]:
        L.append(f"| `{r['func']}` | {r['ncalls']:,} | {r['tottime']:.2f} | {r['cumtime']:.2f} |")
    L += ["", "Largest cumulative costs inside dicomsafe and pydicom:", "",
          "| function | calls | cumulative s | share |", "| --- | ---: | ---: | ---: |"]
    shown = 0
    for r in p["by_cumtime"]:
        f = r["func"]
        if not (f.startswith("dicomsafe/") or f.startswith("pydicom/")):
            continue
        L.append(f"| `{f}` | {r['ncalls']:,} | {r['cumtime']:.2f} | {100 * r['cumtime'] / p['total_tt']:.0f}% |")
        shown += 1
        if shown >= 18:
            break
    return "\n".join(L) + "\n"


def splice(doc: Path, start: str, end: str, body: str) -> None:
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{body}{end}{tail}")


def merge_results(old: dict, new: dict, why: str) -> dict:
    """Cases (and the profile) measured now replace those of the same key in an earlier run."""
    fresh = {c["key"]: c for c in new["cases"]}
    cases = [fresh.pop(c["key"], c) for c in old["cases"]]
    cases += list(fresh.values())
    merged = dict(old, cases=cases)
    if new.get("profile"):
        merged["profile"] = new["profile"]
    keys = [c["key"] for c in new["cases"]] + (["profile"] if new.get("profile") else [])
    merged.setdefault("reruns", []).append({"started": new["started"], "keys": keys, "why": why,
                                             "loadavg": [new["machine"]["loadavg_start"], new["loadavg_end"]]})
    return merged


def publish(res: dict, doc: Path, out: Path, bench_python: str) -> None:
    """results.json → chart (drawn in the peers' venv, which has matplotlib) + doc sections."""
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    png = doc.parent / "benchmarks.png"
    subprocess.run([bench_python, str(Path(__file__).resolve()), "_chart", str(out / "results.json"), str(png)],
                   check=False)
    splice(doc, MARK_START, MARK_END, render(res))
    if res.get("profile"):
        splice(doc, PROF_START, PROF_END, render_profile(res["profile"]))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv and argv[0] in PRIVATE:
        return PRIVATE[argv[0]](argv[1:])
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for development (not for publishing)")
    ap.add_argument("--full", action="store_true", help="also 20,000 files (needs ~10 GB and a long time)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out", help="work directory (default ./bench-out)")
    ap.add_argument("--runs", type=int, help="runs per measurement (default 3; 2 with --quick)")
    ap.add_argument("--only", action="append", default=[], metavar="REGEX", help="measure only matching cases")
    ap.add_argument("--skip", action="append", default=[], metavar="REGEX", help="skip matching cases")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    ap.add_argument("--floor-big", action="store_true", help="bare pydicom also on multi-frame files > 1 GiB")
    ap.add_argument("--doc", type=Path, help="markdown to update (default docs/benchmarks.md; "
                                             "OUT/benchmarks.md with --quick)")
    ap.add_argument("--keep-data", action="store_true", help="keep the generated corpora and outputs")
    ap.add_argument("--prepare-only", action="store_true",
                    help="build the inputs (cached in OUT/data) and stop: lets the timed run start sooner")
    ap.add_argument("--bench-python", default=str(ROOT / ".venv-bench" / "bin" / "python"),
                    help="python of the peers' venv (deid, dicognito, dicom-anonymizer, matplotlib)")
    ap.add_argument("--load-note", default="", help="free text about other load on the machine, for the doc")
    ap.add_argument("--merge", metavar="WHY",
                    help="re-measure only the selected cases (--only) and merge them into OUT/results.json; "
                         "WHY is printed with the results")
    ap.add_argument("--with-profile", action="store_true", help="run the cProfile step even with --only")
    ap.add_argument("--render-only", action="store_true",
                    help="re-write the doc and chart from OUT/results.json without measuring")
    args = ap.parse_args(argv)

    if args.render_only:
        out = args.out.resolve()
        res = json.loads((out / "results.json").read_text())
        doc = args.doc or (out / "benchmarks.md" if res["mode"] == "quick" else ROOT / "docs" / "benchmarks.md")
        res["scale_note"] = scale_note(res)
        res["targets"] = targets(res)
        publish(res, doc, out, args.bench_python)
        return 0
    mode = "quick" if args.quick else "full" if args.full else "standard"
    sizes = Sizes.for_mode(mode)
    if args.runs:
        sizes.runs = args.runs
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    doc = args.doc or (out / "benchmarks.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    py = sys.executable
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    log = out / "bench.log"
    log.write_text("")

    info = machine_info(out, args.bench_python)
    need = sizes.ct_files * 530_000 * 3 + sum(sizes.multiframe) * 2 + sizes.encrypt * 4
    if shutil.disk_usage(out).free < need * 0.6:
        print(f"bench: only {shutil.disk_usage(out).free / 1e9:.0f} GB free; multi-frame sizes that do not fit are skipped",
              file=sys.stderr)
    cases = plan(args, sizes, out, py, args.bench_python)
    if args.prepare_only:
        build_ct(out / "data" / f"ct{sizes.profile_files}", sizes.profile_files, sizes.patients)
        print(f"inputs ready in {out / 'data'}; {len(cases)} cases planned")
        return 0
    print(f"measuring {len(cases)} cases × {sizes.runs} runs (interleaved) …", flush=True)
    defer = defer_deletes(cases, out)
    deferred: list[Path] = []
    for r in range(sizes.runs):
        rest_after_deletes(deferred)
        for c in cases:
            run = run_case(c, log)
            c.runs.append(run)
            print(f"  run {r + 1}/{sizes.runs} {c.key:<24} {run.seconds:8.2f} s (cpu {run.cpu_s:7.2f} s) "
                  f"{run.maxrss_mib:7.0f} MiB"
                  f"{'' if run.ok else '  FAILED ' + run.note}", flush=True)
            if c.group in MANY_FILES and (defer or (c.group == "files" and args.keep_data)):
                deferred.append(c.out)  # removed before the next round (or kept: --keep-data)
            else:
                remove(c.out)
    if not args.keep_data:
        for p in deferred:
            remove(p)
    prof = None
    if not args.no_profile and (not args.only or args.with_profile):
        build_ct(out / "data" / f"ct{sizes.profile_files}", sizes.profile_files, sizes.patients)
        print(f"profiling dicomsafe on {sizes.profile_files} files …", flush=True)
        prof = profile_run(sizes, out, py)

    has_verify = subprocess.run([py, "-c", "import dicomsafe.verify"], capture_output=True).returncode == 0
    res = {
        "started": started,
        "mode": mode,
        "runs": sizes.runs,
        "sizes": asdict(sizes),
        "command": "scripts/bench" + (" --quick" if args.quick else "") + (" --full" if args.full else ""),
        "machine": info,
        "loadavg_end": os.getloadavg(),
        "load_note": args.load_note,
        "deletes": "between rounds, then a rest" if defer else "after each run",
        "verify_note": ("on: every output is re-read and checked for the input's PHI values before it is "
                        "committed (dicomsafe.verify), as in production." if has_verify else
                        "dicomsafe.verify was not on main at run time: outputs were NOT verified."),
        "ct_bytes": next((c.n_bytes for c in cases if c.group == "files"), 0),
        "cases": [{"key": c.key, "label": c.label, "group": c.group, "n_files": c.n_files, "n_bytes": c.n_bytes,
                   "runs": [asdict(r) for r in c.runs], "median": c.median(),
                   "info": {k: v for k, v in c.info.items() if k not in ("mkdir_out", "needles")}} for c in cases],
        "profile": prof,
    }
    res["elapsed_s"] = time.perf_counter() - t_start
    if args.merge and (out / "results.json").exists():
        res = merge_results(json.loads((out / "results.json").read_text()), res, args.merge)
    res["scale_note"] = scale_note(res)
    res["targets"] = targets(res)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))

    publish(res, doc, out, args.bench_python)
    if not args.keep_data:
        remove(out / "data")
        remove(out / "work")
    print(f"results: {out / 'results.json'}; doc: {doc}; chart: {doc.parent / 'benchmarks.png'}")
    print("\n".join(f"  {t}: {v} — {s}" for t, v, s in res["targets"]))
    return 0


# ---------------------------------------------------------------------------------------------
# Private sub-commands (the measured programs, and the chart)
# ---------------------------------------------------------------------------------------------


def _read_each(src: Path, dst: Path):
    """(dataset, output path) of every .dcm under ``src``, read with pydicom; the output's folder exists."""
    import pydicom

    for f in files_under(src):
        if not f.name.endswith(".dcm"):
            continue
        o = dst / f.relative_to(src)
        o.parent.mkdir(parents=True, exist_ok=True)
        yield pydicom.dcmread(f), o


def _fsync_all(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def _floor(argv: list[str]) -> int:
    """Bare pydicom: dcmread + save_as of every file, one process — the floor for pydicom tools."""
    for ds, o in _read_each(Path(argv[0]), Path(argv[1])):
        ds.save_as(o)
    return 0


#: VRs dicomsafe's verifier never decodes (numbers, times, binary measurements): verify._SKIP_VRS.
_UNSEARCHED_VRS = frozenset({"OW", "OF", "OD", "OL", "OV", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV",
                             "AT", "TM", "DS", "IS", "AS"})


def _floor_reread(argv: list[str]) -> int:
    """Bare pydicom plus the least a tool that checks its own output must do: read every written
    file back and decode every value a text search looks at (pixel data and the VRs dicomsafe's
    verifier skips excepted) — no de-identification, no search. With ``--durable`` also what
    dicomsafe's other non-negotiables cost: a SHA-256 of each output (ledger, manifest; computed
    from the bytes written, not read back) and an fsync of every output before it counts (per
    32 files, as dicomsafe batches them)."""
    import hashlib

    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO

    def decode_text(ds: Dataset) -> None:
        for tag in ds.keys():
            if tag == 0x7FE00010 or getattr(ds.get_item(tag), "VR", None) in _UNSEARCHED_VRS:
                continue
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value:
                    decode_text(item)

    durable = "--durable" in argv
    src, dst = (Path(a) for a in argv if a != "--durable")
    unsynced: list[Path] = []
    for ds, o in _read_each(src, dst):
        if durable:
            buf = DicomBytesIO()
            ds.save_as(buf)
            data = buf.getvalue()
            hashlib.sha256(data).digest()
            o.write_bytes(data)
            unsynced.append(o)
            if len(unsynced) == 32:
                _fsync_all(unsynced)
                unsynced.clear()
        else:
            ds.save_as(o)
        decode_text(pydicom.dcmread(o, defer_size="2 MB"))
    _fsync_all(unsynced)
    return 0


def _deid(argv: list[str]) -> int:
    """deid with its default recipe (deid.dicom), through its Python API, recipe parsed once."""
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    src, dst = Path(argv[0]), Path(argv[1])
    dst.mkdir(parents=True, exist_ok=True)
    files = [str(f) for f in files_under(src) if f.name.endswith(".dcm")]
    recipe = DeidRecipe()
    replace_identifiers(dicom_files=files, deid=recipe, save=True, output_folder=str(dst), overwrite=True)
    return 0


def _noverify(argv: list[str]) -> int:
    """dicomsafe's pipeline with verification switched off — a diagnostic row only, to show what
    verification costs; no user-facing option does this (verification is never optional)."""
    from dicomsafe.pipeline import RunSettings, deidentify_tree
    from dicomsafe.profiles import load_profile
    from dicomsafe.pseudonyms import load_secret

    settings = RunSettings(src=Path(argv[0]), dst=Path(argv[1]), profile=load_profile("basic"),
                           secret=load_secret(argv[2]), quarantine=Path(argv[3]), quiet=True, verify=False)
    deidentify_tree(settings)
    return 0


def _batch(argv: list[str]) -> int:
    """The batch layer (process pool, ledger, audit log) with ``jobs`` workers, through its API."""
    from dicomsafe.batchrun import run_deidentify
    from dicomsafe.pipeline import RunSettings
    from dicomsafe.profiles import load_profile
    from dicomsafe.pseudonyms import load_secret

    settings = RunSettings(src=Path(argv[0]), dst=Path(argv[1]), profile=load_profile("basic"),
                           secret=load_secret(argv[2]), quarantine=Path(argv[3]), quiet=True)
    run_deidentify(settings, jobs=int(argv[4]), progress=False)
    return 0


def _chart(argv: list[str]) -> int:
    """Throughput per tool (files/s for the CT corpus; MB/s for encryption), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(Path(argv[0]).read_text())
    files = [c for c in res["cases"] if c["group"] == "files" and c["median"]]
    crypto = [c for c in res["cases"] if c["group"] == "crypto" and c["median"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.25, 1]})
    files.sort(key=lambda c: c["median"]["files_per_s"])
    names = [c["label"].split(" (")[0] for c in files]
    vals = [c["median"]["files_per_s"] for c in files]
    colors = ["#9fd3a8" if c["key"] == "dicomsafe-noverify" else "#1b7f3b" if c["key"].startswith("dicomsafe")
              else "#888888" if c["key"] in ("cp", "pydicom", "pydicom-reread", "pydicom-durable") else "#3465a4" for c in files]
    a.barh(names, vals, color=colors)
    for y, v in enumerate(vals):
        a.text(v, y, f" {v:,.0f}" if v >= 10 else f" {v:.1f}", va="center", fontsize=8)
    a.set_xscale("log")
    a.set_xlabel("files/s (log scale, higher is better)")
    a.set_title(f"De-identify {res['sizes']['ct_files']:,} CT files (0.5 MB each)")
    crypto.sort(key=lambda c: c["median"]["mb_per_s"])
    names = [c["label"].split(" (")[0] for c in crypto]
    vals = [c["median"]["mb_per_s"] for c in crypto]
    colors = ["#1b7f3b" if "dicomsafe" in c["key"] else "#888888" if c["key"] == "enc-cp" else "#3465a4" for c in crypto]
    b.barh(names, vals, color=colors)
    for y, v in enumerate(vals):
        b.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    b.set_xlabel("MB/s (higher is better)")
    b.set_title("Encrypt / decrypt one large file")
    fig.suptitle(f"dicomsafe benchmarks — {res['machine']['nproc']} CPUs, {res['started']} ({res['mode']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(argv[1], dpi=110)
    return 0


PRIVATE = {"_floor": _floor, "_floor_reread": _floor_reread, "_deid": _deid, "_noverify": _noverify, "_batch": _batch, "_chart": _chart}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
