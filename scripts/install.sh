#!/usr/bin/env bash
# One-step install of latentrl and its test tools, at the tested versions of requirements/lock.txt (so a fresh
# install is the same on any day; scripts/refresh_lock.sh moves the lock forward). Pins the CPU torch wheel first:
# a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python -m pip install --quiet --disable-pip-version-check -c requirements/lock.txt)
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[dev]"
