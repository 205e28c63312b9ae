# Sourced by the test scripts: `step NAME COMMAND...` runs a command as a named
# step and records how long it took; the table of steps is printed when the
# script exits, passed or failed (a failed step ends the script under set -e).

STEP_ROWS=()
STEP_TITLE="${STEP_TITLE:-steps}"

step() {
  local name="$1" start=$SECONDS status=0
  shift
  echo "== $name" >&2
  "$@" || status=$?
  STEP_ROWS+=("$name|$((SECONDS - start))|$status")
  return "$status"
}

print_steps() {
  local total=0 row name secs status
  ((${#STEP_ROWS[@]})) || return 0
  echo
  printf '%s (%s, %s cores):\n' "$STEP_TITLE" "$(cpu_name)" "$(nproc)"
  printf '  %-44s %9s  %s\n' step time result
  for row in "${STEP_ROWS[@]}"; do
    IFS='|' read -r name secs status <<<"$row"
    total=$((total + secs))
    printf '  %-44s %5dm%02ds  %s\n' "$name" $((secs / 60)) $((secs % 60)) \
      "$([[ $status == 0 ]] && echo ok || echo "FAILED ($status)")"
  done
  printf '  %-44s %5dm%02ds\n' total $((total / 60)) $((total % 60))
}

cpu_name() {
  local name
  name="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
  echo "${name:-$(uname -m)}"
}

trap print_steps EXIT
