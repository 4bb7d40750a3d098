"""Weighs INT8 static quantisation of the default models: builds QDQ INT8 copies with ONNX Runtime
and measures them against fp32 on held-out data.

Quantisation: onnxruntime.quantization.quantize_static, QuantFormat.QDQ, activations QUInt8,
weights QInt8 per channel, MinMax calibration on TRAINING data only:
- mask_v2: face crops of the mask-scenes TRAIN split cut as models/train_mask_classifier.py cuts
  them (its own functions are used);
- gloves: labelled hand boxes of the gloves TRAIN split at the rule's margin 0.8;
- yunet: mask-scenes TRAIN images, the worker's reduced decode + letterbox to 640x384;
- objectron: mask-scenes TRAIN images stretched to 300x300 RGB;
- palm: gloves TRAIN images letterboxed to 192x192 RGB 0..1.
Detectors: only the backbone is quantised. A node counts as backbone when its output feeds
(transitively) another Conv; the last convolutions (the raw score/box heads) and everything after
them (in-graph decode, NonMaxSuppression) are passed as nodes_to_exclude and stay fp32, so box
coordinates, anchors and NMS never go through 8 bits. Softmax stays fp32 in the classifiers.

Measurement (one process, ONNX Runtime 1 thread): speed per item at batch 1 and 8 (median of
>= 30 runs, fp32 and int8 alternating), and accuracy on held-out data (VAL splits, test photos).
Writes the INT8 files to --out (default /tmp/int8) and the report to
models/measurements/int8.md.

Run: nice -n 19 .venv/bin/python models/quantize.py [--out /tmp/int8]
(ONNX Runtime's quantisation package also needs `sympy`, which scripts/requirements.txt pins.)
"""
import argparse
import os
import sys
import time
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

from vigil_tools import geometry  # the worker's pixel geometry
from vigil_tools import train_gloves_classifier as tgc
from vigil_tools import train_mask_classifier as tmc
from vigil_tools.detector_head import letterbox

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SHARED = os.environ.get("VIGIL_SHARED", os.path.join(ROOT, "..", "shared"))
SCENES = os.path.join(SHARED, "data", "mask-scenes")
GLOVES = os.path.join(SHARED, "data", "gloves")
SEED = 20240615
N_CAL_CROPS, N_CAL_IMAGES = 256, 64
YW, YH = 640, 384
REPORT = os.path.join(HERE, "measurements", "int8.md")

# The calibrator builds its own session; keep it at one thread like everything else here.
_SessionOptions = ort.SessionOptions


def _one_thread_options():
    o = _SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return o


ort.SessionOptions = _one_thread_options


# ------------------------------------------------------------------------------ inputs
reduced = geometry.decode_reduced  # the worker's decode: largest libjpeg reduction keeping the frame >= the input


def yunet_input(img):
    canvas, geo = letterbox(img, YW, YH)
    return canvas.astype(np.float32).transpose(2, 0, 1), geo


