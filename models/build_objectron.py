"""Rebuilds models/objectron.onnx: the 2-D object detector inside MediaPipe Objectron (SSD
MobileNetV2 trained on 23 Open Images classes, among them person, cat and dog), from the npm
package `@mediapipe/objectron`, with box decoding and per-class non-maximum suppression inside the
graph so that it follows vigil's detector contract:

    input  `image`      [N, 300, 300, 3] RGB in [-1, 1], stretched to 300x300 (aspect not kept)
    output `detections` [K, 7] rows (batch_index, class_id, score, x1, y1, x2, y2),
                        class_id 0..22 in the order of `LABELS` (background dropped),
                        coordinates normalised to the input

The package is fetched with `npm pack` into a cache outside the repository (default
~/.cache/vigil/npm, or $VIGIL_CACHE/npm) unless it is already there. Its
`objectron_solution_packed_assets.data` holds two files whose offsets the package's loader
script lists: the label map (bytes 0..184) and the TFLite model (bytes 184..end). The package
ships no licence text (package.json says Apache-2.0); models/LICENSE-mediapipe, the Apache-2.0
text written by build_palm.py from MediaPipe's wheel, covers it.

How MediaPipe runs the model is read from the subgraph options compiled into the package's wasm
(ObjectDetectionOidV4Subgraph), and the script checks that those bytes are there:
- ImageToTensor: 300x300, keep_aspect_ratio false (stretch), float range [-1, 1];
- SsdAnchors: 6 layers, scales 0.2..0.95, strides 16..512, aspect ratios 1, 2, 0.5, 3, 0.3333,
  reduce_boxes_in_lowest_layer, anchor offsets 0.5 -> 1917 anchors;
- TensorsToDetections: 24 classes, class 0 (background) ignored, box order (y, x, h, w) with
  scales 10, 10, 5, 5 and exp on the size, sigmoid scores;
- NonMaxSuppression: IoU 0.5, at most 100.
MediaPipe keeps only the best class of each anchor and suppresses across classes; this graph
suppresses per class (ONNX NonMaxSuppression, IoU 0.5, score > 0.2, 100 per class) and then keeps
the 100 best rows of each image, so a box can be reported under two classes.

Checks: raw outputs against the TFLite interpreter (random inputs and photos), decoded rows
against a numpy reference on photos, a batch against single runs, an empty result on a blank
frame. `--measure` prints the figures of models/measurements/objectron.md.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vigil_tools import geometry  # the worker's decode reduction

from vigil_tools.detector_head import Graph, manifest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PACKAGE, PACKAGE_VERSION = "@mediapipe/objectron", "0.4.1675468480"
CACHE = os.path.join(os.environ.get("VIGIL_CACHE", os.path.expanduser("~/.cache/vigil")), "npm")
ASSETS = "objectron_solution_packed_assets.data"
TFLITE_MEMBER = "/third_party/mediapipe/modules/objectron/object_detection_ssd_mobilenetv2_oidv4_fp16.tflite"
LABELMAP_MEMBER = "/object_detection_oidv4_labelmap.txt"
SIZE, NUM_ANCHORS, NUM_CLASSES = 300, 1917, 23
# The graph keeps rows down to 0.2 so that a rule can choose its own min_detection_score.
KEEP, IOU, MIN_SCORE = 100, 0.5, 0.2
SCALES = (10.0, 10.0, 5.0, 5.0)  # y, x, h, w
LABELS = ["bicycle", "boot", "laptop", "person", "chair", "cattle", "desk", "cat",
          "computer_mouse", "computer_monitor", "box", "mug", "coffee_cup", "stationary_bicycle",
          "table", "bottle", "high_heels", "vehicle", "footwear", "dog", "book", "camera", "car"]
ANIMAL_PHOTOS = os.path.join(ROOT, "tests", "data", "animals")
FACES = os.path.join(ROOT, "tests", "data", "faces")
MASK_SCENES = os.path.join(os.environ.get("VIGIL_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")), "data", "mask-scenes", "images")


# ---------------------------------------------------------------- source package

def package_dir():
    """The extracted npm package, fetched with `npm pack` on first use."""
    out = os.path.join(CACHE, f"objectron-{PACKAGE_VERSION}")
    if not os.path.exists(os.path.join(out, "package", ASSETS)):
        os.makedirs(CACHE, exist_ok=True)
        tgz = os.path.join(CACHE, f"mediapipe-objectron-{PACKAGE_VERSION}.tgz")
        if not os.path.exists(tgz):
            subprocess.run(["npm", "pack", f"{PACKAGE}@{PACKAGE_VERSION}", "--pack-destination", CACHE],
                           check=True, capture_output=True)
        with tarfile.open(tgz) as t:
            t.extractall(out, filter="data")
    return os.path.join(out, "package")


def read_assets(pkg):
    """(tflite path, labels of the label map) from the packed assets, at the loader's offsets."""
    loader = open(os.path.join(pkg, "objectron_solution_packed_assets_loader.js")).read()
    files = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(
        r'"filename":\s*"([^"]+)",\s*"start":\s*(\d+),\s*"end":\s*(\d+)', loader)}
    data = open(os.path.join(pkg, ASSETS), "rb").read()
    (l0, l1), (m0, m1) = files[LABELMAP_MEMBER], files[TFLITE_MEMBER]
    if (l0, l1, m0, m1) != (0, 184, 184, len(data)) or data[m0 + 4:m0 + 8] != b"TFL3":
        sys.exit(f"unexpected packed assets: {files}, {len(data)} bytes")
    names = data[l0:l1].decode().split("\n")
    if names[0] != "???" or [n.lower().replace(" ", "_") for n in names[1:] if n] != LABELS:
        sys.exit(f"unexpected label map {names}")
    path = os.path.join(os.path.dirname(pkg), "object_detection_ssd_mobilenetv2_oidv4_fp16.tflite")
    if not os.path.exists(path) or os.path.getsize(path) != m1 - m0:
        with open(path, "wb") as f:
            f.write(data[m0:m1])
    return path


