#!/usr/bin/env bash
# The Python package (crates/sd-python, module sd_rs): built with maturin as
# pip builds it (PEP 517), into the project's cached virtualenv, in the dev
# profile so that it reuses `cargo test`'s build; then its pytest suite and
# the Ray Serve app's (deploy/ray: a local two-node Ray cluster, about 3
# minutes), which compare pixels with the `sd` binary of the same build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh --python
export PATH="$PWD/.venv/bin:$PATH"
cargo build --quiet -p sd-cli
MATURIN_PEP517_ARGS="--profile dev" \
  python -m pip install --quiet --disable-pip-version-check --no-build-isolation ./crates/sd-python
SD_BIN="$PWD/target/debug/sd" SD_SHAPES="$PWD/crates/sd-cli/shapes" OMP_NUM_THREADS=1 \
  python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
  crates/sd-python/tests deploy/ray/test_ray.py
