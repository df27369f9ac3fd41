#!/usr/bin/env bash
# Creates (or refreshes) the Python virtual environment the client tests and
# benchmarks use: .venv with the packages pinned in tests/python/requirements.txt.
# Idempotent: does nothing when the environment already matches the requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=tests/python/requirements.txt
stamp=.venv/.requirements.sha256
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)

if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi

python=${PYTHON:-python3}
if ! "$python" -m venv --help >/dev/null 2>&1; then
  echo "python-env: '$python -m venv' is unavailable; installing python3-venv" >&2
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq python3-venv
  fi
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
echo "python-env: installing $(grep -c . "$requirements") packages into .venv" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$wanted" > "$stamp"