def f32(v):
    return np.float32(v).tobytes()


def check_graph_options(pkg):
    """The options MediaPipe gives its calculators for this model, as serialised in the wasm."""
    wasm = open(os.path.join(pkg, "objectron_solution_simd_wasm_bin.wasm"), "rb").read()
    expect = {
        # ImageToTensorCalculatorOptions: 300x300, keep_aspect_ratio false, range [-1, 1]
        "image to tensor": b"\x08\xac\x02\x10\xac\x02\x18\x00\"\n\r" + f32(-1) + b"\x15" + f32(1),
        # SsdAnchorsCalculatorOptions
        "anchors": b"\x08\xac\x02\x10\xac\x02\x1d" + f32(0.2) + b"%" + f32(0.95) + b"-" + f32(0.5)
                   + b"5" + f32(0.5) + b"8\x06P\x10P P@P\x80\x01P\x80\x02P\x80\x04"
                   + b"".join(b"]" + f32(a) for a in (1, 2, 0.5, 3, 0.3333)) + b"`\x01",
        # TensorsToDetectionsCalculatorOptions: 24 classes, 1917 boxes, 4 coords, x/y/w/h scales
        # 10/10/5/5, ignore class 0, exp on the size, sigmoid scores, min score 0.5
        "decoder": b"\x08\x18\x10\xfd\x0e\x18\x04%" + f32(10) + b"-" + f32(10) + b"5" + f32(5)
                   + b"=" + f32(5) + b"@\x00h\x01x\x01\x9d\x01" + f32(0.5),
        # NonMaxSuppressionCalculatorOptions: 100 boxes, IoU 0.5, intersection over union
        "nms": b"\x10d\x1d" + f32(0.5) + b" \x03",
    }
    missing = [k for k, v in expect.items() if v not in wasm]
    if missing:
        sys.exit(f"MediaPipe's options differ from the assumed ones: {missing}")


