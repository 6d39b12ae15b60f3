"""``dicomsafe pixels check FILE...``: where is burned-in text? (read-only, prints no text).

An operator's helper to try a profile's pixel settings on a few files before a run: it reports
per file (by position, never by name) how many text boxes the deid filter rules and OCR find and
how many of the words read as the file's own patient values or identifier patterns.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import EXIT_FINDINGS, EXIT_OK, main


def _header_phi(ds) -> list[str]:
    """The patient's own values, to recognise them in the pixels (kept in memory only)."""
    values = []
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
               "OtherPatientNames", "PatientAddress", "InstitutionName", "ReferringPhysicianName"):
        v = ds.get(kw)
        if v is None:
            continue
        if isinstance(v, (list, tuple)) or v.__class__.__name__ == "MultiValue":
            values.extend(str(x) for x in v)
        else:
            values.append(str(v))
    return [v for v in values if v.strip()]


@main.group()
def pixels() -> None:
    """Burned-in text in pixel data (deid filter rules + tesseract OCR)."""


@pixels.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ocr/--no-ocr", default=True, show_default=True, help="Read the pixels with tesseract.")
@click.option("--recipe", "recipes", multiple=True, metavar="NAME|FILE",
              help="deid recipe with %filter rules (bundled: dicom, dicom.ultrasound, dicom.xray.chest); "
                   "repeatable; default: dicom.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("--review", type=click.Path(file_okay=False, path_type=Path),
              help="Write an operator-side HTML page with a thumbnail of each file with text (shows PHI).")
def check(files: tuple[Path, ...], ocr: bool, recipes: tuple[str, ...], as_json: bool, review: Path | None) -> None:
    """Report text boxes found in FILES; exit 1 if any file has text or could not be read."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ..pixels import PixelOutcome, PixelPolicy, ReviewItem, find_text, write_review

    policy = PixelPolicy(burned_in="mask", ocr=ocr, filters=recipes or None, thumbnails=review is not None)
    findings = False
    items = []
    for pos, path in enumerate(files, 1):
        record: dict = {"position": pos}
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            record.update(status="unreadable")
            findings = True
        else:
            rep = find_text(ds, policy, _header_phi(ds))
            has_text = bool(rep.boxes) or rep.problem is not None
            findings = findings or has_text
            record.update(
                status=rep.problem or ("text" if has_text else "clean"), frames=rep.frames,
                frames_ocr=rep.frames_ocr, boxes=[[b.x0, b.y0, b.x1, b.y1] for b in rep.boxes],
                words=rep.words, phi_words=rep.phi_words, rules=list(rep.rule_labels), flags=list(rep.flags),
            )
            if review is not None and has_text:
                items.append(ReviewItem(f"file{pos:05d}", PixelOutcome(
                    quarantine_reason="burned-in-text", before_png=rep.before_png,
                    words_found=rep.words, rule_labels=rep.rule_labels, ocr_used=ocr)))
        if as_json:
            click.echo(json.dumps(record, sort_keys=True))
        else:
            extra = ""
            if "boxes" in record:
                extra = (f" boxes={len(record['boxes'])} words={record['words']} phi-like={record['phi_words']}"
                         f" frames={record['frames']} read={record['frames_ocr']}")
                if record["rules"]:
                    extra += " rules=" + "; ".join(record["rules"])
                if record["flags"]:
                    extra += " flags=" + ",".join(record["flags"])
            click.echo(f"#{pos}: {record['status']}{extra}")
    if review is not None:
        index = write_review(review, items)
        click.echo(f"review page: {index}", err=True)
    click.get_current_context().exit(EXIT_FINDINGS if findings else EXIT_OK)
