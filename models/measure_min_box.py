"""How small a face the mask rule should judge (`min_box_px`), decided on TRAIN only.

For every mask-scenes TRAIN image with a violation (a face labelled without_mask or
mask_weared_incorrect), runs YuNet (models/yunet.onnx) as the worker runs it and asks: is some
violating face matched (IoU >= 0.4) by a detection the rule would keep, at a given detection
score and minimum shorter side (decoded-frame pixels), after the rule's top-`max_detections`
cut? A frame with no such detection can never be flagged, whatever the classifier says, so
this share caps the rule's frame-level recall. The detector was never trained on these images.
It also prints the cost side: crops the rule classifies per frame (one mask-v2 run each), over
all TRAIN images.

Run from the repository root: .venv/bin/python models/measure_min_box.py
"""

from vigil_tools import train_mask_classifier as T

SCORES, SIDES, TOPS = (0.5, 0.4, 0.3), (16, 12, 10, 8), (16, 32)


def main():
    T.MIN_BOX = 0  # keep every labelled box and every detection; the sweep filters
    yunet = T.Unlabelled()
    stems = T.split("train")
    frames = []  # per violating frame: [(labelled side, (score, side) of its best detection)]
    tops = {k: 0 for k in TOPS}
    crops = {mb: 0 for mb in SIDES}  # detections the rule keeps (score >= 0.5, top 16), all images
    for stem in stems:
        img, _ = T.faces(T.DATA, stem)
        h, w = img.shape[:2]
        violating = T.violating_boxes(T.DATA, stem)
        dets = yunet.detections(img)
        for mb in SIDES:
            crops[mb] += min(sum(d[0] >= 0.5 and d[1] >= mb for d in dets), TOPS[0])
        if not violating:
            continue
        # For each violating face, the detections matching it (indices into the best-first list).
        matches = [[i for i, d in enumerate(dets) if yunet.iou(d[2][None], v[None]).max() >= 0.4]
                   for v in violating]
        frames.append([(float(min((v[2] - v[0]) * w, (v[3] - v[1]) * h)),
                        max([dets[i][:2] for i in m], default=(0.0, 0.0))) for v, m in zip(violating, matches)])
        hits = {i for m in matches for i in m}
        kept = [i for i, d in enumerate(dets) if d[0] >= 0.5 and d[1] >= min(SIDES)]
        for k in TOPS:
            tops[k] += bool(hits.intersection(kept[:k]))
    n = len(frames)
    print(f"{n} of {len(stems)} TRAIN images have a violating face; share with one the rule would judge:")
    print("| detection score | " + " | ".join(f"min_box_px {s}" for s in SIDES) + " |")
    print("|---|" + "---|" * len(SIDES))
    for sc in SCORES:
        cells = [sum(any(s >= sc and side >= mb for _, (s, side) in f) for f in frames) for mb in SIDES]
        print(f"| >= {sc} | " + " | ".join(f"{c / n:.3f} ({c})" for c in cells) + " |")
    print(f"score >= 0.5, min_box_px {min(SIDES)}, after the top-k cut: "
          + ", ".join(f"k={k}: {tops[k]}" for k in TOPS))
    print("crops classified per frame (score >= 0.5, top 16), all TRAIN images: "
          + ", ".join(f"min_box_px {mb}: {crops[mb] / len(stems):.2f}" for mb in SIDES))
    never = sorted(int(max(lab for lab, _ in f)) for f in frames
                   if not any(s >= min(SCORES) and d >= min(SIDES) for _, (s, d) in f))
    print(f"frames no setting reaches, their largest violating face (labelled shorter side, px): {never}")


if __name__ == "__main__":
    main()