def anchors():
    """MediaPipe SsdAnchorsCalculator for the options above: [1917, 4] as (yc, xc, h, w)."""
    strides, ratios, min_s, max_s = (16, 32, 64, 128, 256, 512), (1.0, 2.0, 0.5, 3.0, 0.3333), 0.2, 0.95

    def scale(i):
        return min_s + (max_s - min_s) * i / (len(strides) - 1)

    out = []
    for layer, stride in enumerate(strides):
        if layer == 0:  # reduce_boxes_in_lowest_layer
            ar, sc = [1.0, 2.0, 0.5], [0.1, scale(0), scale(0)]
        else:
            ar, sc = list(ratios), [scale(layer)] * len(ratios)
            nxt = 1.0 if layer == len(strides) - 1 else scale(layer + 1)
            ar.append(1.0)  # interpolated_scale_aspect_ratio
            sc.append(np.sqrt(scale(layer) * nxt))
        hs = [s / np.sqrt(a) for s, a in zip(sc, ar)]
        ws = [s * np.sqrt(a) for s, a in zip(sc, ar)]
        n = int(np.ceil(SIZE / stride))
        for y in range(n):
            for x in range(n):
                for h, w in zip(hs, ws):
                    out.append(((y + 0.5) / n, (x + 0.5) / n, h, w))
    a = np.array(out, np.float32)
    assert a.shape == (NUM_ANCHORS, 4)
    return a


# ---------------------------------------------------------------- conversion

def convert_raw(path, out):
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", path, "--opset", "13",
                    "--output", out], check=True, capture_output=True,
                   env={**os.environ, "PYTHONHASHSEED": "0"})  # tf2onnx names constants in set order
    m = onnx.load(out)
    inits = {i.name: i for i in m.graph.initializer}
    patched = set()
    for node in m.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]])
            if len(shape) >= 3 and shape[0] == 1:
                shape = shape.copy()
                shape[0] = 0  # copy the batch dimension
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
                patched.add(node.input[1])
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    canonicalise(m, inits)
    return m, len(patched)


