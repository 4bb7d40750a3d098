#!/usr/bin/env bash
# Installs what vigil needs on a Debian bookworm machine, skipping what is already there:
#   - Debian packages: OpenCV headers/libraries, clang/libclang (for the opencv crate's bindings),
#     prometheus and promtool (the tests check dashboards and alert rules against them),
#     OpenSSL headers (Kafka over TLS and SASL/SCRAM in librdkafka), stunnel4 and openssl (the
#     tests put a TLS listener with a private CA in front of the broker), and GStreamer's RTSP
#     server with the Python bindings and the H.264 encoder (the site gateway's tests serve
#     RTSP cameras with tests/tools/rtsp_cameras.py)
#   - .venv: the project's one Python venv (scripts/requirements*.txt): the onnxruntime wheel
#     (its libonnxruntime.so is what the worker loads), confluent-kafka (an outside client for
#     tests), and the model tooling (TensorFlow 2.15, tf2onnx, onnx) models/build.sh uses, with
#     models/ itself as the editable package vigil_tools
#   - the nisshi broker (Kafka protocol) for the demo and the tests: built once per user into
#     ~/.cache/vigil/nisshi-VERSION-FEATURES (like cargo's own registry cache, so a second
#     clone reuses it; about 10 minutes on 2 cores the first time, with cargo's progress shown)
#     and linked as .tools/bin/nisshi. Only the SQLite storage engine the demo and the tests
#     use is built.
# Environment: VIGIL_TOOLS_DIR overrides .tools; VIGIL_CACHE_DIR overrides ~/.cache/vigil;
# VIGIL_SKIP_BROKER=1 skips the broker.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${VIGIL_TOOLS_DIR:-$ROOT/.tools}
NISSHI_VERSION=0.8.1
say() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------
need=()
for pkg in libopencv-dev clang libclang-dev pkg-config cmake prometheus libssl-dev stunnel4 openssl curl chromium \
    python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
    gstreamer1.0-plugins-ugly; do
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
REQ_NODEPS="$ROOT/scripts/requirements-nodeps.txt"
STAMP="$ROOT/.venv/.vigil-requirements"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  say "creating .venv"
  python3 -m venv "$ROOT/.venv"
fi
if ! cat "$REQ" "$REQ_NODEPS" | cmp -s - "$STAMP" 2>/dev/null; then
  say "installing Python packages into .venv"
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REQ_NODEPS"
  cat "$REQ" "$REQ_NODEPS" > "$STAMP"
else
  say "Python packages present"
fi
ls "$ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* >/dev/null
# The model tooling is one package, vigil_tools (models/, see pyproject.toml), installed
# editable and without dependencies (the pins above are the environment's): the tools and
# scripts/ import its modules by name. Checked by where it points, so a moved checkout reinstalls.
if ! "$ROOT/.venv/bin/python" - "$ROOT/models" <<'PY' 2>/dev/null
import os, sys
import vigil_tools
sys.exit(os.path.realpath(os.path.dirname(vigil_tools.__file__)) != os.path.realpath(sys.argv[1]))
PY
then
  say "installing the model tooling (models/ as the package vigil_tools) into .venv"
  "$ROOT/.venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$ROOT"
fi

# --- Kafka-protocol broker -----------------------------------------------------------------
NISSHI_FEATURES=libsql
CACHE=${VIGIL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil}
BROKER_HOME="$CACHE/nisshi-$NISSHI_VERSION-$NISSHI_FEATURES"
if [ "${VIGIL_SKIP_BROKER:-0}" != 1 ]; then
  if [ -x "$BROKER_HOME/bin/nisshi" ] && [ -f "$BROKER_HOME/.complete" ]; then
    say "broker present ($BROKER_HOME/bin/nisshi)"
  else
    say "building the nisshi $NISSHI_VERSION broker into $BROKER_HOME"
    say "(once per user; about 10 minutes on 2 cores; progress below)"
    mkdir -p "$CACHE"
    started=$(date +%s)
    # One of its dependencies declares a newer rust-version than it needs. Only the SQLite
    # storage engine is built: the default features add PostgreSQL and object-store engines.
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
      --no-default-features --features "$NISSHI_FEATURES" --root "$BROKER_HOME"
    touch "$BROKER_HOME/.complete"
    say "broker built in $(( $(date +%s) - started )) s"
  fi
  mkdir -p "$TOOLS/bin"
  ln -sfn "$BROKER_HOME/bin/nisshi" "$TOOLS/bin/nisshi"
fi
say "ready"
