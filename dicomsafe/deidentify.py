"""De-identify one file: read safely, transform by the compiled plan, write to staging, verify.

This is the worker side of a run. It never touches the final output tree: it returns a
:class:`FileResult` whose staged file the single writer (dicomsafe.pipeline) commits with a
rename, so parallel workers cannot race on an output path and a duplicate SOP Instance UID is
caught in one place.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from . import __version__, dicomio, rawlane, text
from . import verify as phi_verify
from .errors import InputFileError, OutputError
from .fsutil import sync_files
from .profiles import Profile
from .pseudonyms import Pseudonymizer
from .rawds import NotEligible
from .rules import CID7050, Context, Plan, compile_plan

log = logging.getLogger(__name__)

@dataclass
class FileResult:
    """What happened to one input. ``reason`` is a PHI-free code (never a value)."""

    file_id: str
    outcome: str  # "written" | "quarantined" | "skipped"
    reason: str | None = None
    staged: str | None = None  # path of the verified staged output (worker → writer)
    out_relpath: str | None = None
    preamble_threat: str | None = None
    src_path: str | None = None  # operator side only: goes to the quarantine index, never to DST
    size: int = 0
    sha256: str | None = None  # of the staged output, computed while writing it
    details: list[str] = field(default_factory=list)  # PHI-free finding paths/kinds
    pixel: Any = None  # PixelOutcome with before/after thumbnails, for the operator's review page


def sync_staged(results: Iterable[FileResult]) -> None:
    """fsync the staged outputs among ``results``: on disk when this returns (OutputError if not)."""
    try:
        sync_files(r.staged for r in results if r.outcome == "written" and r.staged)
    except OSError as exc:
        raise OutputError(f"cannot flush staged outputs to disk ({exc.strerror})") from None


class Deidentifier:
    """Everything needed to de-identify files for one profile and one secret."""

    def __init__(self, profile: Profile, secret: bytes, *, verify: bool = True, raw_lane: bool = True):
        self.profile = profile
        self.plan: Plan = compile_plan(profile)
        self.pseudo = Pseudonymizer(secret)
        self.verify = verify
        opts = set(profile.options)
        self.ignore_kinds = phi_verify.ignore_kinds_for_options(opts)
        # Attributes the profile truncates to the year: YYYY0101 there is the profile's own output,
        # not a leak, even when the original date was 1 January (verify.find_in_dataset).
        self.year_tags = frozenset(tag for tag, rule in self.plan.exact.items() if rule.action == "year")
        self.needs_shift = "retain-longitudinal-modified-dates" in opts or any(
            o.action == "shift" for o in profile.overrides)
        # Free text kept by C actions can name the patient the way a *sibling* file does (a
        # transliterated PatientName here, the Latin spelling in another file of the study), so
        # profiles that clean text harvest identity per study, not per file.
        self.pool_study_identity = bool(opts & {"clean-descriptors", "clean-structured-content",
                                                "clean-graphics", "retain-device-identity",
                                                "retain-patient-characteristics"})
        self._method = _method_text(profile)
        self._codes = _method_codes(profile)
        # The raw lane (dicomsafe.rawlane) runs the same engine without pydicom Datasets on the
        # common case and hands everything else, findings included, to the full lane below.
        self.raw_lane = raw_lane and rawlane.supports(self)

    # -- pure part ---------------------------------------------------------------------------

    def transform(self, ds: Dataset, phi: Any = None) -> str:
        """De-identify ``ds`` in place; return the output path relative to DST."""
        patient_id = str(ds.get("PatientID", "") or "")
        issuer = str(ds.get("IssuerOfPatientID", "") or "")
        token = self.pseudo.id_token(patient_id, issuer)
        shift = (self.pseudo.date_shift_days(patient_id, *self.profile.shift_days)
                 if self.needs_shift else None)
        ctx = Context(pseudo=self.pseudo, patient_token=token, shift_days=shift,
                      scrub=_scrubber(phi, self.profile.scrub))
        self.plan.apply(ds, ctx)
        self._mark(ds, shifted=shift is not None)
        return _output_relpath(ds, token)

    def _mark(self, ds: Dataset, *, shifted: bool) -> None:
        """PatientIdentityRemoved, DeidentificationMethod and its CID 7050 code sequence."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self._method
        items = []
        for value, meaning in self._codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        opts = set(self.profile.options)
        if "retain-longitudinal-full-dates" in opts:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif shifted:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"

    # -- I/O shell ---------------------------------------------------------------------------

    def study_identity(self, paths: list[str | os.PathLike[str]]) -> Any:
        """The pooled identifying values of one study's files (headers only), or None when the
        profile keeps no free text (then each file's own harvest is enough)."""
        if not self.pool_study_identity or len(paths) < 2:
            return None
        harvests = []
        for p in paths:
            try:
                harvests.append(phi_verify.harvest(dicomio.read_header(p)))
            except Exception:  # noqa: BLE001 - an unreadable sibling is quarantined on its own turn
                continue
        return phi_verify.PhiValues.union(harvests) if harvests else None

    def process_files(self, items: list[tuple[str | os.PathLike[str], str]], staging_dir: Path,
                      *, sync: bool = True) -> list[FileResult]:
        """De-identify the files of one work unit (a study, or part of one): ``(path, file_id)``.

        Staged outputs are written without a per-file fsync; the unit's files are fsynced
        together at the end (:func:`sync_staged`), before any of them can be committed.
        ``sync=False`` leaves that to the caller (the batch layer's committer thread does it
        while this process goes on with the next unit)."""
        study = self.study_identity([p for p, _ in items])
        results = [self.process_file(p, staging_dir, fid, study=study) for p, fid in items]
        if sync:
            sync_staged(results)
        return results

    def process_file(self, path: str | os.PathLike[str], staging_dir: Path, file_id: str,
                     study: Any = None) -> FileResult:
        """Read, transform, write to ``staging_dir/<file_id>.dcm`` and verify it.

        Never raises for a bad input: every per-file problem becomes a quarantined result.
        The raw lane is tried first when the profile allows it; whatever it does not take
        (NotEligible, findings included) is done again from the start below.
        """
        staged = staging_dir / f"{file_id}.dcm"
        if self.raw_lane:
            try:
                return rawlane.process_file(self, path, staged, file_id, study)
            except NotEligible as exc:
                log.debug("file %s: full lane (%s)", file_id, exc)
        res = FileResult(file_id=file_id, outcome="quarantined", src_path=os.fspath(path))
        try:
            rr = dicomio.read_dicom(path)
            res.preamble_threat = rr.preamble_threat
            res.size = rr.size
            ds = rr.dataset
            phi = _guarded(_harvest, "harvest-failed", ds)
            if study is not None:
                phi = phi.with_identity_of([study])
            try:
                relpath = self.transform(ds, phi)
            except InputFileError:
                raise
            except RecursionError:
                raise InputFileError("too-deep", "sequence nesting too deep") from None
            except Exception as exc:  # noqa: BLE001 - messages may quote values; keep only the type
                raise InputFileError("transform-failed", f"could not de-identify ({type(exc).__name__})") from None
            pixel_ref = rr.pixel_ref
            pixel_ref = self._pixels(ds, rr, phi, res)
            res.sha256 = dicomio.write_dicom(ds, staged, pixel_ref=pixel_ref, staged=True)
            if self.verify:
                findings = _guarded(_verify, "verify-failed", staged, phi, self.ignore_kinds, self.year_tags)
                if findings:
                    staged.unlink(missing_ok=True)
                    res.details = findings
                    res.reason = "phi-residue"
                    return res
            res.outcome = "written"
            res.staged = str(staged)
            res.out_relpath = relpath
            return res
        except InputFileError as exc:
            staged.unlink(missing_ok=True)
            res.reason = exc.code
            res.details = [str(exc)]
            return res

    def _pixels(self, ds: Dataset, rr: Any, phi: Any, res: FileResult) -> Any:
        """Apply the profile's burned-in text policy; returns the pixel_ref still to stream
        (None once the pixels live, masked, in the dataset)."""
        if self.profile.pixels.burned_in == "keep" or rr.pixel_ref is None:
            return rr.pixel_ref
        from . import pixels

        policy = pixels.PixelPolicy(burned_in=self.profile.pixels.burned_in, ocr=self.profile.pixels.ocr,
                                    filters=("dicom",) + tuple(self.profile.pixel_recipes))
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta.TransferSyntaxUID = rr.transfer_syntax  # a file without meta: what the reader found
        dicomio.load_pixel_data(ds, rr.pixel_ref)
        outcome = pixels.apply_pixel_policy(ds, policy, _phi_strings(phi))
        if outcome.needs_review:
            res.pixel = outcome
        if outcome.quarantine_reason:
            raise InputFileError(outcome.quarantine_reason, "burned-in text could not be proven removed")
        if not outcome.changed:
            del ds.PixelData  # unchanged: stream the original bytes, keep memory bounded
            return rr.pixel_ref
        return None


