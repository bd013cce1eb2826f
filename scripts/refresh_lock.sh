#!/usr/bin/env bash
# Refresh requirements/lock.txt: resolve the newest versions that pyproject.toml allows in a fresh venv, run the
# test-suite against them, and only then write the lock. CI and scripts/install.sh install from the lock, so a
# fresh install is the same on any day; `pip install latentrl` keeps pyproject's ranges.
#   bash scripts/refresh_lock.sh            # resolve, test, write requirements/lock.txt
#   bash scripts/refresh_lock.sh --no-tests # resolve and write only (then run the suite before committing)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
if [[ "${1:-}" != "--no-tests" ]]; then
  "$venv/bin/python" -m pytest -n 2 tests
fi
{
  echo "# Tested versions of every dependency (pip constraints). Written by scripts/refresh_lock.sh on $(date -u +%F);"
  echo "# scripts/install.sh and CI install with '-c requirements/lock.txt'. Do not edit by hand."
  "$venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^torch==([^+]*)\+.*/torch==\1/'
} > requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages)"