def objectron_input(img):
    c = cv2.resize(img, (300, 300), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(c, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0


def palm_input(img):
    canvas, _ = letterbox(img, 192, 192)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def chw(x):
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def mask_crops(stems):
    """[(CHW tensor, label, shorter side px)] as train_mask_classifier cuts them."""
    out = []
    for stem in stems:
        img, fs = tmc.faces(SCENES, stem)
        for box, label, side in fs:
            out.append((chw(tmc.crop_input(img, box)), label, side))
    return out


def glove_crops(names, margin=0.8):
    """[(CHW tensor, label)] of the labelled hand boxes, decoded as the worker decodes for palm."""
    out = []
    for name in names:
        img = tgc.decode(os.path.join(GLOVES, name))
        h, w = img.shape[:2]
        for c, *b in tgc.labelled_boxes(name):
            b = np.clip(np.array(b, np.float32), 0, 1)
            if min((b[2] - b[0]) * w, (b[3] - b[1]) * h) < 16:
                continue
            x, y, cw, ch = tgc.crop_rect(b, margin, w, h)
            out.append((chw(tgc.classifier_input(img[y:y + ch, x:x + cw])), c))
    return out


def scene_truth(stem):
    root = ET.parse(os.path.join(SCENES, "annotations", stem + ".xml")).getroot()
    boxes = []
    for o in root.iter("object"):
        bb = o.find("bndbox")
        boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
    return np.array(boxes, np.float64).reshape(-1, 4)


def split(name):
    return [l.strip() for l in open(os.path.join(HERE, "splits", name + ".txt")) if l.strip()]


# ------------------------------------------------------------------------------ quantisation
class Reader(CalibrationDataReader):
    def __init__(self, name, tensors):
        self.name, self.it = name, iter(tensors)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: x[None].astype(np.float32)}


def named(model):
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_q{i}"
    return model


def head_nodes(model):
    """Nodes that do not feed (transitively) a Conv: the final convs and the decode/NMS."""
    g = model.graph
    consumers = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    memo = {}

    def feeds_conv(n):
        if n.name in memo:
            return memo[n.name]
        memo[n.name] = False
        r = any(c.op_type == "Conv" or feeds_conv(c) for t in n.output for c in consumers.get(t, []))
        memo[n.name] = r
        return r

    sys.setrecursionlimit(10000)
    return [n.name for n in g.node if not feeds_conv(n)]


def quantise(src, dst, tensors, detector, full_classifier=False, fp32_last_convs=0, extra_options=None):
    """QDQ INT8 copy of `src`: detectors (and classifiers unless `full_classifier`) keep their
    head in fp32; `fp32_last_convs` keeps that many more convolutions (the backbone's last) in
    fp32; `extra_options` goes to the quantiser as it is."""
    m = named(onnx.load(src))
    tmp = dst + ".named.onnx"
    onnx.save(m, tmp)
    if detector or not full_classifier:
        exclude = head_nodes(m)
    else:
        exclude = [n.name for n in m.graph.node if n.op_type == "Softmax"]
    if fp32_last_convs:
        exclude += [n.name for n in m.graph.node if n.op_type == "Conv" and n.name not in exclude][-fp32_last_convs:]
    name = m.graph.input[0].name
    t = time.time()
    quantize_static(tmp, dst, Reader(name, tensors), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                    extra_options=extra_options or {})
    os.remove(tmp)
    kinds = {}
    for n in m.graph.node:
        if n.name in exclude:
            kinds[n.op_type] = kinds.get(n.op_type, 0) + 1
    print(f"{os.path.basename(dst)}: {len(tensors)} calibration inputs, {len(exclude)} nodes kept fp32 "
          f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}), {time.time() - t:.0f} s", flush=True)
    return len(exclude), kinds


def session(path):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------ measurement
def speed(fp, q, inputs, batch, runs=30):
    """Median ms per item, fp32 and int8 alternating."""
    name = fp.get_inputs()[0].name
    x = np.stack(inputs[:batch]).astype(np.float32)
    for s in (fp, q):
        s.run(None, {name: x})
    tf, tq = [], []
    for _ in range(runs):
        for s, acc in ((fp, tf), (q, tq)):
            t = time.perf_counter()
            s.run(None, {name: x})
            acc.append((time.perf_counter() - t) * 1000 / batch)
    return float(np.median(tf)), float(np.median(tq))


def classify(sess, xs, bs=32):
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: np.stack(xs[i:i + bs])})[0] for i in range(0, len(xs), bs)]
    return np.concatenate(out)


def iou(a, b):
    """IoU of box `a` with each box of `b`."""
    return geometry.iou_matrix(a, b)[0]


def greedy(dets, truth, thr=0.4):
    """dets sorted by score desc (x1..y2); returns bool matched per truth box."""
    return geometry.match_by_score(np.asarray(dets, np.float64).reshape(-1, 4), truth, thr)[0]


def det_diff(a, b, thr=0.5):
    """Max coordinate difference (input-normalised) between matched detections of two runs at
    score >= thr, and the number of detections in one run without a partner (IoU >= 0.5) in the
    other."""
    a, b = a[a[:, 2] >= thr], b[b[:, 2] >= thr]
    worst, unmatched, used = 0.0, 0, np.zeros(len(b), bool)
    for d in a[np.argsort(-a[:, 2])]:
        cand = b[:, 1] == d[1]
        if cand.sum() == 0:
            unmatched += 1
            continue
        o = iou(d[3:7], b[:, 3:7])
        o[~cand | used] = -1
        j = int(np.argmax(o))
        if o[j] < 0.5:
            unmatched += 1
            continue
        used[j] = True
        worst = max(worst, float(np.abs(d[3:7] - b[j, 3:7]).max()))
    return worst, unmatched + int((~used).sum())