def canonicalise(m, inits):
    """tf2onnx numbers the names it makes up, and orders independent nodes, differently on each
    run: sort the nodes topologically with ties broken by what they compute, then rename the
    tensors, nodes and initializers by position, so that the build is reproducible byte for byte."""
    import collections

    def base(name):
        return re.sub(r"(__\d+)+(:\d+)?$", "", name)

    digest = {k: hashlib.sha1(v.SerializeToString().replace(k.encode(), b"")).hexdigest()
              for k, v in inits.items()}
    keep = {v.name for v in list(m.graph.input) + list(m.graph.output)}
    producers = {o: n for n in m.graph.node for o in n.output}
    users = collections.defaultdict(list)
    waiting = {}
    for n in m.graph.node:
        deps = {i for i in n.input if i in producers}
        waiting[id(n)] = len(deps)
        for i in deps:
            users[i].append(n)
    names, ordered = {}, []

    def key(n):
        return (base(n.name), n.op_type, tuple(names.get(i) or digest.get(i) or i for i in n.input),
                str(n.attribute))

    ready = [n for n in m.graph.node if waiting[id(n)] == 0]
    while ready:
        ready.sort(key=key)
        n = ready.pop(0)
        k = len(ordered)
        ordered.append(n)
        for j, o in enumerate(n.output):
            names[o] = o if o in keep else f"{base(o)}__t{k}_{j}"
            for u in users[o]:
                waiting[id(u)] -= 1
                if waiting[id(u)] == 0:
                    ready.append(u)
    assert len(ordered) == len(m.graph.node)
    for k, n in enumerate(ordered):
        n.name = f"{base(n.name)}__n{k}"
        n.input[:] = [names.get(i, i) for i in n.input]
        n.output[:] = [names[o] for o in n.output]
    copies = [onnx.NodeProto() for _ in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del m.graph.node[:]
    m.graph.node.extend(copies)
    del m.graph.value_info[:]
    order = {}
    for node in m.graph.node:
        order.update({i: None for i in node.input if i in inits and i not in order})
    rename = {old: f"w{k}" for k, old in enumerate(order)}
    for node in m.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
    kept = []
    for old in order:
        t = onnx.TensorProto()
        t.CopyFrom(inits[old])
        t.name = rename[old]
        kept.append(t)
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    m.graph.doc_string = ""


def append_head(raw):
    """Box decoding, sigmoid scores, per-class NMS and a cap of KEEP rows per image."""
    g = Graph()
    g.nodes, g.inits = list(raw.graph.node), list(raw.graph.initializer)
    g.names = {i.name for i in g.inits}
    inp = raw.graph.input[0].name
    enc, cls = "raw_outputs/box_encodings", "raw_outputs/class_predictions"
    g.nodes.insert(0, helper.make_node("Identity", ["image"], [inp], name="input_alias"))
    a = anchors()
    ax2 = g.i64("ax2", [2])

    def part(t, lo, hi):
        return g.node("Slice", [t, g.i64(f"s{lo}", [lo]), g.i64(f"e{hi}", [hi]), ax2])

    t = g.node("Div", [enc, g.const("box_scales", np.array(SCALES, np.float32)[None, None])])
    yx = g.node("Add", [g.node("Mul", [part(t, 0, 2), g.const("anchor_hw", a[None, :, 2:4])]),
                        g.const("anchor_yx", a[None, :, 0:2])])
    hw = g.node("Mul", [g.node("Exp", [part(t, 2, 4)]), "anchor_hw"])
    half = g.node("Mul", [hw, g.const("half", np.float32(0.5))])
    lo, hi = g.node("Sub", [yx, half]), g.node("Add", [yx, half])  # (y1, x1), (y2, x2)
    yx_boxes = g.node("Concat", [lo, hi], axis=2)  # [N, P, 4] y1 x1 y2 x2 for NMS
    xy_boxes = g.node("Gather", [yx_boxes, g.i64("xy_order", [1, 0, 3, 2])], axis=2)
    scores = g.node("Transpose", [g.node("Sigmoid", [g.node("Slice", [
        cls, g.i64("c1", [1]), g.i64("c24", [NUM_CLASSES + 1]), ax2])])], perm=[0, 2, 1])  # [N, 23, P]
    sel = g.node("NonMaxSuppression", [
        yx_boxes, scores, g.i64("nms_keep", [KEEP]), g.const("nms_iou", np.array([IOU], np.float32)),
        g.const("nms_min_score", np.array([MIN_SCORE], np.float32))], center_point_box=0)  # [K, 3]

    # Order by (image, score descending) and keep each image's first KEEP rows.
    ax1 = g.i64("ax1", [1])
    b_idx = g.node("Slice", [sel, g.i64("k0", [0]), g.i64("k1", [1]), ax1])  # [K, 1]
    score_k = g.node("GatherND", [scores, sel])  # [K]
    b_f = g.node("Cast", [g.node("Squeeze", [b_idx, ax1])], to=TensorProto.FLOAT)  # [K]
    key = g.node("Add", [g.node("Mul", [b_f, g.const("minus_two", np.float32(-2.0))]), score_k])  # s - 2b
    k_count = g.node("Shape", [score_k])
    g.n += 1
    order = f"topk_idx_{g.n}"
    g.nodes.append(helper.make_node("TopK", [key, k_count], [f"topk_val_{g.n}", order],
                                    name=f"n{g.n}_TopK", axis=0, largest=1, sorted=1))
    sel_s = g.node("Gather", [sel, order], axis=0)
    b_s = g.node("Squeeze", [g.node("Slice", [sel_s, "k0", "k1", ax1]), ax1])  # [K] sorted
    n_img = g.node("Slice", [g.node("Shape", ["image"]), "k0", "k1"])  # [1]
    imgs = g.node("Range", [g.i64("r0", 0), g.node("Squeeze", [n_img]), g.i64("r1", 1)])  # [N]
    hit = g.node("Cast", [g.node("Equal", [g.node("Unsqueeze", [b_s, ax1]),
                                           g.node("Unsqueeze", [imgs, g.i64("ax0", [0])])])],
                 to=TensorProto.INT64)  # [K, N]
    count = g.node("ReduceSum", [hit, "ax0"], keepdims=0)  # [N]
    start = g.node("CumSum", [count, g.i64("cs_ax", 0)], exclusive=1)
    pos = g.node("Range", [g.i64("r0", 0), g.node("Squeeze", [k_count]), g.i64("r1", 1)])
    rank = g.node("Sub", [pos, g.node("Gather", [start, b_s], axis=0)])
    keep = g.node("Squeeze", [g.node("NonZero", [g.node("Less", [rank, g.i64("cap", KEEP)])]), "ax0"])
    sel_k = g.node("Gather", [sel_s, keep], axis=0)  # [M, 3]
    bi = g.node("Gather", [sel_k, g.i64("bi_cols", [0, 2])], axis=1)
    rows = [g.node("Cast", [g.node("Slice", [sel_k, "k0", "k1", ax1])], to=TensorProto.FLOAT),
            g.node("Cast", [g.node("Slice", [sel_k, "k1", g.i64("k2", [2]), ax1])], to=TensorProto.FLOAT),
            g.node("Unsqueeze", [g.node("GatherND", [scores, sel_k]), ax1]),
            g.node("GatherND", [xy_boxes, bi])]
    g.node("Concat", rows, name="detections", axis=1)
    graph = helper.make_graph(
        g.nodes, "objectron_ssd",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 7])], g.inits)
    model = helper.make_model(graph, opset_imports=raw.opset_import, producer_name="vigil")
    model.ir_version = raw.ir_version
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------- reference and checks

