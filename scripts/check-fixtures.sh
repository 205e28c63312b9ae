#!/usr/bin/env bash
# Regenerates reference/ with the harness and fails if any committed file
# changed or appeared: the fixtures are exactly what the script produces.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh --reference
.venv/bin/python reference/generate.py
# Against the index: what is committed (or staged) must be what the script writes.
changed="$(git diff --name-only -- reference/; git ls-files --others --exclude-standard -- reference/)"
if [[ -n "$changed" ]]; then
  echo "check-fixtures: reference/ differs from what reference/generate.py writes:" >&2
  echo "$changed" >&2
  echo "fixtures: 0 passed, 1 failed"
  exit 1
fi
echo "fixtures: 1 passed, 0 failed"
