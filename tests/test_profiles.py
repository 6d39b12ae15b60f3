"""Profile loading, validation errors with file:line, and the profiles CLI."""

import subprocess
import sys

import pytest

from dicomsafe.errors import ProfileError
from dicomsafe.profiles import list_profiles, load_profile


def _write(tmp_path, text, name="p.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_basic_is_shipped_and_valid():
    assert "basic" in list_profiles()
    prof = load_profile("basic")
    assert prof.name == "basic" and prof.options == ()


def test_cli_options_are_added_and_validated():
    prof = load_profile("basic", ["clean-descriptors", "retain-uids"])
    assert prof.options == ("clean-descriptors", "retain-uids")
    with pytest.raises(ProfileError, match="unknown option"):
        load_profile("basic", ["retain-everything"])


def test_clean_pixel_data_turns_on_masking():
    prof = load_profile("basic", ["clean-pixel-data"])
    assert prof.pixels.burned_in == "mask" and prof.pixels.ocr


@pytest.mark.parametrize("text,line,fragment", [
    ('[profile]\nname = "x"\noptions = ["retain-foo"]\n', 3, "unknown option"),
    ('[profile\nname = "x"\n', 1, "invalid TOML"),
    ('[profile]\nname = "x"\n[tags]\n"PatientNme" = { action = "remove" }\n', 4, "unknown attribute keyword"),
    ('[profile]\nname = "x"\n[tags]\n"PatientName" = { action = "obliterate" }\n', 4, "unknown action"),
    ('[profile]\nname = "x"\n[tags]\n"PatientName" = { action = "remove" }\n"(0010,0010)" = { action = "keep" }\n', 5, "conflicts"),
    ('[profile]\nname = "x"\n[tags]\n"(0009,xx10)" = { action = "keep" }\n', 4, "private_creator"),
    ('[profile]\nname = "x"\n[tags]\n"PatientName" = { action = "replace" }\n', 4, "needs value"),
    ('[profile]\nname = "x"\noptions = ["retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"]\n', 3, "exclude each other"),
    ('[profile]\nname = "x"\n[pixels]\nburned_in = "blur"\n', 4, "burned_in"),
    ('[profile]\nname = "x"\n[colours]\n', 3, "unknown section"),
])
def test_broken_profiles_name_the_line(tmp_path, text, line, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert f"p.toml:{line}:" in str(exc.value)
    assert fragment in str(exc.value)


def test_base_chain_composes_and_child_wins(tmp_path):
    _write(tmp_path, '[profile]\nname="parent"\nbase="basic"\noptions=["clean-descriptors"]\n'
                     '[tags]\n"StudyDate" = { action = "keep" }\n', "parent.toml")
    child = _write(tmp_path, '[profile]\nname="child"\nbase="parent"\noptions=["retain-uids"]\n'
                             '[tags]\n"StudyDate" = { action = "remove" }\n', "child.toml")
    import os
    os.environ["DICOMSAFE_PROFILES"] = str(tmp_path)
    try:
        prof = load_profile(child)
    finally:
        del os.environ["DICOMSAFE_PROFILES"]
    assert prof.options == ("clean-descriptors", "retain-uids")
    actions = {o.key: o.action for o in prof.overrides}
    assert actions["StudyDate"] == "X" and actions["PatientID"] == "pseudonym"


def test_profile_hash_changes_with_content():
    assert load_profile("basic").hash != load_profile("basic", ["clean-descriptors"]).hash


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dicomsafe", *args], capture_output=True, text=True)


def test_profiles_cli_show_and_check(tmp_path):
    r = _cli("profiles", "show", "basic")
    assert r.returncode == 0
    assert "(0010,0030)" in r.stdout and "Patient's Birth Date" in r.stdout
    bad = _write(tmp_path, '[profile]\nname = "x"\noptions = ["nope"]\n')
    r = _cli("profiles", "check", bad)
    assert r.returncode == 2
    assert "p.toml:3" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    r = _cli("profiles", "list")
    assert r.returncode == 0 and "basic" in r.stdout


def test_unknown_profile_is_exit_2():
    r = _cli("profiles", "show", "no-such-profile")
    assert r.returncode == 2 and "unknown profile" in r.stderr


def test_profiles_diff_lists_changed_attributes():
    r = _cli("profiles", "diff", "basic", "research")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    study_date = next(l for l in lines if l.startswith("(0008,0020)"))
    assert study_date.split()[1:3] == ["Z", "C"]  # removed in basic, shifted in research
    assert "attribute(s) differ" in lines[-1] and int(lines[-1].split()[0]) > 100
    r = _cli("profiles", "diff", "basic", "basic")
    assert r.stdout.strip().endswith("0 attribute(s) differ")
