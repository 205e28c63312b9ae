#!/usr/bin/env bash
# Every test of the project, on a fresh machine or an old one:
#   1. libtorch (scripts/setup.sh: idempotent, reuses the per-user cache),
#   2. Debian's chromium and chromium-driver when missing (apt-get), for the
#      web page's browser test (crates/sd-cli/tests/browser.rs),
#   2b. the Rust tests of the whole workspace (committed references, bounds of
#      the error model in docs/reference.md),
#   2c. the Python package and the Ray Serve app (scripts/test-python.sh;
#      installs maturin, pytest and ray[serve] into the same virtualenv once),
#   3. every library crate's documentation as docs.rs builds it, with no
#      libtorch (scripts/check-docs.sh),
#   4. the parity suites again under every other CPU kernel path this machine
#      offers (scripts/parity.sh),
#   5. the reference fixtures regenerated with diffusers on this machine and
#      compared with the committed ones, then the crates held to those bit for
#      bit (scripts/check-fixtures.sh; installs diffusers/transformers into
#      the same cached virtualenv once).
# Set SD_SKIP_FIXTURE_CHECK=1 to leave out step 5 (it needs PyPI the first time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver
fi
cargo test --workspace
bash scripts/test-python.sh
bash scripts/check-docs.sh
bash scripts/parity.sh

if [[ "${SD_SKIP_FIXTURE_CHECK:-0}" != 1 ]]; then
  bash scripts/check-fixtures.sh
fi
