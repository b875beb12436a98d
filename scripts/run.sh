#!/usr/bin/env bash
# Sets up (Debian packages, .venv) and runs the ctai service on its embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ctai serve "$@"
