"""Builds models/yunet.onnx: the YuNet-n face detector (libfacedetection.train, Apache-2.0) from
../shared/models/yunet/yunet_n_dynamic.onnx, with decoding and non-maximum suppression appended
so that it follows vigil's detector contract:

    input  `input`      [N, 3, HEIGHT, WIDTH] BGR 0-255, no mean or scaling, letterboxed
    output `detections` [K, 7] rows (batch_index, class_id, score, x1, y1, x2, y2),
                        normalised to the letterboxed input (vigil maps them to the frame)

The original graph takes any H and W that are multiples of 32; here they are fixed (WIDTH x
HEIGHT, chosen by models/measure_yunet.py, see models/measurements/yunet.md) so the cell grids can
be constants. The landmark branch (kps_*) is dropped. For stride s in 8, 16, 32 and the cell at
row r, column c (row-major, WIDTH/s columns):

    score  = sqrt(clip(cls, 0, 1) * clip(obj, 0, 1))
    centre = ((c + bbox0) * s, (r + bbox1) * s),   size = (exp(bbox2) * s, exp(bbox3) * s)

then NonMaxSuppression (IoU 0.3, score floor 0.3, keep 200 per image); rules threshold later.
The decoded detections are checked against a NumPy decode + NMS of the original graph's raw
outputs on real photos, and a batch of 3 against 3 single runs.
"""
import glob
import hashlib
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, version_converter

from vigil_tools import detector_head
from vigil_tools.detector_head import Graph, add_detections, manifest_wh

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.environ.get("VIGIL_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared"))
SOURCE = os.path.join(SHARED, "models", "yunet")
ORIGINAL = os.path.join(SOURCE, "yunet_n_dynamic.onnx")
ORIGINAL_SHA256 = "104ee26c71d5c270ce79a6b3dced91c91013260d29a6bf18f9296c5b8c4c2b12"
WIDTH, HEIGHT = 640, 384  # 16:9 camera frames fill it; see models/measurements/yunet.md
STRIDES = (8, 16, 32)
KEEP, IOU, MIN_SCORE = 200, 0.3, 0.3
INPUT = "input"


def grid(width, height, s):
    """[1, P, 2] (column, row) of every cell of stride s, row-major."""
    rows, cols = np.meshgrid(np.arange(height // s), np.arange(width // s), indexing="ij")
    return np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float32)[None]


def build(width=WIDTH, height=HEIGHT, keep=KEEP, iou=IOU, min_score=MIN_SCORE, path=ORIGINAL):
    """Returns the contract graph for a fixed width x height input."""
    assert width % 32 == 0 and height % 32 == 0
    # The original is opset 11; the shared head is written for opset 13 (Squeeze axes as input).
    raw = version_converter.convert_version(onnx.load(path), 13)
    g = Graph()
    g.nodes, g.inits = list(raw.graph.node), list(raw.graph.initializer)
    g.names = {i.name for i in g.inits}
    taken = {o for n in g.nodes for o in n.output} | g.names
    g.n = 1000  # auto names (e.g. slice_1001) stay clear of the original numeric tensor names
    ax2 = g.i64("ax2", [2])
    scale = g.const("to_unit", np.array([width, height, width, height], np.float32))
    boxes, scores = [], []
    for s in STRIDES:
        cls = g.node("Clip", [f"cls_{s}", g.const("zero", np.float32(0)), g.const("one", np.float32(1))])
        obj = g.node("Clip", [f"obj_{s}", "zero", "one"])
        scores.append(g.node("Sqrt", [g.node("Mul", [cls, obj])]))  # [N, P, 1]
        st = g.const(f"stride_{s}", np.float32(s))
        d = f"bbox_{s}"
        xy = g.node("Slice", [d, g.i64("s0", [0]), g.i64("s2", [2]), ax2])
        wh = g.node("Slice", [d, g.i64("s2", [2]), g.i64("s4", [4]), ax2])
        centre = g.node("Mul", [g.node("Add", [xy, g.const(f"grid_{s}", grid(width, height, s))]), st])
        half = g.node("Mul", [g.node("Exp", [wh]), g.const(f"half_stride_{s}", np.float32(s / 2))])
        box = g.node("Concat", [g.node("Sub", [centre, half]), g.node("Add", [centre, half])], axis=2)
        boxes.append(g.node("Div", [box, scale]))  # [N, P, 4] normalised x1 y1 x2 y2
    all_boxes = g.node("Concat", boxes, axis=1)
    all_scores = g.node("Transpose", [g.node("Concat", scores, axis=1)], perm=[0, 2, 1])
    add_detections(g, all_boxes, all_scores, keep, iou, min_score)
    new = [o for n in g.nodes[len(raw.graph.node):] for o in n.output]
    assert not (set(new) & taken) and len(set(new)) == len(new), "tensor name clash"

    # Keep only what `detections` needs (drops the landmark branch).
    producer = {o: n for n in g.nodes for o in n.output}
    needed, stack = set(), ["detections"]
    while stack:
        t = stack.pop()
        if t in producer and id(producer[t]) not in needed:
            needed.add(id(producer[t]))
            stack.extend(i for i in producer[t].input if i)
    nodes = [n for n in g.nodes if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    inits = [i for i in g.inits if i.name in used]
    graph = helper.make_graph(
        nodes, f"yunet_n_{width}x{height}",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 7])], inits)
    model = helper.make_model(graph, opset_imports=raw.opset_import, producer_name="vigil")
    model.ir_version = raw.ir_version
    onnx.checker.check_model(model)
    return model


