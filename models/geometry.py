"""The worker's pixel geometry, once, for every Python tool that must cut, fit or match boxes the
way `vigil worker` does (training crops, evaluation, the Python reference worker). Each function
names its Rust original and computes in the same arithmetic (f32 where the worker uses f32,
rounding half away from zero where it rounds): `tests/geometry.rs` runs these functions on
thousands of cases beside the Rust ones and requires identical answers.

Boxes are (x1, y1, x2, y2); "normalised" boxes are fractions of the image (0..1). Only numpy,
except `decode_reduced`, which imports OpenCV when called.
"""
import math

import numpy as np

F32 = np.float32


def _round(v):
    """f64::round: half away from zero (Python's round() rounds half to even)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def reduction_factor(w, h, need_w, need_h):
    """src/decode/image.rs reduction_factor: the largest libjpeg scale-down (8, 4, 2) that
    leaves the image at least need_w x need_h, else 1."""
    for f in (8, 4, 2):
        if w // f >= need_w and h // f >= need_h:
            return f
    return 1


def reduced_flag(factor):
    """The OpenCV imread/imdecode flag that decodes a JPEG at libjpeg's scale-down `factor`
    (1, 2, 4 or 8), in colour."""
    import cv2

    return {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[factor]


def decode_reduced(src, need_w, need_h, size=None):
    """src/decode/image.rs decode: the image (JPEG bytes, or a file's path) decoded by OpenCV at
    `reduction_factor` for a need_w x need_h model, as the worker decodes a frame for its largest
    whole-frame model. BGR. `size` (w, h), when the caller knows it (an annotation file says
    it), saves decoding the image once just to learn it."""
    import cv2

    buf = np.frombuffer(src, np.uint8) if isinstance(src, (bytes, bytearray, memoryview)) \
        else np.fromfile(str(src), np.uint8)
    w, h = size if size is not None else cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).shape[1::-1]
    return cv2.imdecode(buf, reduced_flag(reduction_factor(w, h, need_w, need_h)))


def letterbox_fit(w, h, in_w, in_h):
    """src/decode/image.rs Letterbox::fit: where a w x h image lies, aspect kept and centred,
    in an in_w x in_h input: (width, height, x, y)."""
    s = min(in_w / max(w, 1), in_h / max(h, 1))
    width = min(max(_round(w * s), 1), in_w)
    height = min(max(_round(h * s), 1), in_h)
    return width, height, (in_w - width) // 2, (in_h - height) // 2


def to_image(box, fit, in_w, in_h):
    """src/decode/image.rs Letterbox::to_image, in f32: a box normalised to the input, mapped
    to one normalised to the image (`fit` from letterbox_fit), clamped to 0..1."""
    width, height, x, y = fit
    fx = lambda v: float(np.clip((F32(v) * F32(in_w) - F32(x)) / F32(width), F32(0), F32(1)))  # noqa: E731
    fy = lambda v: float(np.clip((F32(v) * F32(in_h) - F32(y)) / F32(height), F32(0), F32(1)))  # noqa: E731
    return fx(box[0]), fy(box[1]), fx(box[2]), fy(box[3])


def crop_rect(box, margin, w, h):
    """src/infer/cascade.rs crop_rect, in f32: the pixel rectangle (x, y, width, height) of a
    normalised box grown by `margin` of its size on each side, clamped to the frame, never
    empty."""
    b = np.asarray(box, F32)
    bw, bh, m, W, H = b[2] - b[0], b[3] - b[1], F32(margin), F32(w), F32(h)
    x1 = max(int(np.floor((b[0] - bw * m) * W)), 0)
    y1 = max(int(np.floor((b[1] - bh * m) * H)), 0)
    x2 = int(min(np.ceil((b[2] + bw * m) * W), W))
    y2 = int(min(np.ceil((b[3] + bh * m) * H), H))
    x1, y1 = min(x1, w - 1), min(y1, h - 1)
    return x1, y1, max(x2 - x1, 1), max(y2 - y1, 1)


def closeup_canvas(w, h, scale):
    """src/infer/cascade.rs closeup_canvas: a close-up searched again is the frame centred on a
    black canvas 1/scale its size: (canvas width, canvas height, x, y)."""
    grow = lambda v: max(int(math.ceil(F32(v) / F32(scale))), v)  # noqa: E731
    cw, ch = grow(w), grow(h)
    return cw, ch, (cw - w) // 2, (ch - h) // 2


def iou(a, b):
    """Intersection over union of two boxes (any units; 0 when the union is empty)."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def match_by_score(dets, truth, threshold):
    """Greedy one-to-one matching as the tools score detectors: each detection in turn (`dets`,
    N x 4, in descending score order) takes the labelled box (`truth`, M x 4) it overlaps most
    among those still free, if their IoU is at least `threshold`. Returns (matched flag per
    labelled box, number of detections matched)."""
    hit = np.zeros(len(truth), bool)
    if not len(dets) or not len(truth):
        return hit, 0
    n = 0
    for row in iou_matrix(dets, truth):
        row = np.where(hit, -1, row)
        j = int(np.argmax(row))
        if row[j] >= threshold:
            hit[j] = True
            n += 1
    return hit, n


def iou_matrix(a, b):
    """IoU of every box of `a` (N x 4) with every box of `b` (M x 4): an N x M array."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
