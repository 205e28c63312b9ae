#!/usr/bin/env bash
# Sets up libtorch for this workspace. Idempotent: a second run does nothing.
#
#   bash scripts/setup.sh              # libtorch only (what builds and tests need)
#   bash scripts/setup.sh --reference  # plus diffusers/transformers for reference/generate.py
#   bash scripts/setup.sh --python     # plus maturin, pytest and ray[serve] (crates/sd-python)
#
# libtorch comes from the PyPI wheel torch==$TORCH_VERSION, installed into a
# virtualenv kept in a per-user cache keyed by the torch and Python versions,
# so every clone of the project (CI's too) shares one 5 GB download.
# The repo gets two git-ignored links:
#   .venv     -> the cached virtualenv
#   .libtorch -> its site-packages/torch (LIBTORCH, set in .cargo/config.toml)
#
# Bring your own libtorch instead: export LIBTORCH=/path/to/libtorch (it wins
# over .cargo/config.toml) and this script only checks that the folder exists.
set -euo pipefail

TORCH_VERSION=2.11.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CACHE="${SD_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sd-rs}"

want_reference=0
want_python=0
for arg in "$@"; do
  case "$arg" in
    --reference) want_reference=1 ;;
    --python) want_python=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --reference or --python)" >&2; exit 2 ;;
  esac
done

if [[ -n "${LIBTORCH:-}" && "$want_reference" == 0 && "$want_python" == 0 ]]; then
  if [[ ! -f "$LIBTORCH/lib/libtorch_cpu.so" ]]; then
    echo "setup.sh: LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so" >&2
    exit 1
  fi
  echo "setup.sh: using LIBTORCH=$LIBTORCH"
  exit 0
fi

pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
VENV="$CACHE/venv-torch-$TORCH_VERSION-py${pyver/./}"
mkdir -p "$CACHE"

# One installer at a time per cache (two clones set up at once must not race).
exec 9>"$CACHE/.lock"
flock 9

if [[ ! -f "$VENV/.torch-complete" ]]; then
  echo "setup.sh: installing torch==$TORCH_VERSION into $VENV (about 5 GB, once per machine)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
  touch "$VENV/.torch-complete"
fi

# Extra requirements into the same virtualenv, once per version of their file.
install_requirements() {
  local req="$1" name="$2"
  local stamp="$VENV/.$name-$(sha256sum "$req" | cut -c1-16)"
  if [[ ! -f "$stamp" ]]; then
    echo "setup.sh: installing ${req#"$ROOT/"} into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    touch "$stamp"
  fi
}
if [[ "$want_reference" == 1 ]]; then
  install_requirements "$ROOT/reference/requirements.txt" reference
fi
if [[ "$want_python" == 1 ]]; then
  install_requirements "$ROOT/crates/sd-python/requirements-dev.txt" python
fi

ln -sfn "$VENV" "$ROOT/.venv"
ln -sfn "$VENV/lib/python$pyver/site-packages/torch" "$ROOT/.libtorch"
echo "setup.sh: libtorch $TORCH_VERSION ready at .libtorch"
