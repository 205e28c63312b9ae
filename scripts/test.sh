#!/usr/bin/env bash
# The README's test command: everything a user relies on, on this CPU's own
# kernel path, in about 15 minutes on 2 cores (docs/development.md):
#   1. libtorch (scripts/setup.sh: idempotent, reuses the per-user cache),
#   2. Debian's chromium and chromium-driver when missing (apt-get), for the
#      web page's browser test (crates/sd-cli/tests/browser.rs),
#   3. the Rust tests of the whole workspace: every crate against the
#      committed diffusers references within the error model of
#      docs/reference.md, the CLI, the server and its browser test,
#   4. the Python package and the Ray Serve app (scripts/test-python.sh;
#      installs maturin, pytest and ray[serve] into the same virtualenv once),
#   5. every library crate's documentation as docs.rs builds it, with no
#      libtorch (scripts/check-docs.sh).
# The exhaustive sweep (the parity suites on every other CPU kernel path, the
# fixtures regenerated with diffusers and compared) is scripts/sweep.sh,
# which CI runs after this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/steps.sh
STEP_TITLE="scripts/test.sh"

install_chromium() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    return 0
  fi
  local sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver
}

step "libtorch (scripts/setup.sh)" bash scripts/setup.sh
step "chromium for the browser test" install_chromium
# --no-fail-fast: every failing suite is reported, not only the first.
step "cargo test --workspace" cargo test --workspace --no-fail-fast
step "python package and Ray Serve app" bash scripts/test-python.sh
step "docs without libtorch (check-docs.sh)" bash scripts/check-docs.sh
