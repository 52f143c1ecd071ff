#!/usr/bin/env bash
# Install into .venv if needed, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_env.sh
python -m pytest -q "$@"