def preprocess(img, resize="stretch"):
    """BGR frame -> [300, 300, 3] RGB in [-1, 1], as the worker feeds the manifest's input."""
    import cv2

    if resize == "stretch":
        canvas = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    else:
        h, w = img.shape[:2]
        s = min(SIZE / w, SIZE / h)
        rw, rh = max(1, round(w * s)), max(1, round(h * s))
        canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
        x, y = (SIZE - rw) // 2, (SIZE - rh) // 2
        canvas[y:y + rh, x:x + rw] = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0


def reference(enc, logits):
    """numpy decode + per-class greedy NMS of one image's raw outputs -> rows [M, 6]
    (class, score, x1, y1, x2, y2), sorted by score."""
    a = anchors()
    t = enc / np.array(SCALES, np.float32)
    yc, xc = t[:, 0] * a[:, 2] + a[:, 0], t[:, 1] * a[:, 3] + a[:, 1]
    h, w = np.exp(t[:, 2]) * a[:, 2], np.exp(t[:, 3]) * a[:, 3]
    boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], 1)
    scores = 1 / (1 + np.exp(-logits[:, 1:]))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    rows = []
    for c in range(NUM_CLASSES):
        idx = [i for i in np.argsort(-scores[:, c], kind="stable") if scores[i, c] > MIN_SCORE]
        kept = []
        for i in idx:
            if len(kept) == KEEP:
                break
            k = np.array(kept, int)
            iw = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
            ih = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
            iou = iw * ih / (area[k] + area[i] - iw * ih)
            if not len(kept) or iou.max() <= IOU:
                kept.append(i)
        rows += [(c, scores[i, c], *boxes[i]) for i in kept]
    rows = np.array(sorted(rows, key=lambda r: -r[1])[:KEEP], np.float32).reshape(-1, 6)
    return rows


def photos(read=None):
    """(name, BGR image) for the animal test photos and the face photos."""
    import cv2

    read = read or cv2.imread
    out = []
    for folder in (ANIMAL_PHOTOS, FACES):
        if os.path.isdir(folder):
            for n in sorted(os.listdir(folder)):
                img = read(os.path.join(folder, n)) if n.endswith((".jpg", ".png")) else None
                if img is not None:
                    out.append((n, img))
    return out


def tflite_raw(interp, x):
    d_in = interp.get_input_details()[0]
    outs = {d["name"]: d["index"] for d in interp.get_output_details()}
    interp.set_tensor(d_in["index"], x)
    interp.invoke()
    return (interp.get_tensor(outs["raw_outputs/box_encodings"]),
            interp.get_tensor(outs["raw_outputs/class_predictions"]))


