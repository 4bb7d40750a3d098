"""Measures YuNet-n at candidate input sizes against today's default face detector (BlazeFace
full range, models/blazeface_full.onnx), the way the worker feeds them (letterbox, INTER_LINEAR,
centred black padding, each model's own input spec), and writes models/measurements/yunet.md.

- mask-scenes (../shared/data/mask-scenes, all 853 images, 4,072 VOC face boxes): recall at
  IoU >= 0.4 for score >= 0.5 and >= 0.7, by face height in the original image, by face height in
  model-input pixels, by class; the share of detections that match a labelled face; ms per image.
- ms per 1280x720 frame: the worker's reduced JPEG decode + letterbox + model, and the model alone.
- close-ups: detections at score >= 0.5 on tests/data/faces and tests/data/masked against the
  counts in tests/data/faces.tsv.

One ONNX Runtime thread, batch 1. Run: nice .venv/bin/python models/measure_yunet.py
(about 5 minutes on the project's 2-core machine). Matching is greedy per image: detections in
descending score each take the unmatched labelled face they overlap most (IoU >= 0.4).
"""
import glob
import os
import time
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import onnxruntime as ort

from vigil_tools import build_yunet, geometry

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SCENES = os.path.join(build_yunet.SHARED, "data", "mask-scenes")
CANDIDATES = [(320, 192), (320, 256), (320, 320), (480, 288), (480, 384), (480, 480),
              (640, 352), (640, 384), (640, 480), (640, 640)]
CLASSES = ("with_mask", "without_mask", "mask_weared_incorrect")
HEIGHT_BINS = [(0, 32, "<32"), (32, 64, "32–64"), (64, 128, "64–128"), (128, 1e9, "≥128")]
INPUT_BINS = [(0, 8, "<8"), (8, 16, "8–16"), (16, 32, "16–32"), (32, 64, "32–64"), (64, 1e9, "≥64")]
MATCH_IOU = 0.4
THRESHOLDS = (0.5, 0.7)
OUT = os.path.join(HERE, "measurements", "yunet.md")


def session(model):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])


class Detector:
    """A contract detector with its input spec: prep(img) -> (tensor, (x, y, rw, rh))."""

    def __init__(self, label, model, width, height, prep):
        self.label, self.sess, self.width, self.height, self.prep = label, session(model), width, height, prep
        self.input = self.sess.get_inputs()[0].name

    def run(self, img):
        """Detections (score, x1, y1, x2, y2) in the image's pixels and the seconds the model took."""
        x, (ox, oy, rw, rh) = self.prep(img)
        t = time.perf_counter()
        d = self.sess.run(None, {self.input: x})[0]
        took = time.perf_counter() - t
        h, w = img.shape[:2]
        box = d[:, 3:7] * [self.width, self.height, self.width, self.height]
        box = (box - [ox, oy, ox, oy]) / [rw, rh, rw, rh] * [w, h, w, h]
        return np.c_[d[:, 2], box], took


def blaze_prep(img, size=192):
    h, w = img.shape[:2]
    s = min(size / w, size / h)
    rw, rh = max(1, round(w * s)), max(1, round(h * s))
    x, y = (size - rw) // 2, (size - rh) // 2
    c = np.zeros((size, size, 3), np.uint8)
    c[y:y + rh, x:x + rw] = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
    return (cv2.cvtColor(c, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1)[None], (x, y, rw, rh)


def detectors(tmp):
    out = [Detector("BlazeFace 192×192 (default today)", os.path.join(HERE, "blazeface_full.onnx"),
                    192, 192, blaze_prep)]
    for w, h in CANDIDATES:
        path = os.path.join(tmp, f"yunet_{w}x{h}.onnx")
        build_yunet.onnx.save(build_yunet.build(w, h), path)
        out.append(Detector(f"YuNet-n {w}×{h}", path, w, h,
                            lambda img, w=w, h=h: build_yunet.letterbox(img, w, h)))
    return out


def load_scenes():
    scenes = []
    for xml in sorted(glob.glob(os.path.join(SCENES, "annotations", "*.xml"))):
        root = ET.parse(xml).getroot()
        faces = []
        for o in root.findall("object"):
            b = o.find("bndbox")
            faces.append((o.find("name").text, *(float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))))
        img = cv2.imread(os.path.join(SCENES, "images", root.find("filename").text))
        scenes.append((img, faces))
    return scenes


