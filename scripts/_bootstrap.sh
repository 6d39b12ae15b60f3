# Sourced by scripts/test, scripts/demo and scripts/bench: make a venv with dicomsafe installed,
# and the Debian tools the tests and demos meet (when we are root and they are missing).
# Environment: DICOMSAFE_VENV (default .venv in the project), DICOMSAFE_NO_APT=1 to skip apt-get.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DICOMSAFE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

ensure_apt_tools() {
  [ "${DICOMSAFE_NO_APT:-0}" = "1" ] && return 0
  local missing=()
  command -v age >/dev/null 2>&1 || missing+=(age)
  command -v dcmdump >/dev/null 2>&1 || missing+=(dcmtk)
  command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
  command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
  command -v gdcmanon >/dev/null 2>&1 || missing+=(libgdcm-tools)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: missing tools (${missing[*]}); tests that need them will be skipped" >&2
    return 0
  fi
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_venv() {
  local extras="${1:-test}"
  local stamp="$VENV/.dicomsafe-installed"
  local want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$extras"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip >/dev/null 2>&1 || true
    # (the grep drops pip's notes about index locations this machine does not have)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$extras]" \
      2> >(grep -v -e "^WARNING: Location" -e "BuildBackendWarning" >&2)
    echo "$want" > "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
