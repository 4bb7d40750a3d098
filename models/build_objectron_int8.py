"""Builds `objectron_int8.onnx`: the Objectron SSD (`objectron.onnx`, see build_objectron.py)
with its backbone quantised to INT8 by ONNX Runtime's static quantisation (QDQ).

The recipe is `quantize.py`'s, whose report (measurements/int8.md) weighed it first: activations
uint8, weights int8 per channel, MinMax calibration on mask-scenes TRAIN images stretched to
300x300 as the worker stretches them (quantize.py's seed). Only the backbone is quantised: the
score/box convolutions, the in-graph SSD decode and NonMaxSuppression stay fp32
(`quantize.head_nodes`). It calibrates on 200 images where quantize.py took 64. The recipes
tried (`--recipes`, on TRAIN frames with the test cat pasted in) differ by a verdict or two
against fp32, within noise (measurements/objectron-int8.md).

Whether the pack uses it is decided by the figures through the pipeline
(measurements/objectron-int8.md, `models/evaluate.py --sets animals`).

Run from the project root, with the project's .venv (ONNX Runtime's quantiser needs `onnx` and `sympy`):

    nice .venv/bin/python models/build_objectron_int8.py [--out models/objectron_int8.onnx]
    nice .venv/bin/python models/build_objectron_int8.py --recipes   # the comparison

`--recipes` builds each recipe tried into a temporary directory and prints, on 300 TRAIN frames
(150 mask-scenes, 150 gloves, seeded) each as it is and with the test cat pasted in
(models/composite.py), how many cat/dog verdicts at the rule's 0.6 differ from fp32's.
"""
import argparse
import hashlib
import os
import random
import re
import tempfile

import cv2
import numpy as np

from vigil_tools import composite  # the test cat pasted into frames
from vigil_tools import geometry  # the worker's decode reduction
from vigil_tools import quantize as q  # inputs as the worker makes them, the quantiser's settings

THRESHOLD = 0.6  # the built-in no_animals rule's min_detection_score
ANIMALS = (7, 19)  # cat, dog in the manifest's labels


def calibration(n):
    """`n` mask-scenes TRAIN images (seeded), stretched to 300x300 as the worker does."""
    rng = np.random.default_rng(q.SEED)
    stems = sorted(rng.choice(q.split("mask-scenes-train"), n, replace=False))
    return [q.objectron_input(q.reduced(os.path.join(q.SCENES, "images", s + ".jpg"), 300, 300)) for s in stems]


def build(dst, n, fp32_last_convs=0, extra_options=None):
    """quantize.quantise's recipe over `n` calibration images, with a recipe's variations."""
    q.quantise(os.path.join(q.HERE, "objectron.onnx"), dst, calibration(n), detector=True,
               fp32_last_convs=fp32_last_convs, extra_options=extra_options)


def train_frames():
    """[(input tensor, has an animal)]: 300 TRAIN frames, each as it is and with the cat pasted in,
    through JPEG and the worker's reduced decode."""
    rnd = random.Random(7)
    paths = [os.path.join(q.SCENES, "images", s + ".jpg") for s in rnd.sample(q.split("mask-scenes-train"), 150)] + \
            [os.path.join(q.GLOVES, r) for r in rnd.sample(q.split("gloves-train"), 150)]
    cat, paste_rnd, out = cv2.imread(composite.ANIMAL), random.Random(11), []
    for path in paths:
        img = cv2.imread(path)
        pasted, _ = composite.paste_animal(img, cat, paste_rnd)
        for frame, truth in ((pasted, True), (img, False)):
            out.append((q.objectron_input(geometry.decode_reduced(composite.jpeg(frame), 300, 300)), truth))
    return out


def animal_scores(path, frames):
    s = q.session(path)
    scores = []
    for x, _ in frames:
        d = s.run(None, {"image": x[None]})[0]
        hit = np.isin(d[:, 1], ANIMALS)
        scores.append(float(d[hit, 2].max()) if hit.any() else 0.0)
    return np.array(scores)


RECIPES = [  # (name, images, extra fp32 convolutions, quantiser options)
    ("64 images (quantize.py's)", 64, 0, None),
    ("200 images (built)", 200, 0, None),
    ("400 images", 400, 0, None),
    ("200 images, the last 20 backbone convolutions fp32", 200, 20, None),
    ("200 images, symmetric weights, moving-average ranges", 200, 0,
     {"WeightSymmetric": True, "CalibMovingAverage": True}),
]


def recipes():
    frames = train_frames()
    truth = np.array([t for _, t in frames])
    fp = animal_scores(os.path.join(q.HERE, "objectron.onnx"), frames) >= THRESHOLD
    print(f"{len(frames)} TRAIN frames, {truth.sum()} with the cat; fp32: recall {fp[truth].mean():.3f}, "
          f"{fp[~truth].sum()} false alarms\n")
    print("| recipe | recall | false alarms | verdicts changed (gained / lost) | MB |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=q.HERE, prefix=".int8-recipes.") as tmp:
        for i, (name, n, extra, opts) in enumerate(RECIPES):
            dst = os.path.join(tmp, f"r{i}.onnx")
            build(dst, n, extra, opts)
            v = animal_scores(dst, frames) >= THRESHOLD
            print(f"| {name} | {v[truth].mean():.3f} | {v[~truth].sum()} | {(v != fp).sum()} "
                  f"({(v & ~fp).sum()} / {(~v & fp).sum()}) | {os.path.getsize(dst) / 1e6:.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(q.HERE, "objectron_int8.onnx"))
    ap.add_argument("--images", type=int, default=200, help="calibration images (mask-scenes TRAIN)")
    ap.add_argument("--recipes", action="store_true", help="compare the recipes tried instead of building")
    a = ap.parse_args()
    if a.recipes:
        return recipes()
    build(a.out, a.images)
    digest = hashlib.sha256(open(a.out, "rb").read()).hexdigest()
    if os.path.abspath(a.out) == os.path.join(q.HERE, "objectron_int8.onnx"):  # the pack's file: its manifest follows
        manifest = os.path.join(q.HERE, "objectron_int8.toml")
        text = re.sub(r'(?m)^sha256 = "[0-9a-f]*"', f'sha256 = "{digest}"', open(manifest).read(), count=1)
        open(manifest, "w").write(text)
    print(f"{a.out}: {os.path.getsize(a.out)} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