def match(dets, truth):
    """Greedy matching (rows score, x1..y2); returns (matched flag per labelled face, number of
    matched detections)."""
    if not len(dets):
        return np.zeros(len(truth), bool), 0
    return geometry.match_by_score(dets[np.argsort(-dets[:, 0], kind="stable"), 1:5], truth, MATCH_IOU)


def measure_scenes(det, scenes):
    rows = {t: {"hit": [], "dets": 0, "matched": 0} for t in THRESHOLDS}
    cls, height, in_height = [], [], []
    for img, faces in scenes:
        d, _ = det.run(img)
        truth = np.array([f[1:] for f in faces], np.float32).reshape(-1, 4)
        s = min(det.width / img.shape[1], det.height / img.shape[0])
        cls += [f[0] for f in faces]
        height += list(truth[:, 3] - truth[:, 1])
        in_height += list((truth[:, 3] - truth[:, 1]) * s)
        for th in THRESHOLDS:
            keep = d[d[:, 0] >= th]
            hit, n = match(keep, truth)
            rows[th]["hit"] += list(hit)
            rows[th]["dets"] += len(keep)
            rows[th]["matched"] += n
    out = {}
    cls, height, in_height = np.array(cls), np.array(height), np.array(in_height)
    for th in THRESHOLDS:
        hit = np.array(rows[th]["hit"])
        r = {"all": (hit.sum(), len(hit)), "precision": (rows[th]["matched"], rows[th]["dets"])}
        for lo, hi, name in HEIGHT_BINS:
            sel = (height >= lo) & (height < hi)
            r["h" + name] = (hit[sel].sum(), sel.sum())
        for lo, hi, name in INPUT_BINS:
            sel = (in_height >= lo) & (in_height < hi)
            r["i" + name] = (hit[sel].sum(), sel.sum())
        for c in CLASSES:
            sel = cls == c
            r[c] = (hit[sel].sum(), sel.sum())
            sel32 = sel & (height >= 32)
            r[c + "32"] = (hit[sel32].sum(), sel32.sum())
        out[th] = r
    return out


def reduction(w, h, width, height):
    """The worker's libjpeg reduction and the OpenCV flag that decodes at it."""
    f = geometry.reduction_factor(w, h, width, height)
    return f, geometry.reduced_flag(f)


def measure_times(dets, scenes, jpeg, every=4, reps=30):
    """Round robin (each image or frame run by every detector in turn) so that load from other
    processes on the shared machine falls on all of them alike. Returns per detector: median model
    ms per mask-scenes image (every `every`-th image), and for the 1280x720 JPEG frame the
    reduction, median model ms and median ms of reduced decode + letterbox + model."""
    ms = {d.label: [] for d in dets}
    imgs = [img for img, _ in scenes[::every]]
    for img in imgs[:3]:
        for d in dets:
            d.run(img)
    for img in imgs:
        for d in dets:
            ms[d.label].append(d.run(img)[1])
    buf = np.frombuffer(jpeg, np.uint8)
    model = {d.label: [] for d in dets}
    total = {d.label: [] for d in dets}
    for i in range(reps + 3):
        for d in dets:
            flag = reduction(1280, 720, d.width, d.height)[1]
            t0 = time.perf_counter()
            _, took = d.run(cv2.imdecode(buf, flag))
            if i >= 3:
                total[d.label].append(time.perf_counter() - t0)
                model[d.label].append(took)
    med = lambda v: 1e3 * float(np.median(v))
    return ({d.label: (med(ms[d.label]), len(imgs)) for d in dets},
            {d.label: (reduction(1280, 720, d.width, d.height)[0], med(model[d.label]), med(total[d.label]))
             for d in dets})