def check(model, raw, tflite):
    import onnxruntime as ort
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=tflite)
    interp.allocate_tensors()
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    raw_s = ort.InferenceSession(raw.SerializeToString(), o, providers=["CPUExecutionProvider"])
    sess = ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    pics = photos()
    xs = [rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2)]
    xs += [preprocess(img)[None] for _, img in pics]
    batch = np.concatenate(xs)
    got_enc, got_cls = raw_s.run(None, {raw.graph.input[0].name: batch})
    worst = [0.0, 0.0]
    rows_worst, n_rows = 0.0, 0
    full = sess.run(None, {"image": batch})[0]
    for i, x in enumerate(xs):
        enc, logit = tflite_raw(interp, x)
        worst[0] = max(worst[0], float(np.abs(enc - got_enc[i:i + 1]).max()))
        worst[1] = max(worst[1], float(np.abs(logit - got_cls[i:i + 1]).max()))
        ref = reference(enc[0], logit[0])
        single = sess.run(None, {"image": x})[0]
        mine = full[full[:, 0] == i]
        if mine.shape != single.shape or (len(mine) and np.abs(mine[:, 1:] - single[:, 1:]).max() > 1e-4):
            sys.exit(f"batch differs from a single run for input {i}")
        # rows over 0.3 must match the reference (near the floor, rounding may flip one)
        r, s = ref[ref[:, 1] > 0.3], single[single[:, 2] > 0.3]
        if r.shape[0] != s.shape[0]:
            sys.exit(f"input {i}: {s.shape[0]} rows over 0.3, reference {r.shape[0]}")
        if len(r):
            r = r[np.lexsort((r[:, 0], -np.round(r[:, 1], 4)))]
            s = s[np.lexsort((s[:, 1], -np.round(s[:, 2], 4)))]
            d = max(float(np.abs(r[:, 0] - s[:, 1]).max()), float(np.abs(r[:, 1:] - s[:, 2:]).max()))
            if d > 2e-3:
                sys.exit(f"input {i}: decoded rows differ from the numpy reference by {d}")
            rows_worst, n_rows = max(rows_worst, d), n_rows + len(r)
    print(f"raw parity with TFLite on {len(xs)} inputs: box encodings {worst[0]:.1e}, "
          f"class logits {worst[1]:.1e}")
    if worst[0] > 1e-2 or worst[1] > 1e-2:
        sys.exit("ONNX differs from TFLite")
    print(f"decoded: {n_rows} rows over 0.3 match the numpy reference (max diff {rows_worst:.1e}); "
          f"batch of {len(xs)} == single runs")
    # The per-image cap: with it lowered to 2, each image keeps its 2 best rows.
    capped = onnx.ModelProto()
    capped.CopyFrom(model)
    for init in capped.graph.initializer:
        if init.name == "cap":
            init.CopyFrom(numpy_helper.from_array(np.array(2, np.int64), "cap"))
    two = ort.InferenceSession(capped.SerializeToString(), o, providers=["CPUExecutionProvider"])
    two = two.run(None, {"image": batch})[0]
    for i in range(len(xs)):
        want = full[full[:, 0] == i][:2]
        if not np.array_equal(two[two[:, 0] == i], want):
            sys.exit(f"per-image cap wrong for input {i}")
    if not all(np.all(np.diff(full[full[:, 0] == i][:, 2]) <= 0) for i in range(len(xs))):
        sys.exit("rows of an image are not sorted by score")
    blank = sess.run(None, {"image": np.zeros((2, SIZE, SIZE, 3), np.float32) - 1})[0]
    print(f"per-image cap and score order checked; black frames: {blank.shape[0]} rows")
    return max(worst)