def letterbox(img, width=WIDTH, height=HEIGHT):
    """The worker's letterbox as YuNet takes it: BGR 0-255, NCHW, batch of one."""
    canvas, geo = detector_head.letterbox(img, width, height)
    return canvas.astype(np.float32).transpose(2, 0, 1)[None], geo


def nms(boxes, scores, iou, keep, min_score):
    """Greedy NMS as ONNX NonMaxSuppression: score > floor, suppress IoU > iou."""
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > min_score]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = []
    for i in order:
        if len(kept) == keep:
            break
        ok = True
        for j in kept:
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(iw, 0) * max(ih, 0)
            if inter > 0 and inter / (area[i] + area[j] - inter) > iou:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def reference(raw_sess, x, width=WIDTH, height=HEIGHT):
    """NumPy decode + NMS of the original graph's raw outputs: rows (score, x1, y1, x2, y2)."""
    names = [f"{k}_{s}" for s in STRIDES for k in ("cls", "obj", "bbox")]
    out = dict(zip(names, raw_sess.run(names, {INPUT: x})))
    boxes, scores = [], []
    for s in STRIDES:
        score = np.sqrt(np.clip(out[f"cls_{s}"][0, :, 0], 0, 1) * np.clip(out[f"obj_{s}"][0, :, 0], 0, 1))
        b = out[f"bbox_{s}"][0].astype(np.float64)
        cxy = (b[:, :2] + grid(width, height, s)[0]) * s
        wh = np.exp(b[:, 2:4]) * s
        boxes.append(np.concatenate([cxy - wh / 2, cxy + wh / 2], axis=1) / [width, height, width, height])
        scores.append(score)
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    kept = nms(boxes, scores, IOU, KEEP, MIN_SCORE)
    return np.concatenate([scores[kept, None], boxes[kept]], axis=1)


def check(model):
    """Decoded detections vs the NumPy reference on real photos; a batch of 3 vs singles."""
    import cv2
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
    raw_sess = ort.InferenceSession(ORIGINAL, o, providers=["CPUExecutionProvider"])
    scenes = os.path.join(SHARED, "data", "mask-scenes", "images")
    paths = sorted(p for p in glob.glob(os.path.join(ROOT, "tests", "data", "faces", "*"))
                   + glob.glob(os.path.join(ROOT, "tests", "data", "masked", "*"))
                   if not p.endswith(".md"))
    paths += [os.path.join(scenes, f"maksssksksss{i}.jpg") for i in range(0, 800, 50)]  # crowds too
    worst, rows, batch = 0.0, 0, []
    for p in paths:
        img = cv2.imread(p)
        if img is None:
            sys.exit(f"cannot read {p}")
        x, _ = letterbox(img)
        batch.append(x)
        got = sess.run(None, {INPUT: x})[0]
        ref = reference(raw_sess, x)
        if got.shape[0] != ref.shape[0]:
            sys.exit(f"{p}: {got.shape[0]} detections, the NumPy reference has {ref.shape[0]}")
        got = got[np.lexsort((got[:, 3], -got[:, 2]))]
        ref = ref[np.lexsort((ref[:, 1], -ref[:, 0]))]
        if len(ref):
            if np.any(got[:, 0] != 0) or np.any(got[:, 1] != 0):
                sys.exit(f"{p}: batch index or class not 0")
            worst = max(worst, float(np.abs(got[:, 2:7] - ref).max()))
        rows += len(ref)
    if worst > 1e-4:
        sys.exit(f"decoded detections differ from the NumPy reference by {worst:.1e}")
    cv_worst, cv_rows = opencv_check(sess, batch)
    for start in (0, 16):
        three = batch[start:start + 3]
        full = sess.run(None, {INPUT: np.concatenate(three)})[0]
        for i, x in enumerate(three):
            single = sess.run(None, {INPUT: x})[0]
            mine = full[full[:, 0] == i]
            if mine.shape != single.shape or (len(mine) and np.abs(mine[:, 1:] - single[:, 1:]).max() > 1e-4):
                sys.exit(f"batch of 3 differs from single runs (image {start + i})")
    print(f"parity: {rows} detections on {len(paths)} photos match the NumPy decode of the original "
          f"graph (max abs diff {worst:.1e}); the {cv_rows} over 0.5 match OpenCV's FaceDetectorYN "
          f"(max abs diff {cv_worst:.1e} px); a batch of 3 equals 3 single runs")
    return worst, len(paths)


