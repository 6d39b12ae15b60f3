"""Executors: process pool and Dask LocalCluster run the same units, results reach one writer."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dicomsafe.errors import ConfigError
from dicomsafe.executors import UnitFailure, run_units

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def work(unit, ctx):
    """A picklable unit function: writes one file per unit (like a study) and returns digests."""
    if unit == "bad":
        raise ValueError("secret PHI value DOE^JOHN")
    data = hashlib.sha256((ctx["salt"] + unit).encode()).hexdigest().encode()
    out = os.path.join(ctx["dst"], unit + ".out")
    with open(out + ".tmp", "wb") as fh:
        fh.write(data)
    os.replace(out + ".tmp", out)
    return {"unit": unit, "pid": os.getpid(), "digest": hashlib.sha256(data).hexdigest()}


def _collect(tmp_path, **kw):
    got = {}
    pids = set()

    def on_result(unit, res):
        assert unit not in got
        got[unit] = res
        pids.add(os.getpid())

    units = [f"u{i:03d}" for i in range(12)]
    n = run_units(work, units, {"salt": "s", "dst": str(tmp_path)}, on_result, **kw)
    assert n == len(units)
    assert pids == {os.getpid()}  # one writer: the parent
    return got


def test_inline_and_pool_give_same_results(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    r1 = _collect(a, jobs=1)
    r2 = _collect(b, jobs=2)
    assert {u: r["digest"] for u, r in r1.items()} == {u: r["digest"] for u, r in r2.items()}
    assert {r["pid"] for r in r1.values()} == {os.getpid()}
    assert os.getpid() not in {r["pid"] for r in r2.values()}  # really ran in workers
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


@pytest.mark.parametrize("jobs", [1, 2])
def test_failing_unit_becomes_a_phi_free_failure_record(tmp_path, jobs):
    got = {}
    run_units(work, ["ok1", "bad", "ok2"], {"salt": "s", "dst": str(tmp_path)},
              lambda u, r: got.__setitem__(u, r), jobs=jobs)
    assert isinstance(got["bad"], UnitFailure)
    assert got["bad"].error_type == "ValueError"
    assert "DOE" not in repr(got["bad"])
    assert got["ok1"]["unit"] == "ok1" and got["ok2"]["unit"] == "ok2"


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        run_units(work, [], {}, lambda u, r: None, jobs=0)
    with pytest.raises(ConfigError):
        run_units(work, [], {}, lambda u, r: None, executor="spark")
    with pytest.raises(ConfigError):
        run_units(work, [], {}, lambda u, r: None, executor="dask")


def test_dask_local_cluster_matches_pool(tmp_path):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    a = tmp_path / "pool"
    b = tmp_path / "dask"
    a.mkdir()
    b.mkdir()
    r_pool = _collect(a, jobs=2)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        r_dask = _collect(b, executor="dask", scheduler=cluster.scheduler_address)
    assert {u: r["digest"] for u, r in r_dask.items()} == {u: r["digest"] for u, r in r_pool.items()}
    assert os.getpid() not in {r["pid"] for r in r_dask.values()}
    for p in a.iterdir():
        assert (b / p.name).read_bytes() == p.read_bytes()


SLOW = """
import os, sys, time
sys.path.insert(0, {tests!r})
from dicomsafe.executors import run_units
from dicomsafe.errors import Interrupted
import test_executors_slow as slow

done = []
def on_result(u, r):
    done.append(u)
    with open({log!r}, "a") as fh:
        fh.write(u + "\\n")
    print("result", u, flush=True)
try:
    run_units(slow.slow_work, [f"u{{i:03d}}" for i in range(200)], {{"dst": {dst!r}}}, on_result, jobs=2)
except Interrupted:
    sys.exit(130)