def main():
    import onnxruntime  # noqa: F401  (fail early if the venv is incomplete)

    pkg = package_dir()
    tflite = read_assets(pkg)
    check_graph_options(pkg)
    lic = os.path.join(HERE, "LICENSE-mediapipe")
    if not open(lic).read().lstrip().startswith("Apache License"):
        sys.exit("models/LICENSE-mediapipe must hold the Apache-2.0 text (build_palm.py writes it)")
    with tempfile.TemporaryDirectory() as tmp:
        raw, patched = convert_raw(tflite, os.path.join(tmp, "raw.onnx"))
    print(f"converted {os.path.basename(tflite)}; {patched} reshape shapes patched for a dynamic batch")
    model = append_head(raw)
    worst = check(model, raw, tflite)
    out = os.path.join(HERE, "objectron.onnx")
    onnx.save(model, out)
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    with open(os.path.join(HERE, "objectron.toml"), "w") as f:
        f.write("# People and animals: the 2-D SSD of MediaPipe Objectron (23 Open Images classes),\n"
                "# decode and per-class NMS in the graph. See models/measurements/objectron.md.\n")
        f.write(manifest(
            "objectron", f"{PACKAGE_VERSION}-onnx1", "objectron.onnx", digest,
            f"npm {PACKAGE} {PACKAGE_VERSION} ({ASSETS}, bytes 184..end: "
            "object_detection_ssd_mobilenetv2_oidv4_fp16.tflite, MediaPipe)",
            "Apache-2.0 (MediaPipe, see LICENSE-mediapipe)",
            f"Built by models/build_objectron.py with tf2onnx 1.16.1 (tflite), batch made dynamic, "
            f"SSD decode (1917 anchors, scales 10/10/5/5), sigmoid scores and per-class "
            f"NonMaxSuppression (IoU {IOU}, score {MIN_SCORE}, keep {KEEP} per image) appended; "
            f"raw outputs within {worst:.1e} of TFLite.",
            SIZE, "NHWC", "RGB", (127.5,) * 3, (127.5,) * 3, resize="stretch", labels=LABELS))
    print(f"wrote {out} sha256 {digest}")


# ---------------------------------------------------------------- measurements (--measure)

def reduced_read(path, size=SIZE):
    """Decode as the worker does: the largest libjpeg reduction keeping both sides >= size."""
    return geometry.decode_reduced(path, size, size)


def measure():
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(HERE, "objectron.onnx"), o, providers=["CPUExecutionProvider"])
    animals = {LABELS.index("cat"), LABELS.index("dog")}

    def detect(img, resize):
        d = sess.run(None, {"image": preprocess(img, resize)[None]})[0]
        return d[np.argsort(-d[:, 2])]

    print("## photos: top rows (stretch | letterbox)")
    extra = [(os.path.basename(p), reduced_read(p)) for p in sys.argv[2:]]
    for name, img in photos(reduced_read) + extra:
        for resize in ("stretch", "letterbox"):
            d = detect(img, resize)
            top = ", ".join(f"{LABELS[int(r[1])]} {r[2]:.2f}" for r in d[:5])
            best = {LABELS[c]: max([float(r[2]) for r in d if int(r[1]) == c] or [0.0]) for c in sorted(animals)}
            print(f"{name}\t{resize}\tcat {best['cat']:.2f} dog {best['dog']:.2f}\t{top}")

    print("## mask-scenes (853 photos of people): best cat/dog score per image")
    names = sorted(os.listdir(MASK_SCENES))
    best = {}
    for resize in ("stretch", "letterbox"):
        s = []
        for n in names:
            d = detect(reduced_read(os.path.join(MASK_SCENES, n)), resize)
            a = d[np.isin(d[:, 1].astype(int), list(animals))]
            s.append((float(a[:, 2].max()) if len(a) else 0.0,
                      LABELS[int(a[np.argmax(a[:, 2]), 1])] if len(a) else "-", n))
        best[resize] = s
        for thr in (0.3, 0.4, 0.5, 0.6, 0.7):
            hits = [x for x in s if x[0] >= thr]
            print(f"{resize}\tthreshold {thr}: {len(hits)}/{len(s)} images with a cat/dog row")
        print(f"{resize}\tworst: " + ", ".join(f"{n} {c} {v:.2f}" for v, c, n in sorted(s, reverse=True)[:8]))
    json.dump(best, open(os.path.join(tempfile.gettempdir(), "objectron_mask_scenes.json"), "w"))

    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), np.uint8)
    x = preprocess(frame)[None]
    for _ in range(5):
        sess.run(None, {"image": x})
    t = []
    for _ in range(50):
        t0 = time.perf_counter()
        sess.run(None, {"image": preprocess(frame)[None]})
        t.append(time.perf_counter() - t0)
    print(f"1280x720 frame, resize + normalise + run, 1 thread: median {1e3 * np.median(t):.1f} ms, "
          f"min {1e3 * min(t):.1f} ms")


if __name__ == "__main__":
    measure() if sys.argv[1:2] == ["--measure"] else main()