def opencv_check(sess, batch):
    """Detections over 0.5 vs cv2.FaceDetectorYN (OpenCV's own YuNet decode + NMS) on the
    original weights with the input fixed at WIDTH x HEIGHT (OpenCV cannot load dynamic shapes)."""
    import tempfile

    import cv2

    m = onnx.load(ORIGINAL)
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, (1, 3, HEIGHT, WIDTH)):
        d.ClearField("dim_param")
        d.dim_value = v
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "yunet_fixed.onnx")
        onnx.save(m, path)
        det = cv2.FaceDetectorYN.create(path, "", (WIDTH, HEIGHT), 0.5, IOU, 5000)
    worst, rows = 0.0, 0
    for i, x in enumerate(batch):
        _, faces = det.detect(np.ascontiguousarray(x[0].transpose(1, 2, 0).astype(np.uint8)))
        faces = np.zeros((0, 15), np.float32) if faces is None else faces
        ref = np.c_[faces[:, 14], faces[:, :2], faces[:, :2] + faces[:, 2:4]]
        got = sess.run(None, {INPUT: x})[0]
        got = got[got[:, 2] >= 0.5]
        got = np.c_[got[:, 2], got[:, 3:7] * [WIDTH, HEIGHT, WIDTH, HEIGHT]]
        if len(got) != len(ref):
            sys.exit(f"photo {i}: {len(got)} detections over 0.5, OpenCV's FaceDetectorYN finds {len(ref)}")
        if len(ref):
            ref, got = ref[np.argsort(-ref[:, 0], kind="stable")], got[np.argsort(-got[:, 0], kind="stable")]
            worst = max(worst, float(np.abs(ref - got).max()))
        rows += len(ref)
    if worst > 1e-2:
        sys.exit(f"detections differ from OpenCV's FaceDetectorYN by {worst:.1e}")
    return worst, rows


def main():
    digest = hashlib.sha256(open(ORIGINAL, "rb").read()).hexdigest()
    if digest != ORIGINAL_SHA256:
        sys.exit(f"{ORIGINAL}: sha256 {digest}, expected {ORIGINAL_SHA256}")
    model = build()
    worst, photos = check(model)
    out = os.path.join(HERE, "yunet.onnx")
    onnx.save(model, out)
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    with open(os.path.join(HERE, "yunet.toml"), "w") as f:
        f.write("# Face detector: YuNet-n, cell decode and NMS in the graph.\n"
                "# The default face detector: see models/measurements/yunet.md for the measurements.\n")
        f.write(manifest_wh(
            "face-yunet", "n-2023mar-onnx1", "yunet.onnx", digest,
            "GitHub ShiqiYu/libfacedetection.train at commit 0047ac24, onnx/yunet_n_dynamic.onnx",
            "Apache-2.0, see LICENSE-yunet",
            f"Built by models/build_yunet.py: input fixed at {WIDTH}x{HEIGHT}, landmark outputs dropped, "
            f"cell decode + NonMaxSuppression (IoU {IOU}, score {MIN_SCORE}, keep {KEEP}) appended; "
            f"detections within {worst:.1e} of a NumPy decode of the original graph on {photos} photos.",
            WIDTH, HEIGHT, "NCHW", "BGR", (0,) * 3, (1,) * 3, resize="letterbox", default=True,
            input_name=INPUT))
    shutil.copyfile(os.path.join(SOURCE, "LICENSE"), os.path.join(HERE, "LICENSE-yunet"))
    print(f"wrote {out} sha256 {digest}")


if __name__ == "__main__":
    main()
