"""Which decision thresholds serve the mask rule best? Decided on TRAIN only, by
cross-validation at frame level, never on VAL.

The TRAIN images are split into FOLDS by image. For each fold, mask-v2's tail (blocks 15-16,
Conv_1, head: models/finetune.py) is trained as train_mask_classifier.py trains it, for the epoch
count that build picked (`--epochs`), on the other folds' crops (their `unclear` crops cleaned
by a teacher trained on those folds' labelled faces, `clean_unclear`); it then judges the fold's
images the way the worker does: YuNet detections with a shorter side of at least `min_box_px`
(8), the best 16 at or above the rule's `min_detection_score`, each crop cut and classified.
Pooled over all folds, frame-level precision and recall of `violation` are printed twice:
for a range of detector score floors (the classifier thresholds U and V below at 0.5), and,
at `--score` (the rule's 0.75), for a grid of the two classifier thresholds the rule uses: a
crop is left unjudged when its `unclear` share exceeds U (0.5 in the worker), and is a
violation when its no_mask + mask_incorrect share exceeds V (0.5 in the worker).

Run from the repository root (about 40 minutes on 2 cores at 11 epochs; `--cache` reuses
block 14's activations of the training crops, the file train_mask_classifier.py --cache
writes; `--dump` keeps every crop's fold probabilities, and `--report` prints the tables from
such a file again without training):
  .venv/bin/python models/cv_thresholds.py [--cache FILE] [--dump FILE]

`--seeds A,B,C` trains one tail per seed and fold and averages their probabilities (an ensemble;
each further seed costs about 25 minutes), `--flip` also classifies every crop mirrored and
averages the two views (test-time flip); the tables are printed after each seed, and the dump
keeps every seed's and view's probabilities apart (`probs[seed, view, crop, label]`). Neither
is in the shipped model: see models/README.md, "Seeds, ensembles and a test-time flip".
`--margin M` cuts every training and judged crop at margin M instead of
the rule's 0.15 (the activations are computed again, not read from `--cache`); see
models/README.md, "A wider crop margin". `--detector-boxes` trains each fold's tail also on the
crops of YuNet's boxes matched to its labelled faces, as `train_mask_classifier.py
--detector-boxes` does (a `--cache` is then written for that build, never read).
"""
import argparse
import hashlib
import os
import time

import numpy as np

from vigil_tools import finetune
from vigil_tools import train_mask_classifier as T

FOLDS, TOP = 5, 16
SCORES = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)
UNJUDGED = (0.5, 0.6, 0.7)
VIOLATION = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2)


