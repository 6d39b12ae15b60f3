"""Shared fixtures: the identified corpus (fake PHI), a pseudonym secret, pydicom's test files.

Why session scope: the corpus is read-only ground truth shared by every area's tests; building it
once per session (per xdist worker) keeps the suite fast. Tests that need to change inputs must
copy them (``fresh_corpus``) — the session corpus must never be modified.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import pytest

from dicomsafe.corpus import Corpus, build_corpus, pydicom_test_files as _pydicom_test_files
from dicomsafe.fsutil import write_secret_file

#: Fixed test secrets, so failures reproduce exactly (never use these for real data).
TEST_SECRET = hashlib.sha256(b"dicomsafe test secret 1").digest()
OTHER_SECRET = hashlib.sha256(b"dicomsafe test secret 2").digest()


def secret_file_bytes(secret: bytes) -> bytes:
    """The pseudonym secret file format (see CORE_API.md): a comment line, then 64 hex chars."""
    return (
        b"# dicomsafe pseudonym secret: 32 random bytes as hex. Guard it like a private key.\n"
        + secret.hex().encode()
        + b"\n"
    )


def _build(path: Path, **kw) -> Corpus:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd files we start from
        return build_corpus(path, **kw)


def _tree_state(root: Path) -> dict[str, str]:
    return {
        os.path.relpath(os.path.join(d, f), root): hashlib.sha256(Path(d, f).read_bytes()).hexdigest()
        for d, _, files in os.walk(root)
        for f in files
    }


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The identified corpus (seed 0, 3 patients). READ-ONLY: copy it before changing anything.

    At the end of the session the tree is compared with its state after the build: any test or
    tool that modified, added or removed a file under the source fails loudly here — a free,
    suite-wide check of "inputs are never modified" (and of temp files left in a source tree).
    """
    c = _build(tmp_path_factory.mktemp("corpus") / "identified", seed=0, patients=3)
    before = _tree_state(c.root)
    yield c
    after = _tree_state(c.root)
    if after != before:
        changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        pytest.fail(
            f"the shared corpus was changed during the session: {len(changed)} modified, "
            f"{len(added)} added, {len(removed)} removed (files under the source tree must never change)",
            pytrace=False,
        )


@pytest.fixture
def fresh_corpus(tmp_path) -> Corpus:
    """A private copy of the corpus for tests that modify or delete inputs."""
    return _build(tmp_path / "identified", seed=0, patients=3)


@pytest.fixture(scope="session")
def secret() -> bytes:
    return TEST_SECRET


@pytest.fixture(scope="session")
def secret_file(tmp_path_factory) -> Path:
    """A 0600 pseudonym secret file holding TEST_SECRET."""
    path = tmp_path_factory.mktemp("keys") / "project.secret"
    write_secret_file(path, secret_file_bytes(TEST_SECRET))
    return path


@pytest.fixture(scope="session")
def other_secret_file(tmp_path_factory) -> Path:
    """A second, different 0600 secret file (for "another secret -> unrelated pseudonyms")."""
    path = tmp_path_factory.mktemp("keys2") / "other.secret"
    write_secret_file(path, secret_file_bytes(OTHER_SECRET))
    return path


@pytest.fixture(scope="session")
def pydicom_test_files() -> list[Path]:
    """Every file shipped in pydicom's test_files and charset_files directories."""
    return _pydicom_test_files()


@pytest.fixture(scope="session")
def mutants(corpus, tmp_path_factory) -> list[Path]:
    """300 seeded hostile mutants of the corpus' small valid files (see dicomsafe.mutants)."""
    from dicomsafe.mutants import build_mutants

    src = [p for p in corpus.with_outcome("written") if os.path.getsize(p) < 64 * 1024]
    return build_mutants(src, tmp_path_factory.mktemp("mutants"), n=300, seed=0)
