#!/usr/bin/env bash
# Every test of the project, on a fresh machine or an old one:
#   1. libtorch (scripts/setup.sh: idempotent, reuses the per-user cache),
#   2. the Rust tests of the whole workspace,
#   3. the reference fixtures regenerate byte for byte from reference/generate.py
#      (installs diffusers/transformers into the same cached virtualenv once).
# Set SD_SKIP_FIXTURE_CHECK=1 to leave out step 3 (it needs PyPI the first time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
cargo test --workspace

if [[ "${SD_SKIP_FIXTURE_CHECK:-0}" != 1 ]]; then
  bash scripts/check-fixtures.sh
fi
