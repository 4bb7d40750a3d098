"""Writes the fixed train/validation splits every vigil model script uses, so that their
figures agree (models/splits/*.txt, one entry per line, sorted).

- mask-scenes: an image stem s is validation iff int(sha256(s)[:8], 16) % 5 == 0.
- gloves: train/ and valid/ of the dataset are pooled; the source id is the file name before
  `_jpg.rf.` (the exporter stored each source photo three times, flipped); an image is
  validation iff int(sha256(source_id)[:8], 16) % 5 == 0. Entries are paths relative to the
  dataset root, e.g. `train/images/xyz_jpg.rf.abc.jpg`.

Usage: python splits.py [--data ../shared/data]
"""
import argparse
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def is_val(key):
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 5 == 0


def gloves_source_id(name):
    return os.path.basename(name).split("_jpg.rf.")[0]


def write(path, items):
    with open(path, "w") as f:
        f.write("".join(f"{i}\n" for i in sorted(items)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(os.environ.get("VIGIL_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")), "data"))
    args = ap.parse_args()
    out = os.path.join(HERE, "splits")
    os.makedirs(out, exist_ok=True)

    folder = os.path.join(args.data, "mask-scenes", "images")
    stems = [os.path.splitext(n)[0] for n in os.listdir(folder) if n.lower().endswith(".jpg")]
    write(os.path.join(out, "mask-scenes-train.txt"), [s for s in stems if not is_val(s)])
    write(os.path.join(out, "mask-scenes-val.txt"), [s for s in stems if is_val(s)])

    root = os.path.join(args.data, "gloves")
    names = [f"{part}/images/{n}" for part in ("train", "valid")
             for n in os.listdir(os.path.join(root, part, "images")) if n.lower().endswith(".jpg")]
    write(os.path.join(out, "gloves-train.txt"), [n for n in names if not is_val(gloves_source_id(n))])
    write(os.path.join(out, "gloves-val.txt"), [n for n in names if is_val(gloves_source_id(n))])
    for f in sorted(os.listdir(out)):
        print(f, sum(1 for _ in open(os.path.join(out, f))))


if __name__ == "__main__":
    main()
