"""Measures the pack's face detectors on the project's photos, the way the worker uses them:
faces found at score >= 0.5 (against the counted faces in tests/data/faces.tsv), the mask
classifier's decision on each found face's crop (15 % margin), and time per image (1 thread).
Writes the table models/README.md quotes. Run with .venv/bin/python.
"""
import os
import time

import cv2
import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", "data")


def session(name):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    return ort.InferenceSession(os.path.join(HERE, name), o, providers=["CPUExecutionProvider"])


def ssd_input(img):
    return cv2.dnn.blobFromImage(img, 1, (300, 300), (104, 177, 123)), lambda b: b


def blaze_input(img, size=192):
    h, w = img.shape[:2]
    s = min(size / w, size / h)
    rw, rh = max(1, round(w * s)), max(1, round(h * s))
    x, y = (size - rw) // 2, (size - rh) // 2
    c = np.zeros((size, size, 3), np.uint8)
    c[y:y + rh, x:x + rw] = cv2.resize(img, (rw, rh))
    t = (cv2.cvtColor(c, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1)[None]
    unbox = lambda b: np.array([(b[0] * size - x) / rw, (b[1] * size - y) / rh, (b[2] * size - x) / rw, (b[3] * size - y) / rh])
    return t, unbox


def classify(mask, img, box, margin=0.15):
    h, w = img.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    x1, y1 = int(max(0, (box[0] - bw * margin) * w)), int(max(0, (box[1] - bh * margin) * h))
    x2, y2 = int(min(w, (box[2] + bw * margin) * w)), int(min(h, (box[3] + bh * margin) * h))
    crop = cv2.resize(img[y1:y2, x1:x2], (224, 224))
    x = (cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]
    return ["mask", "no_mask"][int(np.argmax(mask.run(None, {"image": x})[0][0]))]


def main():
    counts = {}
    for line in open(os.path.join(DATA, "faces.tsv")):
        if not line.startswith("#") and line.strip():
            n, c = line.split("\t")
            counts[os.path.splitext(n)[0]] = int(c)
    mask = session("mask_classifier.onnx")
    rows = []
    for label, sess, prep in (("face-ssd", session("ssd_face.onnx"), ssd_input),
                              ("face-blazeface", session("blazeface_full.onnx"), blaze_input)):
        for folder, truth in (("faces", "no_mask"), ("masked", "mask")):
            found = total = right = 0
            took = []
            for name in sorted(os.listdir(os.path.join(DATA, folder))):
                img = cv2.imread(os.path.join(DATA, folder, name))
                if img is None:
                    continue
                total += counts[os.path.splitext(name)[0]]
                x, unbox = prep(img)
                t = time.perf_counter()
                dets = sess.run(None, {"image": x})[0]
                took.append(time.perf_counter() - t)
                dets = dets[dets[:, 2] >= 0.5][: counts[os.path.splitext(name)[0]] + 2]
                found += len(dets)
                right += sum(classify(mask, img, unbox(d[3:7])) == truth for d in dets)
            rows.append((label, folder, found, total, right, 1e3 * float(np.median(took))))
    print("| detector | photos | faces found (score >= 0.5) | classifier right on found faces | ms per image (1 thread) |")
    print("|---|---|---|---|---|")
    for d, f, found, total, right, ms in rows:
        print(f"| {d} | {f} ({'no masks' if f == 'faces' else 'synthetic masks'}) | {found}/{total} | {right}/{found} | {ms:.1f} |")


if __name__ == "__main__":
    main()
