#!/usr/bin/env bash
# Regenerates reference/ with the harness (into a temporary copy; the working
# tree is not touched) and compares it with what is committed: byte for byte
# where the output cannot depend on the CPU, by the error model elsewhere
# (reference/compare_fixtures.py). Then holds the Rust crates to the
# regenerated, same-machine references bit for bit (scripts/parity.sh
# --same-machine): failing on a case that does not reach 0 where exactness is
# established, reporting it elsewhere.
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
# Exactness is established where the reference side computes nothing the
# crates cannot reproduce: x86-64 without AVX-512 (there numpy uses Intel's
# SVML for f64 log/exp/power, and on Arm its own NEON float32 log). Strict
# there, reported elsewhere (docs/reference.md).
if [[ "$(uname -m)" == x86_64 ]] && ! grep -qw avx512f /proc/cpuinfo; then
  bash scripts/parity.sh --same-machine "$copy"
else
  bash scripts/parity.sh --same-machine --report "$copy"
fi
