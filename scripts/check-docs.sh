#!/usr/bin/env bash
# The documentation of every library crate, built as docs.rs builds it: with
# the crate's `doc-only` feature, on no libtorch at all (LIBTORCH points at an
# empty folder), every rustdoc warning an error (broken links, missing docs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
for crate in sd-core sd-clip sd-t5 sd-unet sd-mmdit sd-flux sd-upscale sd-vae sd-lora sd-controlnet sd-scheduler sd-pipeline sd-train sd-server; do
  LIBTORCH="$empty" RUSTDOCFLAGS="-D warnings" \
    cargo doc --quiet --no-deps -p "$crate" --features doc-only --target-dir target/doc-only
  echo "check-docs: $crate documents without libtorch"
done
# sd-gguf needs no libtorch at all (no doc-only feature to ask for)
LIBTORCH="$empty" RUSTDOCFLAGS="-D warnings" \
  cargo doc --quiet --no-deps -p sd-gguf --target-dir target/doc-only
echo "check-docs: sd-gguf documents without libtorch"
