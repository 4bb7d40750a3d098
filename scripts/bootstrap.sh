#!/usr/bin/env bash
# Installs what vigil needs on a Debian bookworm machine, skipping what is already there:
#   - Debian packages: OpenCV headers/libraries, clang/libclang (for the opencv crate's bindings),
#     prometheus and promtool (the tests check dashboards and alert rules against them)
#   - .venv: a project-local Python venv with the onnxruntime wheel (its libonnxruntime.so is
#     what the worker loads) and confluent-kafka (an outside client for tests)
#   - .tools/bin/nisshi: a Kafka-protocol broker for the demo and the tests (built once, ~10 min)
# Environment: VIGIL_TOOLS_DIR overrides .tools; VIGIL_SKIP_BROKER=1 skips the broker.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${VIGIL_TOOLS_DIR:-$ROOT/.tools}
NISSHI_VERSION=0.8.1
say() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------
need=()
for pkg in libopencv-dev clang libclang-dev pkg-config cmake prometheus; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
else
  say "Debian packages present"
fi

# --- Python venv with ONNX Runtime ---------------------------------------------------------
REQ="$ROOT/scripts/requirements.txt"
STAMP="$ROOT/.venv/.vigil-requirements"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  say "creating .venv"
  python3 -m venv "$ROOT/.venv"
fi
if ! cmp -s "$REQ" "$STAMP" 2>/dev/null; then
  say "installing Python packages into .venv"
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$STAMP"
else
  say "Python packages present"
fi
ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* >/dev/null

# --- Kafka-protocol broker -----------------------------------------------------------------
if [ "${VIGIL_SKIP_BROKER:-0}" != 1 ]; then
  if [ -x "$TOOLS/bin/nisshi" ] && [ -f "$TOOLS/.nisshi-$NISSHI_VERSION" ]; then
    say "broker present ($TOOLS/bin/nisshi)"
  else
    say "building the nisshi $NISSHI_VERSION broker into $TOOLS (once; about 10 minutes on 2 cores)"
    # One of its dependencies declares a newer rust-version than it needs.
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
      --root "$TOOLS" --quiet
    touch "$TOOLS/.nisshi-$NISSHI_VERSION"
  fi
fi
say "ready"
