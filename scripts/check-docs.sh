#!/usr/bin/env bash
# The documentation of every library crate, built as docs.rs builds it: with
# the crate's `doc-only` feature, on no libtorch at all (LIBTORCH points at an
# empty folder), every rustdoc warning an error (broken links, missing docs).
# One cargo call for all of them: their rustdoc runs share the dependency
# builds and both cores (a call per crate took twice as long).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CHECK_DOCS_TARGET:-target/doc-only}"

crates=(sd-core sd-clip sd-t5 sd-unet sd-mmdit sd-flux sd-upscale sd-vae sd-lora sd-controlnet
        sd-scheduler sd-ip-adapter sd-pipeline sd-train sd-server)
packages=() features=()
for crate in "${crates[@]}"; do
  packages+=(-p "$crate")
  features+=("$crate/doc-only")
done
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
# (sd-gguf needs no libtorch at all: no doc-only feature to ask for)
LIBTORCH="$empty" RUSTDOCFLAGS="-D warnings" \
  cargo doc --quiet --no-deps "${packages[@]}" -p sd-gguf \
    --features "$(IFS=,; echo "${features[*]}")" --target-dir "$target"
echo "check-docs: ${crates[*]} sd-gguf document without libtorch"
