"""Animal positives for measuring the `no_animals` rule: the licensed test animal
(tests/data/animals/chelsea.jpg, CC0) pasted into real frames that hold no animal.

One cat photo is all this machine has with a clear licence, so frames made here show whether a
change to the animal detector keeps the same verdicts across sizes, places and backgrounds; they
do not say how well cats in general are found. Used by models/evaluate.py (the `animals` set, on
held-out backgrounds) and models/build_objectron_int8.py (choosing a recipe, on TRAIN
backgrounds). OpenCV and the standard library only.
"""
import os

import cv2

ANIMAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "animals",
                      "chelsea.jpg")


def paste_animal(img, animal, rnd, low=0.12, high=0.55):
    """A copy of `img` (BGR) with `animal` (BGR) pasted in, and the pasted box normalised to the
    frame (x1, y1, x2, y2). The animal photo is `low`-`high` of the frame's height (uniform),
    anywhere in the frame, mirrored half the time, its brightness scaled by 0.7-1.2. `rnd` is a
    random.Random: the same seed gives the same frames."""
    H, W = img.shape[:2]
    h = max(8, round(H * rnd.uniform(low, high)))
    w = min(W, max(8, round(h * animal.shape[1] / animal.shape[0])))
    paste = cv2.resize(animal, (w, h), interpolation=cv2.INTER_AREA)
    paste = cv2.flip(paste, 1) if rnd.random() < 0.5 else paste
    paste = cv2.convertScaleAbs(paste, alpha=rnd.uniform(0.7, 1.2))
    x, y = rnd.randint(0, W - w), rnd.randint(0, H - h)
    out = img.copy()
    out[y:y + h, x:x + w] = paste
    return out, (x / W, y / H, (x + w) / W, (y + h) / H)


def jpeg(img, quality=90):
    """JPEG bytes of a BGR image, as a camera gateway would send it."""
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