sys.exit(0)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_130(tmp_path, sig):
    dst = tmp_path / "out"
    dst.mkdir()
    log = tmp_path / "done.txt"
    helper = tmp_path / "test_executors_slow.py"
    helper.write_text(textwrap.dedent("""
        import os, time
        def slow_work(unit, ctx):
            time.sleep(0.2)
            out = os.path.join(ctx["dst"], unit)
            with open(out + ".tmp", "wb") as fh:
                fh.write(unit.encode())
            os.replace(out + ".tmp", out)
            return unit
    """))
    script = SLOW.format(tests=str(tmp_path), log=str(log), dst=str(dst))
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for _ in range(3):
        assert p.stdout.readline().startswith("result")
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    recorded = log.read_text().split()
    assert 3 <= len(recorded) < 200
    # every recorded unit has its output; nothing half-written is left as a final file
    for u in recorded:
        assert (dst / u).read_bytes() == u.encode()
    finals = {p.name for p in dst.iterdir() if not p.name.endswith(".tmp")}
    assert set(recorded) <= finals
    assert not any(p.name.endswith(".tmp") for p in dst.iterdir())


def env_of(unit, ctx):
    """Unit function: what the worker sees of one environment variable."""
    return os.environ.get(unit)


def test_pool_workers_see_the_parents_current_environment(monkeypatch):
    """Forkserver workers would otherwise see the server's environment, frozen when it started
    (the server is started once per process and reused)."""
    from dicomsafe.executors import warm_up

    warm_up()
    monkeypatch.setenv("DICOMSAFE_TEST_ENV", "set-after-the-server-started")
    got = {}
    run_units(env_of, ["DICOMSAFE_TEST_ENV"], None, lambda u, r: got.update({u: r}), jobs=2)
    assert got == {"DICOMSAFE_TEST_ENV": "set-after-the-server-started"}


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver signal dispositions read from /proc")
def test_forkserver_survives_a_stop_signal_and_one_in_the_start_window_is_kept():
    """systemd's stop reaches every process of the job: the forkserver must ignore it (a killed
    server left the coordinator waiting for its workers), and a SIGTERM this process receives
    while it starts the server must still reach its handler afterwards."""
    script = textwrap.dedent("""
        import os, signal, time
        from multiprocessing import forkserver
        from dicomsafe import executors
        got = []
        signal.signal(signal.SIGTERM, lambda *a: got.append("term"))
        start = forkserver.ensure_running
        def start_with_a_stop_in_the_window():
            os.kill(os.getpid(), signal.SIGTERM)
            start()
        forkserver.ensure_running = start_with_a_stop_in_the_window
        executors.warm_up()
        time.sleep(0.2)
        pid = forkserver._forkserver._forkserver_pid
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        state = [l for l in open(f"/proc/{pid}/status") if l.startswith("State:")]
        assert state and "Z" not in state[0].split()[1], state  # gone or a zombie: it died
        print(got)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['term']"


def test_cli_accounts_for_its_workers_cpu(tmp_path):
    """The forkserver is stopped and waited for before the command exits, so the workers' CPU
    time is the command's children's (what `time`, wait4 and the benchmark read). Before, the
    server outlived the command and a --jobs 2 run reported the coordinator's CPU only."""
    import resource

    from dicomsafe.corpus import build_ct_series

    src = tmp_path / "src"
    build_ct_series(src, 120, patients=2)
    secret = tmp_path / "secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": ROOT}

    def cpu_of(jobs: str) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, "-m", "dicomsafe", "-q", "deidentify", str(src), str(tmp_path / f"o{jobs}"),
                               "--profile", "basic", "--secret-file", str(secret), "--quarantine", str(tmp_path / f"q{jobs}"),
                               "--jobs", jobs], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    inline, pooled = cpu_of("1"), cpu_of("2")
    # 120 files are ~0.6 s of one core; the coordinator alone of a pooled run is well under that
    assert pooled >= 0.8 * inline, (inline, pooled)


def test_cli_keeps_numpy_to_one_blas_thread_unless_told_otherwise():
    """Spinning BLAS threads in the command, the forkserver and every worker cost CPU that the
    workers need; a user's own setting wins."""
    code = "import os, dicomsafe.cli, numpy; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "1", out.stderr
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OPENBLAS_NUM_THREADS": "3"},
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "3", out.stderr