def measure_closeups(det):
    counts = {}
    for line in open(os.path.join(ROOT, "tests", "data", "faces.tsv")):
        if line.strip() and not line.startswith("#"):
            n, c = line.split("\t")
            counts[os.path.splitext(n)[0]] = int(c)
    out = {}
    for folder in ("faces", "masked"):
        found = extra = total = 0
        for path in sorted(glob.glob(os.path.join(ROOT, "tests", "data", folder, "*"))):
            img = cv2.imread(path)
            if img is None:
                continue
            want = counts[os.path.splitext(os.path.basename(path))[0]]
            n = int((det.run(img)[0][:, 0] >= 0.5).sum())
            found, extra, total = found + min(n, want), extra + max(n - want, 0), total + want
        out[folder] = (found, total, extra)
    return out


def pct(pair):
    a, b = pair
    return f"{a / b:.2f}" if b else "–"


def choice(results, frames, chosen):
    """Why the built size was chosen, with this run's figures."""
    blaze = next(n for n in results if n.startswith("BlazeFace"))
    name = lambda wh: f"YuNet-n {wh}"
    rec = lambda wh, th=0.5: pct(results[name(wh)][th]["all"])
    fr = lambda n: f"{frames[n][2]:.1f} ms"
    c, alt = name(chosen), "480×288"
    return (
        "## Choice\n\n"
        f"The build uses **{chosen}**. Camera frames are 16:9, so a 16:9 input carries no padding, and "
        "at 640 wide a 1280×720 frame is halved. YuNet finds most faces 16 px or more tall in its "
        "input but only about half of those 8–16 px tall (table by model-input pixels), so the "
        "input's width decides which distant faces are found: a face needs about 32 px of a 720p "
        "frame at 640 wide, 43 px at 480, 64 px at 320. On mask-scenes, recall at score 0.5 is "
        f"{rec(chosen)} at {chosen}, {rec(alt)} at {alt} and {rec('320×192')} at 320×192 "
        f"(BlazeFace: {pct(results[blaze][0.5]['all'])}); the difference is almost all in faces "
        "under 32 px. 640×480 and 640×640 cost more and add only padding rows on 16:9 frames. "
        "640×352 would let the worker decode 720p JPEGs at half size "
        f"({fr(name('640×352'))} against {fr(c)} per frame), but the crops for the classifier "
        "would then come from the half-size frame and the worker's 16 px minimum face side would "
        "mean 32 px of the camera frame, so 640×384 keeps the full-size decode. If the per-frame "
        f"cost matters more than distant faces, {alt} is the cheaper option ({fr(name(alt))} per "
        f"frame, BlazeFace today {fr(blaze)}).\n")


