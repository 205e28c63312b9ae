#!/usr/bin/env bash
# The parity suites (every test that compares with diffusers' reference
# outputs) on the other kernel paths of this CPU, or bit for bit on this
# machine. Part of the sweep (scripts/sweep.sh), not of the README's test
# command, which already runs them once on the CPU's own kernel path.
#
#   bash scripts/parity.sh                 # portability: the suites once per
#       ATen CPU capability this CPU offers (default, avx2, avx512) other than
#       its own, and with MKL's conditional-numerical-reproducibility and
#       oneDNN's ISA limits; committed references, error-model bounds
#       (docs/reference.md). Where libtorch itself refuses a dtype on a
#       forced capability (bf16 attention under avx2/default on CPUs with
#       AMX, docs/reference.md), those cases are skipped and listed.
#   bash scripts/parity.sh --same-machine [--report] [DIR]
#       # exactness: references regenerated with diffusers on this machine
#       (into DIR, by default a fresh temporary copy of reference/), then every
#       suite held to 0 max-abs (SD_PARITY=exact). Lists every case that does
#       not reach 0 and fails, or with --report only lists them.
#
# The suites run from the test binaries `cargo test` built (no cargo per
# suite); each configuration's output (max-abs and bound per case) goes to
# target/parity/<config>.log, and a summary is printed here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/steps.sh
STEP_TITLE="scripts/parity.sh"

SUITES=(
  "sd-core layers_parity"
  "sd-clip tokenizer_parity"
  "sd-clip encoder_parity"
  "sd-clip conditioning"
  "sd-clip vision"
  "sd-t5 parity"
  "sd-unet parity"
  "sd-mmdit parity"
  "sd-vae parity"
  "sd-vae tiny"
  "sd-scheduler golden"
  "sd-pipeline parity"
  "sd-pipeline single_file"
  "sd-pipeline lora"
  "sd-pipeline controlnet"
  "sd-pipeline previews"
  "sd-pipeline sd3"
  "sd-pipeline sd3_single_file"
  "sd-pipeline flux_lora"
  "sd-pipeline hires"
  "sd-pipeline ip_adapter"
  "sd-upscale parity"
  "sd-train trained_model"
)
LOGS=target/parity
mkdir -p "$LOGS"
BINARIES="$LOGS/binaries.txt"

# One line per suite: PACKAGE TEST PACKAGE_DIR EXECUTABLE.
find_binaries() {
  cargo test --workspace --no-run --message-format=json 2>"$LOGS/build.log" |
    python3 scripts/lib/test_binaries.py "${SUITES[@]}" >"$BINARIES" || {
    tail -20 "$LOGS/build.log" >&2
    return 1
  }
}

# Runs every suite under the environment in "$@" (VAR=value ...) into
# $LOGS/$name.log, then prints a summary. Returns non-zero when a suite failed.
run_suites() {
  local name="$1"
  shift
  local log="$LOGS/$name.log" status=0 package test dir exe
  : >"$log"
  while read -r package test dir exe; do
    echo "-- $package --test $test" >>"$log"
    if ! (cd "$dir" && env "$@" "$exe" --nocapture --test-threads 2) >>"$log" 2>&1; then
      echo "-- FAILED: $package --test $test" >>"$log"
      status=1
    fi
  done <"$BINARIES"
  summarise "$name" "$log" "$status"
  return "$status"
}

summarise() {
  local name="$1" log="$2" status="$3" exact inexact skipped
  exact="$(grep -c 'max abs error 0.000e0' "$log" || true)"
  inexact="$(grep 'max abs error' "$log" | grep -vc 'max abs error 0.000e0' || true)"
  skipped="$(grep -c '^parity: skipped ' "$log" || true)"
  if [[ "$status" == 0 ]]; then
    echo "parity[$name]: passed ($exact comparisons at 0, $inexact within their bounds, $skipped cases skipped; $log)"
  else
    echo "parity[$name]: $([[ "${REPORT_ONLY:-0}" == 1 ]] && echo "REPORTED" || echo "FAILED") ($log):"
    grep -E '^-- FAILED|parity failure|cases differ|panicked' "$log" | head -20 | sed 's/^/  /'
  fi
  # Each reason once, with the cases it covers.
  grep '^parity: skipped ' "$log" | sed -E 's/^parity: skipped ([^:]*): (.*)$/\2\t\1/' |
    sort | awk -F'\t' '
      $1 != reason { if (reason != "") print "  skipped: " reason "\n    " cases; reason = $1; cases = $2; next }
      { cases = cases ", " $2 }
      END { if (reason != "") print "  skipped: " reason "\n    " cases }'
}

# The capability libtorch picks by itself here (what `cargo test` ran).
native_capability() {
  if [[ -x .venv/bin/python ]]; then
    .venv/bin/python -c 'import torch; print(torch.backends.cpu.get_cpu_capability().lower())' 2>/dev/null && return
  fi
  echo unknown
}

step "build the suites" find_binaries

if [[ "${1:-}" == "--same-machine" ]]; then
  shift
  report=0
  if [[ "${1:-}" == "--report" ]]; then
    report=1
    shift
  fi
  dir="${1:-}"
  if [[ -z "$dir" ]]; then
    dir="$(mktemp -d)/reference"
    bash scripts/setup.sh --reference
    cp -r reference "$dir"
    step "regenerate references" bash scripts/regenerate-references.sh "$dir"
  fi
  exact() {
    if REPORT_ONLY="$report" run_suites same-machine SD_PARITY=exact SD_REFERENCE_DIR="$dir" OMP_NUM_THREADS=1; then
      echo "parity: bit for bit with diffusers on this machine (computations ordered otherwise than the reference, e.g. channels-last or sliced, within their bounds)"
      return 0
    fi
    if [[ "$report" == 1 ]]; then
      echo "parity: the cases above do not reach 0 on this machine (reported, not failed)"
      return 0
    fi
    return 1
  }
  if [[ "$report" == 1 ]]; then
    step "parity[same-machine] (reported)" exact
  else
    step "parity[same-machine]" exact
  fi
  exit 0
fi

flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
has() { [[ " $flags " == *" $1 "* ]]; }
native="$(native_capability)"
capabilities=(default)
if has avx2 && has fma; then
  capabilities+=(avx2)
fi
if has avx512f && has avx512bw && has avx512vl && has avx512dq; then
  capabilities+=(avx512)
fi
configs=()
for capability in "${capabilities[@]}"; do
  if [[ "$capability" == "$native" ]]; then
    echo "parity: capability-$capability is this CPU's own kernel path, which cargo test ran"
    continue
  fi
  # A forced capability may be one libtorch cannot run a dtype on: those
  # cases are skipped (and listed), not failed.
  configs+=("capability-$capability ATEN_CPU_CAPABILITY=$capability SD_PARITY_SKIP_REFUSED=1")
done
configs+=(
  "mkl-compatible MKL_CBWR=COMPATIBLE"
  "onednn-sse41 ONEDNN_MAX_CPU_ISA=SSE41 DNNL_MAX_CPU_ISA=SSE41"
)
failed=0
for config in "${configs[@]}"; do
  read -r -a words <<<"$config"
  step "parity[${words[0]}]" run_suites "${words[0]}" "${words[@]:1}" || failed=1
done
exit "$failed"
