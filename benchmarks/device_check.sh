#!/usr/bin/env bash
# jaxsem on an accelerator, in one short run: the tiny-config parity tests on the device, then
# benchmarks/device_check.py (forward, steering grid and vocabulary sweep against
# transformers/torch on the same device, random weights, float32 and bfloat16), one table.
#
#   bash benchmarks/device_check.sh --fetch_wheels      # here, with a package index: fills benchmarks/wheels/
#   bash benchmarks/device_check.sh --out DIR           # there, from the repository root
#
# Options: --out DIR (table and figures), --budget_s S (whole run, default 270), --skip_parity,
# --tiny (toy shapes); anything else goes to device_check.py. $PYTHON picks the interpreter
# (default python3). The machine needs jax (with its accelerator plugin), torch and
# transformers; the pure-Python packages jaxsem needs beyond those (gguf, ml-collections)
# come from benchmarks/wheels/ when they are not installed.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
PY=${PYTHON:-python3}
WHEELS="$ROOT/benchmarks/wheels"
# Pure-Python packages jaxsem imports that a CUDA jax + torch + transformers machine may lack.
NEEDED="gguf ml-collections"

OUT="" BUDGET=270 PARITY=1 FETCH=0 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --budget_s) BUDGET="$2"; shift 2 ;;
    --budget_s=*) BUDGET="${1#--budget_s=}"; shift ;;
    --skip_parity) PARITY=0; shift ;;
    --fetch_wheels) FETCH=1; shift ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done

if [ "$FETCH" = 1 ]; then
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d "$WHEELS" $NEEDED || exit 1
  ls -l "$WHEELS"
  du -sh "$WHEELS"
  exit 0
fi

START=$SECONDS
SITE="" LOG=""
trap 'rm -rf "$SITE" "$LOG"' EXIT
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the device's memory
export JAX_DEFAULT_MATMUL_PRECISION=highest  # float32 is float32 (no TF32) on both sides
export TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export JAXSEM_PARAMS_CACHE=0
PYPATH="$ROOT"
if ! "$PY" -c "import gguf, ml_collections" 2>/dev/null; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    SITE=$(mktemp -d "${TMPDIR:-/tmp}/jaxsem-wheels.XXXXXX")
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl; then
      PYPATH="$ROOT:$SITE"
    else  # no pip: pure-Python wheels import straight from the zip files
      echo "warning: pip could not install benchmarks/wheels; importing from the wheel files" >&2
      PYPATH="$ROOT:$(printf '%s:' "$WHEELS"/*.whl)"
      PYPATH="${PYPATH%:}"
    fi
  else
    echo "warning: gguf or ml_collections missing and benchmarks/wheels/ is empty (run --fetch_wheels)" >&2
  fi
fi
export PYTHONPATH="$PYPATH${PYTHONPATH:+:$PYTHONPATH}"

PLATFORM=$("$PY" -c "import jax; print(jax.devices()[0].platform)" 2>/dev/null || echo unknown)
echo "jax platform: $PLATFORM; python: $("$PY" --version 2>&1)"
NOTES=()
if [ "$PARITY" = 1 ]; then
  # The tiny-config parity tests on the device; the two that need 8 devices run on CPU only.
  LOG=$(mktemp "${TMPDIR:-/tmp}/jaxsem-parity.XXXXXX")
  JAXSEM_TEST_PLATFORM="$PLATFORM" timeout 150 "$PY" -m pytest -q -p no:cacheprovider -p no:xdist \
    tests/models/test_parity_tiny.py -k "not sharded" >"$LOG" 2>&1
  RC=$?
  tail -n 15 "$LOG"
  SUMMARY=$(grep -E "(passed|failed|error)" "$LOG" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
  NOTES+=(--note "parity tests (tests/models/test_parity_tiny.py, jax on $PLATFORM, sharded tests deselected): ${SUMMARY:-no summary} (exit $RC)")
  echo "parity: ${SUMMARY:-no summary} (exit $RC)"
else
  NOTES+=(--note "parity tests: skipped (--skip_parity)")
fi

LEFT=$((BUDGET - (SECONDS - START) - 30))
[ "$LEFT" -lt 30 ] && LEFT=30
ARGS=(--budget_s "$LEFT")
[ -n "$OUT" ] && ARGS+=(--out "$OUT")
"$PY" -m benchmarks.device_check "${ARGS[@]}" "${NOTES[@]}" "${EXTRA[@]}"
RC=$?
echo "device_check.sh: wall $((SECONDS - START)) s, exit $RC"
exit $RC
