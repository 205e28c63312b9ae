#!/usr/bin/env bash
# Regenerates reference/ with the harness (into a temporary copy; the working
# tree is not touched) and compares it with what is committed: byte for byte
# where the output cannot depend on the CPU, by the error model elsewhere
# (reference/compare_fixtures.py). Then holds the Rust crates to the
# regenerated, same-machine references bit for bit, reporting any case that
# does not reach 0 (scripts/parity.sh --same-machine --report).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh --reference
copy="$(mktemp -d)/reference"
cp -r reference "$copy"
find "$copy" -name __pycache__ -prune -exec rm -rf {} +
OMP_NUM_THREADS=1 .venv/bin/python "$copy/generate.py" >"$copy.generate.log" 2>&1 || {
  tail -20 "$copy.generate.log" >&2
  echo "fixtures: 0 passed, 1 failed"
  exit 1
}
find "$copy" -name __pycache__ -prune -exec rm -rf {} +
if ! .venv/bin/python reference/compare_fixtures.py reference "$copy"; then
  echo "check-fixtures: reference/ differs from what reference/generate.py writes on this machine" >&2
  echo "fixtures: 0 passed, 1 failed"
  exit 1
fi
echo "fixtures: 1 passed, 0 failed"
bash scripts/parity.sh --same-machine --report "$copy"