def _output_relpath(ds: Dataset, token: str) -> str:
    """DST/<patient token>/<study uid>/<series uid>/<sop uid>.dcm — from pseudonyms only."""
    parts = []
    for kw, missing in (("StudyInstanceUID", "no-study-uid"), ("SeriesInstanceUID", "no-series-uid"),
                        ("SOPInstanceUID", None)):
        v = str(ds.get(kw, "") or "").strip()
        if not v or not all(c.isdigit() or c == "." for c in v):
            if missing is None:
                raise InputFileError("missing-uid", f"{kw} missing or invalid")
            v = missing  # still a useful image; the path says what the header lacks
        parts.append(v)
    return f"{token}/{parts[0]}/{parts[1]}/{parts[2]}.dcm"


def _method_text(profile: Profile) -> str:
    text = f"dicomsafe {__version__} {profile.name} PS3.15 E.1-1"
    return text[:64]


def _method_codes(profile: Profile) -> list[tuple[str, str]]:
    codes = [CID7050["basic"]]
    for opt in profile.options:
        if opt in CID7050:
            codes.append(CID7050[opt])
    return codes


# -- verification and scrubbing hooks (dicomsafe.verify / dicomsafe.text) -----------------------


def _guarded(fn: Callable[..., Any], code: str, *args: Any) -> Any:
    """Run a harvest or verification step; any failure quarantines this one file (fail closed:
    an output that could not be checked is not clean) instead of failing its whole work unit."""
    try:
        return fn(*args)
    except InputFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - messages may quote values; keep only the type
        raise InputFileError(code, f"could not be checked ({type(exc).__name__})") from None


def _harvest(ds: Dataset) -> Any:
    return phi_verify.harvest(ds)


def _phi_strings(phi: Any) -> list[str]:
    """Every harvested value, for the pixel stage's OCR comparison."""
    if phi is None:
        return []
    return sorted({v for vals in phi.values_by_kind().values() for v in vals})


def _scrubber(phi: Any, kinds: tuple[str, ...]) -> Callable[[str], str]:
    """Free-text cleaner for C actions: the patient's own identifiers and identifier patterns."""
    return lambda s: text.scrub(s, phi, kinds)


def _verify(path: Path, phi: Any, ignore_kinds: frozenset[str], year_tags: frozenset[int]) -> list[str]:
    findings = phi_verify.verify_file(path, phi, ignore_kinds=ignore_kinds, year_tags=year_tags)
    return [f"{f.path}: {f.kind}" for f in findings]