def pr(pred, truth):
    v_p, v_t = np.isin(pred, (1, 2)), np.isin(truth, (1, 2))
    tp = int((v_p & v_t).sum())
    return tp / max(v_p.sum(), 1), tp / max(v_t.sum(), 1)


def speed_only(args):
    """A longer timing pass over files already written: prints a Markdown table."""
    val = split("mask-scenes-val")[:8]
    imgs = [reduced(os.path.join(SCENES, "images", s + ".jpg"), YW, YH) for s in val]
    gl = split("gloves-val")[:8]
    inputs = {"mask_v2": [c[0] for c in mask_crops(val)][:8], "gloves": [c[0] for c in glove_crops(gl)][:8],
              "yunet": [yunet_input(i)[0] for i in imgs], "objectron": [objectron_input(i) for i in imgs],
              "palm": [palm_input(tgc.decode(os.path.join(GLOVES, n))) for n in gl]}
    print(f"| model | b1 fp32 | b1 int8 | speed-up | b8 fp32 | b8 int8 | speed-up |  ({args.speed_only} runs each)")
    print("|---|---|---|---|---|---|---|")
    for name, xs in inputs.items():
        fp = session(os.path.join(HERE, name + ".onnx"))
        q = session(os.path.join(args.out, name + ".int8.onnx"))
        (a, b), (c, d) = speed(fp, q, xs, 1, args.speed_only), speed(fp, q, xs, 8, args.speed_only)
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}× | {c:.2f} | {d:.2f} | {c / d:.2f}× |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/int8")
    ap.add_argument("--skip-quantise", action="store_true")
    ap.add_argument("--report", default=REPORT)
    ap.add_argument("--full-classifiers", action="store_true",
                    help="quantise the classifiers' dense head too (only the Softmax stays fp32)")
    ap.add_argument("--speed-only", type=int, metavar="RUNS", default=0,
                    help="only time the existing int8 files against fp32 with RUNS runs per batch size")
    args = ap.parse_args()
    if args.speed_only:
        return speed_only(args)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    t0 = time.time()
    L = []  # report lines
    P = lambda name: os.path.join(HERE, name + ".onnx")
    Q = lambda name: os.path.join(args.out, name + ".int8.onnx")

    # ---------------- data
    scenes_train, scenes_val = split("mask-scenes-train"), split("mask-scenes-val")
    gl_train, gl_val = split("gloves-train"), split("gloves-val")
    cal_stems = sorted(rng.choice(scenes_train, N_CAL_IMAGES, replace=False))
    train_crops = mask_crops(scenes_train)
    cal_mask = [train_crops[i][0] for i in sorted(rng.choice(len(train_crops), N_CAL_CROPS, replace=False))]
    del train_crops
    gl_train_crops = glove_crops(sorted(rng.choice(gl_train, 200, replace=False)))
    cal_gloves = [gl_train_crops[i][0] for i in sorted(rng.choice(len(gl_train_crops), min(N_CAL_CROPS, len(gl_train_crops)), replace=False))]
    del gl_train_crops
    cal_imgs = [reduced(os.path.join(SCENES, "images", s + ".jpg"), YW, YH) for s in cal_stems]
    cal_yunet = [yunet_input(i)[0] for i in cal_imgs]
    cal_obj = [objectron_input(reduced(os.path.join(SCENES, "images", s + ".jpg"), 300, 300)) for s in cal_stems]
    cal_palm = [palm_input(tgc.decode(os.path.join(GLOVES, n))) for n in sorted(rng.choice(gl_train, N_CAL_IMAGES, replace=False))]
    print(f"calibration data ready {time.time() - t0:.0f} s", flush=True)

    plan = [("mask_v2", cal_mask, False), ("gloves", cal_gloves, False), ("yunet", cal_yunet, True),
            ("objectron", cal_obj, True), ("palm", cal_palm, True)]
    kept = {}
    for name, cal, det in plan:
        if not args.skip_quantise or not os.path.exists(Q(name)):
            kept[name] = quantise(P(name), Q(name), cal, det, args.full_classifiers)
    del cal_mask, cal_gloves, cal_yunet, cal_obj, cal_palm
    sizes = {n: (os.path.getsize(P(n)), os.path.getsize(Q(n))) for n, _, _ in plan}

    # ---------------- held-out inputs
    val_crops = mask_crops(scenes_val)
    val_imgs = [(s, reduced(os.path.join(SCENES, "images", s + ".jpg"), YW, YH)) for s in scenes_val]
    gl_val_crops = glove_crops(gl_val)
    photos = [os.path.join(ROOT, "tests/data/animals/chelsea.jpg")] + sorted(
        os.path.join(ROOT, "tests/data/faces", f) for f in os.listdir(os.path.join(ROOT, "tests/data/faces"))
        if f.endswith((".jpg", ".png")))
    print(f"held-out data ready {time.time() - t0:.0f} s", flush=True)

    # ---------------- speed
    spd_inputs = {
        "mask_v2": [c[0] for c in val_crops[:8]],
        "gloves": [c[0] for c in gl_val_crops[:8]],
        "yunet": [yunet_input(i)[0] for _, i in val_imgs[:8]],
        "objectron": [objectron_input(i) for _, i in val_imgs[:8]],
        "palm": [palm_input(tgc.decode(os.path.join(GLOVES, n))) for n in gl_val[:8]],
    }
    spd = {}
    for name, _, _ in plan:
        fp, q = session(P(name)), session(Q(name))
        spd[name] = (speed(fp, q, spd_inputs[name], 1, 40), speed(fp, q, spd_inputs[name], 8, 30))
        print(name, "speed", spd[name], flush=True)

    # ---------------- mask_v2
    fp, q = session(P("mask_v2")), session(Q("mask_v2"))
    xs = [c[0] for c in val_crops]
    y = np.array([c[1] for c in val_crops])
    pf, pq = classify(fp, xs), classify(q, xs)
    af, aq = pf.argmax(1), pq.argmax(1)
    mask_res = {"n": len(y), "fp32": (pr(af, y), [float((af[y == k] == k).mean()) for k in range(3)]),
                "int8": (pr(aq, y), [float((aq[y == k] == k).mean()) for k in range(3)]),
                "agree": float((af == aq).mean()), "maxprob": float(np.abs(pf - pq).max()),
                "counts": [int((y == k).sum()) for k in range(3)]}
    print("mask_v2", mask_res, flush=True)

    # ---------------- gloves
    fp, q = session(P("gloves")), session(Q("gloves"))
    xs = [c[0] for c in gl_val_crops]
    y = np.array([c[1] for c in gl_val_crops])
    pf, pq = classify(fp, xs), classify(q, xs)
    af, aq = pf.argmax(1), pq.argmax(1)
    gl_res = {"n": len(y), "fp32": (float((af == y).mean()), [float((af[y == k] == k).mean()) for k in range(2)]),
              "int8": (float((aq == y).mean()), [float((aq[y == k] == k).mean()) for k in range(2)]),
              "agree": float((af == aq).mean()), "maxprob": float(np.abs(pf - pq).max()),
              "counts": [int((y == k).sum()) for k in range(2)]}
    print("gloves", gl_res, flush=True)

    # ---------------- yunet
    fp, q = session(P("yunet")), session(Q("yunet"))
    bins = ((0, 32, "<32"), (32, 64, "32–64"), (64, 1e9, "≥64"))
    hits = {"fp32": [[0, 0] for _ in bins], "int8": [[0, 0] for _ in bins]}
    ndet = {"fp32": [0, 0], "int8": [0, 0]}
    worst, unmatched = 0.0, 0
    for stem, img in val_imgs:
        x, (ox, oy, rw, rh) = yunet_input(img)
        truth = scene_truth(stem)
        root = ET.parse(os.path.join(SCENES, "annotations", stem + ".xml")).getroot()
        W, H = int(root.find("size/width").text), int(root.find("size/height").text)
        heights = truth[:, 3] - truth[:, 1]
        outs = {}
        for tag, s in (("fp32", fp), ("int8", q)):
            d = s.run(None, {"input": x[None]})[0]
            outs[tag] = d
            d = d[d[:, 2] >= 0.5]
            d = d[np.argsort(-d[:, 2])]
            b = np.stack([(d[:, 3] * YW - ox) / rw * W, (d[:, 4] * YH - oy) / rh * H,
                          (d[:, 5] * YW - ox) / rw * W, (d[:, 6] * YH - oy) / rh * H], 1)
            hit = greedy(b, truth)
            for k, (lo, hi, _) in enumerate(bins):
                sel = (heights >= lo) & (heights < hi)
                hits[tag][k][0] += int(hit[sel].sum())
                hits[tag][k][1] += int(sel.sum())
            # precision: detections matching a labelled face
            ndet[tag][1] += len(b)
            used = np.zeros(len(truth), bool)
            for bb in b:
                if len(truth):
                    o = iou(bb, truth)
                    o[used] = -1
                    j = int(np.argmax(o))
                    if o[j] >= 0.4:
                        used[j] = True
                        ndet[tag][0] += 1
        w_, u_ = det_diff(outs["fp32"], outs["int8"])
        worst, unmatched = max(worst, w_), unmatched + u_
    yu_res = {"hits": hits, "ndet": ndet, "worst": worst, "unmatched": unmatched}
    print("yunet", yu_res, flush=True)

    # ---------------- objectron
    fp, q = session(P("objectron")), session(Q("objectron"))
    labels = {3: "person", 7: "cat", 19: "dog"}
    obj_rows, obj_worst, obj_un = [], 0.0, 0
    for p in photos:
        x = objectron_input(reduced(p, 300, 300))[None]
        row = []
        outs = {}
        for tag, s in (("fp32", fp), ("int8", q)):
            d = s.run(None, {"image": x})[0]
            outs[tag] = d
            row.append({v: float(d[d[:, 1] == k, 2].max()) if (d[:, 1] == k).any() else 0.0 for k, v in labels.items()})
        w_, u_ = det_diff(outs["fp32"], outs["int8"])
        obj_worst, obj_un = max(obj_worst, w_), obj_un + u_
        obj_rows.append((os.path.relpath(p, ROOT), row))
    print("objectron", obj_rows, obj_worst, obj_un, flush=True)
    # held-out scenes without animals: cat/dog alarms at the no_animals threshold (0.6), and
    # whether int8 keeps the fp32 verdict "a person >= 0.5 in the frame"
    held = [os.path.join(SCENES, "images", s + ".jpg") for s in scenes_val] + [os.path.join(GLOVES, n) for n in gl_val]
    obj_alarm = {"fp32": 0, "int8": 0}
    obj_person = {"fp32": 0, "int8": 0, "same": 0}
    obj_sw, obj_su = 0.0, 0
    for p in held:
        x = objectron_input(reduced(p, 300, 300))[None]
        outs, person = {}, {}
        for tag, s in (("fp32", fp), ("int8", q)):
            d = s.run(None, {"image": x})[0]
            outs[tag] = d
            obj_alarm[tag] += int((np.isin(d[:, 1], (7, 19)) & (d[:, 2] >= 0.6)).any())
            person[tag] = bool(((d[:, 1] == 3) & (d[:, 2] >= 0.5)).any())
            obj_person[tag] += person[tag]
        obj_person["same"] += person["fp32"] == person["int8"]
        w_, u_ = det_diff(outs["fp32"], outs["int8"])
        obj_sw, obj_su = max(obj_sw, w_), obj_su + u_
    print("objectron held-out", len(held), obj_alarm, obj_person, obj_sw, obj_su, flush=True)

    # ---------------- palm: bare-hand recall (palm centre inside a bare_hand box) at score 0.5
    fp, q = session(P("palm")), session(Q("palm"))
    palm_hits = {"fp32": [0, 0], "int8": [0, 0]}
    palm_worst, palm_un = 0.0, 0
    for n in gl_val:
        img = tgc.decode(os.path.join(GLOVES, n))
        h, w = img.shape[:2]
        x = palm_input(img)[None]
        bare = [b for c, *b in tgc.labelled_boxes(n) if c == 0]
        outs = {}
        for tag, s in (("fp32", fp), ("int8", q)):
            d = s.run(None, {"image": x})[0]
            outs[tag] = d
            d = d[d[:, 2] >= 0.5]
            cs = [tgc.to_image(r[3:7], w, h) for r in d]
            cs = [((c[0] + c[2]) / 2, (c[1] + c[3]) / 2) for c in cs]
            for b in bare:
                palm_hits[tag][1] += 1
                palm_hits[tag][0] += any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for cx, cy in cs)
        w_, u_ = det_diff(outs["fp32"], outs["int8"])
        palm_worst, palm_un = max(palm_worst, w_), palm_un + u_
    print("palm", palm_hits, palm_worst, palm_un, flush=True)

    # ---------------- report
    f3 = lambda v: f"{v:.3f}"
    L += ["# INT8 static quantisation of the default models: measured", "",
          "Written by `models/quantize.py` (one run; numbers below are from that run).", "",
          "```sh", "nice -n 19 .venv/bin/python models/quantize.py --out " + args.out
          + (" --full-classifiers" if args.full_classifiers else ""), "```", "",
          f"ONNX Runtime {ort.__version__}, CPUExecutionProvider, 1 intra-op thread; CPU has AVX2 and "
          "AVX-VNNI. `quantize_static`, QDQ, activations uint8, weights int8 per channel, MinMax "
          f"calibration on TRAIN data only ({N_CAL_CROPS} face crops of mask-scenes TRAIN cut as "
          f"`train_mask_classifier.py` cuts them; {len(cal_stems)} mask-scenes TRAIN images for YuNet "
          "(letterbox 640×384) and Objectron (stretch 300×300); up to "
          f"{N_CAL_CROPS} labelled-hand crops (margin 0.8) and {N_CAL_IMAGES} images of gloves TRAIN "
          "for gloves and palm). Seed " + str(SEED) + ".", "",
          "Detectors: only the backbone is quantised — every node whose output does not feed another "
          "Conv (the final score/box convolutions, the decode and NonMaxSuppression) is in "
          "`nodes_to_exclude` and stays fp32. Classifiers: " + ("everything but the Softmax (`--full-classifiers`)."
          if args.full_classifiers else "the same rule, so the pooled-feature head (AveragePool, Reshape, "
          "MatMul/Add/Relu, Softmax) stays fp32 and only the MobileNetV2 convolutions are int8."), "",
          "## Files and speed (ms per item, median, fp32 and int8 runs alternating)", "",
          "| model | fp32 MB | int8 MB | nodes kept fp32 | batch 1 fp32 | batch 1 int8 | speed-up | batch 8 fp32 | batch 8 int8 | speed-up |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for name, _, _ in plan:
        (b1f, b1q), (b8f, b8q) = spd[name]
        k = kept.get(name, (0, {}))
        L.append(f"| {name} | {sizes[name][0] / 1e6:.1f} | {sizes[name][1] / 1e6:.1f} | {k[0]} | {b1f:.2f} | {b1q:.2f} | "
                 f"{b1f / b1q:.2f}× | {b8f:.2f} | {b8q:.2f} | {b8f / b8q:.2f}× |")
    L += ["", "Batch 1: 40 runs each; batch 8: 30 runs each (per-item time = run time / 8). Inputs are "
          "real held-out items (VAL crops / VAL images).", ""]
    m = mask_res
    L += ["## mask_v2 on the mask-scenes VAL crops", "",
          f"{m['n']} crops (mask {m['counts'][0]}, no_mask {m['counts'][1]}, mask_incorrect {m['counts'][2]}), "
          "labelled boxes cut as the training script cuts them. Violation = no_mask or mask_incorrect.", "",
          "| model | violation P | violation R | recall mask | recall no_mask | recall mask_incorrect |",
          "|---|---|---|---|---|---|"]
    for tag in ("fp32", "int8"):
        (p, r), rc = m[tag]
        L.append(f"| {tag} | {f3(p)} | {f3(r)} | {' | '.join(f3(v) for v in rc)} |")
    L += ["", f"Top label agreement int8 vs fp32: {m['agree']:.4f} ({round(m['agree'] * m['n'])}/{m['n']}); "
          f"max abs probability difference {m['maxprob']:.4f}.", ""]
    g = gl_res
    L += ["## gloves on the gloves VAL labelled-hand crops (margin 0.8)", "",
          f"{g['n']} crops (bare_hand {g['counts'][0]}, gloved_hand {g['counts'][1]}).", "",
          "| model | accuracy | recall bare_hand | recall gloved_hand |", "|---|---|---|---|"]
    for tag in ("fp32", "int8"):
        a, rc = g[tag]
        L.append(f"| {tag} | {f3(a)} | {f3(rc[0])} | {f3(rc[1])} |")
    L += ["", f"Top label agreement: {g['agree']:.4f}; max abs probability difference {g['maxprob']:.4f}.", ""]
    L += ["## yunet on the mask-scenes VAL images", "",
          f"{len(val_imgs)} images, worker decode + letterbox 640×384. Face recall: labelled faces matched "
          "by a detection of score ≥ 0.5 at IoU ≥ 0.4 (greedy, by descending score), by labelled face "
          "height in the original image. Precision: detections ≥ 0.5 that match a labelled face.", "",
          "| model | <32 px | 32–64 px | ≥64 px | all | precision |", "|---|---|---|---|---|---|"]
    for tag in ("fp32", "int8"):
        hs = yu_res["hits"][tag]
        tot = [sum(h[0] for h in hs), sum(h[1] for h in hs)]
        L.append(f"| {tag} | " + " | ".join(f"{h[0] / h[1]:.3f} ({h[0]}/{h[1]})" for h in hs + [tot])
                 + f" | {yu_res['ndet'][tag][0] / max(yu_res['ndet'][tag][1], 1):.3f} |")
    L += ["", f"Detections at score ≥ 0.5, int8 vs fp32 (same class, IoU ≥ 0.5 pairing): max coordinate "
          f"difference {yu_res['worst']:.4f} of the input size (≈ {yu_res['worst'] * YW:.1f} px on the 640 side); "
          f"{yu_res['unmatched']} detections in one run without a partner in the other.", ""]
    L += ["## objectron: top scores (cat / dog / person)", "",
          "| photo | fp32 cat | int8 cat | fp32 dog | int8 dog | fp32 person | int8 person |", "|---|---|---|---|---|---|---|"]
    for p, (a, b) in obj_rows:
        L.append(f"| {p} | {a['cat']:.3f} | {b['cat']:.3f} | {a['dog']:.3f} | {b['dog']:.3f} | {a['person']:.3f} | {b['person']:.3f} |")
    L += ["", "0.000 = no detection of that class (the graph's NMS floor is 0.2). Detections at score ≥ 0.5, "
          f"int8 vs fp32: max coordinate difference {obj_worst:.4f}; {obj_un} without a partner.", ""]
    L += [f"Held-out frames (mask-scenes VAL + gloves VAL, {len(held)} photos of faces and hands): frames with a "
          f"cat/dog detection ≥ 0.6 (the `no_animals` threshold): fp32 {obj_alarm['fp32']}, int8 {obj_alarm['int8']}. "
          f"Frames with a person ≥ 0.5: fp32 {obj_person['fp32']}, int8 {obj_person['int8']}, same verdict on "
          f"{obj_person['same']}/{len(held)}. Detections ≥ 0.5, int8 vs fp32: max coordinate difference "
          f"{obj_sw:.4f}; {obj_su} without a partner.", ""]
    L += ["## palm on the gloves VAL images", "",
          "Bare-hand recall: labelled bare hands containing the centre of a palm detection of score ≥ 0.5.", "",
          "| model | bare hands found |", "|---|---|"]
    for tag in ("fp32", "int8"):
        h = palm_hits[tag]
        L.append(f"| {tag} | {h[0] / max(h[1], 1):.3f} ({h[0]}/{h[1]}) |")
    L += ["", f"Detections ≥ 0.5, int8 vs fp32: max coordinate difference {palm_worst:.4f}; {palm_un} without a partner.", ""]
    L += [f"Run time of the whole script: {time.time() - t0:.0f} s.", ""]
    with open(args.report, "w") as fh:
        fh.write("\n".join(L))
    print("wrote", args.report, flush=True)


if __name__ == "__main__":
    main()
