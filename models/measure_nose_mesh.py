"""Would MediaPipe's face mesh tell a nose outside the mask? (Issue 30, masks worn below the nose:
"a landmark model telling whether the nose is covered".) Measured on TRAIN only, never on VAL.

The face mesh (`face_landmark.tflite`, 468 landmarks and a face score, 192x192 RGB in [0, 1]) is
read from the PyPI wheel `mediapipe==0.10.14`, as build_palm.py reads the palm detector (the
wheel is downloaded into .whl/, never installed), and run with TensorFlow's TFLite interpreter.
For every labelled TRAIN face at least 16 px tall (the mesh needs pixels to place a nose), the
square around its box, grown to 1.5 times its longer side as MediaPipe crops a face for the mesh,
is given to the mesh; then:

- colour: at 15 landmarks of the lower face (nose tip, bridge, nostrils, lips, mouth corners,
  chin, cheeks) the mean Lab colour of an 11x11 patch minus that of the forehead and the cheeks
  under the eyes (a nose outside the mask is skin, like the forehead; a covered one is the
  mask's colour), and the patch's spread;
- geometry: those landmarks' positions in the crop (the mesh on a masked face may sit
  differently);
- the mesh's face score.

A logistic regression (numpy, class-balanced) says "nose shows" (`no_mask` or `mask_incorrect`)
against `mask`, out of fold: five folds by image (cv_thresholds.fold). Printed: at thresholds
that flag 1 %, 2 % and 5 % of masked faces, the share of masks worn wrong and of bare faces
flagged, per feature set and face size.

    .venv/bin/python models/measure_nose_mesh.py      # about 2 minutes
"""
import argparse
import zipfile

import cv2
import numpy as np

from vigil_tools import build_palm
from vigil_tools import train_mask_classifier as T
from vigil_tools.cv_thresholds import FOLDS, fold

MEMBER = "mediapipe/modules/face_landmark/face_landmark.tflite"
SIZE, GROW, MIN_SIDE, PATCH = 192, 1.5, 16, 5
REFERENCE = [151, 9, 117, 346]  # forehead, between the brows, cheeks under the eyes
LOWER = [1, 4, 195, 98, 327, 0, 13, 61, 291, 152, 199, 205, 425, 117, 346]
EYES = [33, 263]
FLAGGED = (0.01, 0.02, 0.05)
SIDES = ((16, 32), (32, 64), (64, 1 << 30))


class Mesh:
    def __init__(self):
        import tensorflow as tf

        model = zipfile.ZipFile(build_palm.wheel()).read(MEMBER)
        self.it = tf.lite.Interpreter(model_content=model, num_threads=2)
        self.it.allocate_tensors()
        self.input = self.it.get_input_details()[0]["index"]
        out = {int(np.prod(o["shape"])): o["index"] for o in self.it.get_output_details()}
        self.landmarks, self.score = out[468 * 3], out[1]

    def __call__(self, rgb):
        x = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA if rgb.shape[0] > SIZE else cv2.INTER_LINEAR)
        self.it.set_tensor(self.input, (x.astype(np.float32) / 255.0)[None])
        self.it.invoke()
        lm = self.it.get_tensor(self.landmarks).reshape(468, 3)
        return x, lm, float(1 / (1 + np.exp(-self.it.get_tensor(self.score).ravel()[0])))


def features(x, lm, score):
    lab = cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(np.float32)

    def patch(i):
        cx = int(np.clip(lm[i, 0], PATCH, SIZE - 1 - PATCH))
        cy = int(np.clip(lm[i, 1], PATCH, SIZE - 1 - PATCH))
        p = lab[cy - PATCH:cy + PATCH + 1, cx - PATCH:cx + PATCH + 1].reshape(-1, 3)
        return p.mean(0), p.std(0).mean()

    ref = np.mean([patch(i)[0] for i in REFERENCE], 0)
    colour = np.concatenate([np.append(m - ref, s) for m, s in map(patch, LOWER)])
    geometry = (lm[LOWER + EYES, :2] / SIZE).ravel()
    return colour, geometry, score


def square(rgb, box):
    """The face's square grown by GROW, edges replicated where it leaves the frame."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = box * [w, h, w, h]
    cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * GROW
    x0, y0, n = int(round(cx - s / 2)), int(round(cy - s / 2)), max(1, int(round(s)))
    big = cv2.copyMakeBorder(rgb, n, n, n, n, cv2.BORDER_REPLICATE)  # the square fits inside
    return big[y0 + n:y0 + 2 * n, x0 + n:x0 + 2 * n]


def logistic(x, y, l2=1e-2, steps=3000, rate=0.1):
    """Class-balanced, L2-regularised logistic regression by gradient descent on standardised
    features; returns the scoring function."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    weight = np.where(y == 1, (1 - y).sum() / max(y.sum(), 1), 1.0)
    for _ in range(steps):
        g = (1 / (1 + np.exp(-(z @ w + b))) - y) * weight
        w -= rate * (z.T @ g / len(y) + l2 * w)
        b -= rate * g.mean()
    return lambda q: 1 / (1 + np.exp(-(((q - mu) / sd) @ w + b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=T.DATA)
    args = ap.parse_args()
    mesh = Mesh()
    rows = []
    for stem in T.split("train"):
        img, faces = T.faces(args.data, stem)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        for box, label, side in faces:
            if side >= MIN_SIDE:
                rows.append((fold(stem), label, side, *features(*mesh(square(rgb, box)))))
    folds, label, side = (np.array([r[i] for r in rows]) for i in range(3))
    colour, geometry, score = np.stack([r[3] for r in rows]), np.stack([r[4] for r in rows]), np.array([r[5] for r in rows])
    y = (label != 0).astype(np.float64)
    print(f"{len(rows)} TRAIN faces >= {MIN_SIDE} px: {(label == 0).sum()} mask, {(label == 1).sum()} no_mask, "
          f"{(label == 2).sum()} mask_incorrect; mean face score {score[label == 0].mean():.2f} masked, "
          f"{score[label == 2].mean():.2f} worn wrong, {score[label == 1].mean():.2f} bare")
    sets = {"colour + score": np.column_stack([colour, score]), "geometry + score": np.column_stack([geometry, score]),
            "all": np.column_stack([colour, geometry, score])}
    print("| features | masked flagged | worn wrong flagged " + "".join(f"| … {a}-{b} px " if b < 1 << 30 else f"| … ≥{a} px " for a, b in SIDES)
          + "| bare flagged |")
    print("|---" * (4 + len(SIDES)) + "|")
    for name, x in sets.items():
        p = np.zeros(len(y))
        for k in range(FOLDS):
            p[folds == k] = logistic(x[folds != k], y[folds != k])(x[folds == k])
        for share in FLAGGED:
            tau = np.quantile(p[label == 0], 1 - share)
            wrong = [(p[(label == 2) & (side >= a) & (side < b)] > tau) for a, b in SIDES]
            print(f"| {name} | {share:.0%} | {(p[label == 2] > tau).mean():.2f} of {(label == 2).sum()} "
                  + "".join(f"| {w.mean():.2f} of {w.size} " for w in wrong)
                  + f"| {(p[label == 1] > tau).mean():.2f} |")


if __name__ == "__main__":
    main()
