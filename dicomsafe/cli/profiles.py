"""``dicomsafe profiles list | show | check``: tools for profile authors."""

from __future__ import annotations

import click

from . import main


@main.group()
def profiles() -> None:
    """List, show and check de-identification profiles."""


@profiles.command("list")
def list_cmd() -> None:
    """Names and descriptions of the available profiles."""
    from ..profiles import list_profiles, load_profile

    for name, path in list_profiles().items():
        try:
            desc = load_profile(str(path)).description
        except Exception:  # noqa: BLE001 - a broken profile is listed, not fatal
            desc = "(invalid: run dicomsafe profiles check)"
        click.echo(f"{name:20s} {desc}")


def _show(name: str, options: tuple[str, ...]) -> None:
    from ..profiles import load_profile
    from ..rules import compile_plan, describe_plan

    prof = load_profile(name, options)
    plan = compile_plan(prof)
    click.echo(f"profile {prof.name}  hash {prof.hash}")
    click.echo(f"chain   {' > '.join(prof.chain + (prof.name,))}")
    click.echo(f"options {', '.join(prof.options) or '(none)'}")
    click.echo(f"dates   shift_days {list(prof.shift_days)}")
    click.echo(f"pixels  burned_in={prof.pixels.burned_in} ocr={str(prof.pixels.ocr).lower()}")
    click.echo(f"text    scrub {', '.join(prof.scrub)}")
    for w in prof.warnings:
        click.echo(f"warning {w}")
    click.echo("")
    click.echo(f"{'tag':14s} {'action':10s} {'why':28s} name")
    for tag, nm, action, why in describe_plan(plan):
        click.echo(f"{tag:14s} {action:10s} {why[:28]:28s} {nm}")


@profiles.command("show")
@click.argument("name")
@click.option("--option", "options", multiple=True, metavar="OPT", help="Add an option (repeatable).")
def show_cmd(name: str, options: tuple[str, ...]) -> None:
    """The effective plan of a profile (name or file): one row per attribute."""
    _show(name, options)


@profiles.command("check")
@click.argument("file")
def check_cmd(file: str) -> None:
    """Validate a profile file; exit 2 naming file:line on any problem, else print its plan."""
    _show(file, ())
    click.echo("\nprofile is valid")


@profiles.command("diff")
@click.argument("a")
@click.argument("b")
def diff_cmd(a: str, b: str) -> None:
    """Attributes whose action differs between profiles A and B (names or files)."""
    from ..profiles import load_profile
    from ..rules import compile_plan, describe_plan

    pa, pb = load_profile(a), load_profile(b)
    rows_a = {tag: (name, action) for tag, name, action, _ in describe_plan(compile_plan(pa))}
    rows_b = {tag: (name, action) for tag, name, action, _ in describe_plan(compile_plan(pb))}
    for label, prof in (("a", pa), ("b", pb)):
        click.echo(f"{label}: {prof.name} ({', '.join(prof.options) or 'no options'})")
    only = sorted(set(pa.options) ^ set(pb.options))
    if only:
        click.echo(f"options that differ: {', '.join(only)}")
    for attr in ("shift_days", "pixels", "scrub"):
        if getattr(pa, attr) != getattr(pb, attr):
            click.echo(f"{attr}: {getattr(pa, attr)} -> {getattr(pb, attr)}")
    click.echo("")
    click.echo(f"{'tag':14s} {'a':12s} {'b':12s} name")
    changed = 0
    for tag in sorted(set(rows_a) | set(rows_b)):
        na, aa = rows_a.get(tag, ("", "-"))
        nb, ab = rows_b.get(tag, ("", "-"))
        if aa != ab:
            changed += 1
            click.echo(f"{tag:14s} {aa[:12]:12s} {ab[:12]:12s} {na or nb}")
    click.echo(f"\n{changed} attribute(s) differ")
