#!/usr/bin/env bash
# The exhaustive sweep, after the README's test command (CI runs both):
#   1. the parity suites on every other CPU kernel path this machine offers
#      (scripts/parity.sh; cases libtorch itself refuses there are listed),
#   2. the reference fixtures regenerated with diffusers on this machine and
#      compared with the committed ones, then the crates held to those bit for
#      bit (scripts/check-fixtures.sh; installs diffusers/transformers into
#      the same cached virtualenv once).
# Set SD_SKIP_FIXTURE_CHECK=1 to leave out step 2 (it needs PyPI the first time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/steps.sh
STEP_TITLE="scripts/sweep.sh"

step "parity on other kernel paths (parity.sh)" bash scripts/parity.sh
if [[ "${SD_SKIP_FIXTURE_CHECK:-0}" != 1 ]]; then
  step "fixtures regenerated (check-fixtures.sh)" bash scripts/check-fixtures.sh
fi