def report(results, closeups, frames, chosen):
    L = []
    names = list(results)
    r0 = results[names[0]][0.5]
    L.append("# YuNet-n face detector: input size and comparison with BlazeFace\n")
    L.append("Measured by `models/measure_yunet.py` (command: `nice .venv/bin/python "
             "models/measure_yunet.py` from the repository root). One ONNX Runtime thread, batch 1, "
             "ms/image is the median model time over every 4th image, all detectors taking turns "
             "image by image, "
             "inputs built as the worker builds them (letterbox: INTER_LINEAR, centred black "
             "padding; YuNet BGR 0–255 NCHW, BlazeFace its own RGB [−1, 1] NHWC spec). Times are medians "
             "on a shared 2-core machine: compare them within this file only.\n")
    L.append(f"Data: mask-scenes, all {SCENE_COUNT} images, "
             f"{r0['all'][1]} labelled faces (most images are about 400×300 px, so the larger inputs "
             "enlarge them). A face is found when a detection at or above the score overlaps it with "
             f"IoU ≥ {MATCH_IOU} (greedy, one face per detection). The chosen size is **{chosen}**.\n")
    L.append(choice(results, frames, chosen))
    for th in THRESHOLDS:
        L.append(f"## Recall at score ≥ {th}\n")
        L.append("| detector | all | h <32 | 32–64 | 64–128 | ≥128 | with_mask | without_mask | "
                 "mask_weared_incorrect | detections matching a face | ms/image |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for n in names:
            r = results[n][th]
            cells = [pct(r["all"])] + [pct(r["h" + b[2]]) for b in HEIGHT_BINS] + [pct(r[c]) for c in CLASSES]
            L.append(f"| {n} | " + " | ".join(cells) + f" | {pct(r['precision'])} ({r['precision'][1]}) | "
                     f"{results[n]['ms']:.1f} |")
        L.append("")
        L.append("Faces per height bin (original image pixels): " + ", ".join(
            f"{b[2]}: {r0['h' + b[2]][1]}" for b in HEIGHT_BINS) + "; per class: " + ", ".join(
            f"{c}: {r0[c][1]}" for c in CLASSES) + ". The count after the share is the number of detections.\n")
    L.append("## Recall by face height in model-input pixels (score ≥ 0.5)\n")
    L.append("What transfers to camera frames: a face h px tall in a 1280×720 frame is h·W/1280 px "
             "tall in a W-wide 16:9 input (h/2 at 640×384).\n")
    L.append("| detector | " + " | ".join(b[2] for b in INPUT_BINS) + " |")
    L.append("|---|" + "---|" * len(INPUT_BINS))
    for n in names:
        r = results[n][0.5]
        L.append(f"| {n} | " + " | ".join(f"{pct(r['i' + b[2]])} ({r['i' + b[2]][1]})" for b in INPUT_BINS) + " |")
    L.append("\n(count of labelled faces in the bin in parentheses)\n")
    L.append("## Faces at least 32 px tall, score ≥ 0.5, by class (the notes' earlier measure)\n")
    L.append("| detector | " + " | ".join(CLASSES) + " |")
    L.append("|---|---|---|---|")
    for n in names:
        r = results[n][0.5]
        L.append(f"| {n} | " + " | ".join(pct(r[c + "32"]) for c in CLASSES) + " |")
    L.append("\n## Per 1280×720 frame and close-ups\n")
    L.append("Frame: a 1280×720 JPEG (q90), decoded at the worker's libjpeg reduction, letterboxed, "
             "run; median of 30. Close-ups: detections at score ≥ 0.5 on `tests/data/faces` (bare) and "
             "`tests/data/masked` (synthetic masks), found/expected per `tests/data/faces.tsv`, counting "
             "at most the expected number per photo; extra detections beyond it in parentheses.\n")
    L.append("| detector | JPEG reduction | model ms/frame | decode+letterbox+model ms/frame | close-ups bare | close-ups masked |")
    L.append("|---|---|---|---|---|---|")
    for n in names:
        f, m, t = frames[n]
        c = closeups[n]
        cell = lambda k: f"{c[k][0]}/{c[k][1]}" + (f" (+{c[k][2]})" if c[k][2] else "")
        L.append(f"| {n} | 1/{f} | {m:.1f} | {t:.1f} | {cell('faces')} | {cell('masked')} |")
    L.append("")
    return "\n".join(L)


SCENE_COUNT = 0


def main():
    global SCENE_COUNT
    import tempfile

    cv2.setNumThreads(1)
    scenes = load_scenes()[:int(os.environ.get("MEASURE_LIMIT", "0")) or None]  # limit: debugging only
    SCENE_COUNT = len(scenes)
    frame = cv2.resize(scenes[0][0], (1280, 720), interpolation=cv2.INTER_LINEAR)
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    results, closeups = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        dets = detectors(tmp)
        for det in dets:
            t = time.time()
            results[det.label] = measure_scenes(det, scenes)
            closeups[det.label] = measure_closeups(det)
            r = results[det.label]
            print(f"{det.label}: recall@0.5 {pct(r[0.5]['all'])}, @0.7 {pct(r[0.7]['all'])}, "
                  f"close-ups {closeups[det.label]} ({time.time() - t:.0f} s)", flush=True)
        times, frames = measure_times(dets, scenes, jpeg)
    for label, (ms, n) in times.items():
        results[label]["ms"], results[label]["ms_n"] = ms, n
    text = report(results, closeups, frames, f"{build_yunet.WIDTH}×{build_yunet.HEIGHT}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