def fold(stem):
    return int(hashlib.sha256(("cv" + stem).encode()).hexdigest()[:8], 16) % FOLDS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", help="npz of the training crops' block 14 activations (fx, fy, fstem), "
                    "train_mask_classifier.py's --cache; written here when missing")
    ap.add_argument("--epochs", type=int, default=11, help="the epoch count the build picked (scenes-5: 11)")
    ap.add_argument("--clean-unclear", type=float, default=T.CLEAN_UNCLEAR,
                    help="as train_mask_classifier.py: 1 trains on every unclear crop (scenes-4)")
    ap.add_argument("--score", type=float, default=0.75,
                    help="the rule's min_detection_score for the threshold grid (mask_required: 0.75)")
    ap.add_argument("--dump", help="write every candidate crop's fold probabilities, detector score "
                    "and image to this npz")
    ap.add_argument("--report", metavar="NPZ", help="print the tables from an earlier --dump; no training")
    ap.add_argument("--seeds", default=str(T.SEED),
                    help="comma-separated training seeds; with several, each crop's probabilities are "
                    "the mean of the seeds' tails (an ensemble)")
    ap.add_argument("--flip", action="store_true",
                    help="also classify each crop mirrored and average the two (test-time flip)")
    ap.add_argument("--margin", type=float, default=T.MARGIN,
                    help="crop margin for training and judging (the rule's crop_margin; mask_required: "
                    f"{T.MARGIN}); another margin cannot use --cache")
    ap.add_argument("--detector-boxes", action="store_true",
                    help="as train_mask_classifier.py: also train on YuNet's boxes matched to labelled "
                    "faces (a --cache is then written, never read)")
    args = ap.parse_args()
    SHIPPED_MARGIN, T.MARGIN = T.MARGIN, args.margin
    if args.report:
        z = np.load(args.report)
        truth = dict(zip(z["stems"].tolist(), z["violated"].tolist()))
        report(pooled(z["probs"]), z["owner"], z["scores"], truth, args.score)
        return
    seeds = [int(s) for s in args.seeds.split(",")]

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    old, _ = T.keras_model()
    front = finetune.front(old)
    stems = T.split("train")
    yunet = T.Unlabelled()
    if args.cache and os.path.exists(args.cache) and args.margin == SHIPPED_MARGIN and not args.detector_boxes:
        z = np.load(args.cache)
        fx, fy, fstem = z["fx"], z["fy"], z["fstem"]
    else:
        rng = np.random.default_rng(T.SEED)
        fx, fy, fside, fstem = T.features(front, T.crops(T.DATA, stems, True, rng, yunet,
                                                         detector_boxes=args.detector_boxes))
        if args.cache and not os.path.exists(args.cache) and args.margin == SHIPPED_MARGIN:
            # The same crops as train_mask_classifier.py's with the same options (same seed), in
            # its --cache format, so that a build after this run need not compute them again.
            np.savez(args.cache, fx=fx.astype(np.float16), fy=fy, fside=fside, fstem=fstem)

    # The crops the worker would classify on each TRAIN image.
    mirrored = (False, True) if args.flip else (False,)
    feats, owner, truth, scores = [[] for _ in mirrored], [], {}, []
    for stem in stems:
        img, _ = T.faces(T.DATA, stem)
        truth[stem] = bool(T.violating_boxes(T.DATA, stem))
        # Every detection the graph emits (score >= 0.3) from MIN_BOX px, best first: `frames`
        # applies each score floor and the TOP cut as the worker does.
        kept = [(score, side, box) for score, side, box in yunet.detections(img) if side >= T.MIN_BOX]
        if kept:
            for view, flip in zip(feats, mirrored):
                view.append(front(np.stack([T.crop_input(img, b, flip) for _, _, b in kept]),
                                  training=False).numpy())
            owner += [stem] * len(kept)
            scores += [k[0] for k in kept]
    views = [np.concatenate(view) for view in feats]
    owner, scores = np.array(owner), np.array(scores, np.float32)
    print(f"{len(owner)} crops on {len(stems)} TRAIN images, {sum(truth.values())} with a violation", flush=True)

    # probs[seed, view, crop]: view 0 the crop as cut, view 1 mirrored (--flip).
    probs = np.zeros((len(seeds), len(views), len(owner), len(T.LABELS)), np.float32)
    start = [w.copy() for w in old.get_weights()]
    train_fold, crop_fold = np.array([fold(s) for s in fstem]), np.array([fold(s) for s in owner])
    kept_rows = {}  # the teacher's cleaning, per fold: it does not depend on the tail's seed
    for i, seed in enumerate(seeds):
        for k in range(FOLDS):
            t = time.time()
            x, y = fx[train_fold != k], fy[train_fold != k]
            if k not in kept_rows:
                kept_rows[k] = T.clean_unclear(old, start, x, y, T.SEED, args.clean_unclear)
            x, y = x[kept_rows[k]], y[kept_rows[k]]
            _, model, _ = finetune.fit_tail(old, start, T.make_head, seed, x, y, args.epochs,
                                            T.class_weights(y))
            for j, view in enumerate(views):
                probs[i, j, crop_fold == k] = model.predict(view[crop_fold == k].astype(np.float32),
                                                            batch_size=256, verbose=0)
            print(f"seed {seed} fold {k}: {time.time() - t:.0f} s", flush=True)
        if args.dump:  # after each seed, so that a long run can be read before it ends
            np.savez_compressed(args.dump, probs=probs[:i + 1], owner=owner, scores=scores,
                                stems=np.array(list(truth)), violated=np.array(list(truth.values())))
        report(pooled(probs[:i + 1]), owner, scores, truth, args.score)


def pooled(probs):
    """One probability row per crop: the mean over seeds and views of a dump's
    `probs[seed, view, crop, label]` (a dump from before --seeds holds `probs[crop, label]`)."""
    return probs.reshape(-1, *probs.shape[-2:]).mean(0)


def frames(probs, owner, scores, truth, floor, u=0.5, v=0.5):
    """Frame-level (tp, fp, fn, unknown) and the crops classified, when the worker keeps the
    TOP best detections (all from MIN_BOX px) scoring at least `floor`, leaves a crop unjudged
    above `u` unclear and calls it a violation above `v`."""
    unclear, violation = T.UNCLEAR, list(T.VIOLATION)
    tp = fp = fn = unknown = crops = 0
    for stem, violated in truth.items():
        mine = np.flatnonzero(owner == stem)
        p = probs[mine[scores[mine] >= floor][:TOP]]
        crops += len(p)
        judged = p[p[:, unclear] <= u]
        said = len(judged) > 0 and bool((judged[:, violation].sum(1) > v).any())
        unknown += len(judged) == 0
        tp, fp, fn = tp + (said and violated), fp + (said and not violated), fn + (violated and not said)
    return tp, fp, fn, unknown, crops


def report(probs, owner, scores, truth, floor):
    print("\n| detector score floor | P | R | F1 | flagged frames | false alarms | missed | unknown | crops per frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in SCORES:
        tp, fp, fn, unknown, crops = frames(probs, owner, scores, truth, f)
        prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        f1 = 2 * prec * rec / max(prec + rec, 1e-9)
        print(f"| {f:.2f} | {prec:.3f} | {rec:.3f} | {f1:.3f} | {tp + fp} | {fp} | {fn} | {unknown} "
              f"| {crops / len(truth):.2f} |")
    print(f"\nAt the score floor {floor}:")
    print("\n| unclear above | violation above | P | R | flagged frames | false alarms | missed | unknown |")
    print("|---|---|---|---|---|---|---|---|")
    for u in UNJUDGED:
        for v in VIOLATION:
            tp, fp, fn, unknown, _ = frames(probs, owner, scores, truth, floor, u, v)
            prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
            print(f"| {u} | {v} | {prec:.3f} | {rec:.3f} | {tp + fp} | {fp} | {fn} | {unknown} |")


if __name__ == "__main__":
    main()
