"""Accuracy of vigil measured through the pipeline: labelled images go to a real broker as
frames, a real `vigil worker` judges them, and its observations are read back with
`vigil tail --json` and scored against the labels.

Printed per image set × rule pack × rule: frames judged, frames whose truth is a violation,
frame-level precision and recall of `violation` (an `unknown` verdict counts as "not a
violation"), the share of `unknown` verdicts, and detection recall by object height (each
labelled face or hand matched one-to-one to the rule's detections in the observation at
IoU >= 0.4). Several packs (rules files) are measured in one run, one after the other, each
by its own worker on its own topics of the same broker.

Run with the project's Python, which has confluent-kafka (no numpy or OpenCV needed):

    .venv/bin/python models/evaluate.py --sets mask-scenes-val,closeups [--pack NAME=RULES.toml]...

Sets: mask-scenes-val (models/splits/mask-scenes-val.txt over ../shared/data/mask-scenes),
gloves-val (models/splits/gloves-val.txt over ../shared/data/gloves), closeups-val (faces of
mask-scenes-val cut out as small close-ups: one face filling the frame), closeups
(tests/data/faces: bare faces, violations; tests/data/masked: masked, compliant; plus `--closeup-dir DIR` whose
`labels.txt` has lines `FILE compliant|violation`), animals (every frame of mask-scenes-val and gloves-val as
it is, compliant, and three times with the test cat pasted in, violations). A set is one small loader
function below.
"""
import argparse
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from confluent_kafka import Producer

from vigil_tools import geometry  # the worker's pixel geometry

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("VIGIL_SHARED", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared"))) / "data"

# Rule packs measured when no --pack is given: name -> a rules file, or None for the worker's
# built-in default rules (model pack 2: YuNet faces + mask-v2, palm + gloves, Objectron animals).
DEFAULT_PACKS = {
    "pack1": ROOT / "models" / "rules" / "pack1.toml",  # BlazeFace + the close-up classifier
    "pack2": None,
}

SIZE_BUCKETS = [("<32", 0, 32), ("32-64", 32, 64), ("64-128", 64, 128), (">=128", 128, 1e9)]
IOU_MATCH = 0.4
SITE = "eval"


# ---------------------------------------------------------------- image sets and their truth
class Item:
    """One image: sent as the only frame of its own camera. `boxes` are labelled objects
    (class, x1, y1, x2, y2 normalised to the image); `truth`, when set, overrides the boxes."""

    def __init__(self, camera, path, boxes=(), truth=None, size=None, data=None):
        self.camera, self.path, self.boxes, self.truth, self.size = camera, path, list(boxes), truth, size
        self.data = data  # JPEG bytes made here (a cut-out), instead of the file at `path`


class ImageSet:
    """`kind` says which rules its truth applies to ("mask", "gloves"); a frame is a violation
    iff a box of a `violating` class is at least `min_px` tall (one row per entry of
    `floors`: (suffix, min_px))."""

    def __init__(self, name, zone, kind, violating, items, floors=(("", 0),)):
        self.name, self.zone, self.kind, self.violating = name, zone, kind, set(violating)
        self.items, self.floors = items, list(floors)

    def frame_truth(self, item, min_px, frame_h):
        """True/False, or None when the frame's only violating objects are below `min_px`:
        a frame no camera-sized judgement can get right either way is left out of that row."""
        if item.truth is not None:
            return item.truth
        heights = [(b[4] - b[2]) * frame_h for b in item.boxes if b[0] in self.violating]
        if any(h >= min_px for h in heights):
            return True
        return None if heights and min_px > 0 else False


def camera_id(prefix, name):
    """A stable, short, header-safe camera id per image, so that episodes never mix images."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).stem)[:60]
    return f"{prefix}-{stem}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def read_split(name):
    path = ROOT / "models" / "splits" / f"{name}.txt"
    if not path.exists():  # written by models/splits.py under the shared split rule
        subprocess.run([sys.executable, str(ROOT / "models" / "splits.py")], check=True)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_mask_scenes(args):
    base, items = DATA / "mask-scenes", []
    for stem in read_split("mask-scenes-val"):
        xml = ET.parse(base / "annotations" / f"{stem}.xml").getroot()
        w, h = (int(xml.find("size").find(k).text) for k in ("width", "height"))
        boxes = []
        for o in xml.iter("object"):
            bb = o.find("bndbox")
            x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((o.find("name").text, x1 / w, y1 / h, x2 / w, y2 / h))
        items.append(Item(camera_id("ms", stem), base / "images" / f"{stem}.jpg", boxes, size=(w, h)))
    return ImageSet("mask-scenes-val", "kitchen", "mask", ["without_mask", "mask_weared_incorrect"],
                    items, floors=[("", 0), (" (violating faces >=8 px)", 8), (" (violating faces >=16 px)", 16),
                                   (" (violating faces >=32 px)", 32)])


def load_gloves(args):
    base, names, items = DATA / "gloves", ["bare_hand", "gloved_hand"], []
    for rel in read_split("gloves-val"):
        label = base / rel.replace("/images/", "/labels/")
        boxes = []
        for line in label.with_suffix(".txt").read_text().splitlines():
            if line.strip():
                c, cx, cy, bw, bh = line.split()[:5]
                cx, cy, bw, bh = map(float, (cx, cy, bw, bh))
                boxes.append((names[int(c)], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        items.append(Item(camera_id("gl", rel), base / rel, boxes, size=(640, 640)))
    return ImageSet("gloves-val", "prep", "gloves", ["bare_hand"], items)


def load_closeups(args):
    # tests/data/faces: bare faces, a violation of a mask rule; tests/data/masked: the same
    # photos with masks drawn on, compliant.
    items = [Item(camera_id("cu", f"{d}/{p.name}"), p, truth=d == "faces")
             for d in ("faces", "masked") for p in sorted((ROOT / "tests" / "data" / d).iterdir())
             if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if args.closeup_dir:  # user photos: DIR/labels.txt, lines `FILE compliant|violation`
        d = Path(args.closeup_dir)
        for line in (d / "labels.txt").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, verdict = line.split()[:2]
                items.append(Item(camera_id("cu", f"user/{name}"), d / name, truth=verdict == "violation"))
    return ImageSet("closeups", "kitchen", "mask", [], items)


def voc_faces(stem):
    xml = ET.parse(DATA / "mask-scenes" / "annotations" / f"{stem}.xml").getroot()
    return [(o.find("name").text, *(float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")))
            for o in xml.iter("object")]


def load_closeups_val(args, min_face_px=32, seed=20261207):
    """Close-ups cut from the held-out scenes: each labelled face at least `min_face_px` tall
    whose neighbours stay out of it, grown by 10-35 % of its size on each side, scaled so that
    the longer side is 110-200 px (the small phone photos a face fills), JPEG quality 90. A
    violation when the face is unmasked or wears its mask wrong. Seeded: the same set each run."""
    import random

    import cv2
    rnd, items = random.Random(seed), []
    for stem in read_split("mask-scenes-val"):
        faces = voc_faces(stem)
        img = None
        for i, (label, x1, y1, x2, y2) in enumerate(faces):
            if y2 - y1 < min_face_px:
                continue
            img = cv2.imread(str(DATA / "mask-scenes" / "images" / f"{stem}.jpg")) if img is None else img
            m, (bw, bh) = rnd.uniform(0.10, 0.35), (x2 - x1, y2 - y1)
            X1, Y1 = int(max(0, x1 - m * bw)), int(max(0, y1 - m * bh))
            X2, Y2 = int(min(img.shape[1], x2 + m * bw)), int(min(img.shape[0], y2 + m * bh))
            side = rnd.randint(110, 200)

            def inside(b):  # share of another face's box inside this cut-out
                ix = max(0.0, min(X2, b[3]) - max(X1, b[1]))
                iy = max(0.0, min(Y2, b[4]) - max(Y1, b[2]))
                return ix * iy / max((b[3] - b[1]) * (b[4] - b[2]), 1.0)
            if any(inside(b) > 0.3 for j, b in enumerate(faces) if j != i):
                continue
            crop = img[Y1:Y2, X1:X2]
            f = side / max(crop.shape[:2])
            w, h = max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))
            crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
            box = (label, (x1 - X1) / (X2 - X1), (y1 - Y1) / (Y2 - Y1), (x2 - X1) / (X2 - X1), (y2 - Y1) / (Y2 - Y1))
            data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            items.append(Item(camera_id("cv", f"{stem}-{i}"), f"{stem}.jpg#face{i}", [box],
                              truth=label != "with_mask", size=(w, h), data=data))
    return ImageSet("closeups-val", "kitchen", "mask", ["without_mask", "mask_weared_incorrect"], items)


def load_animals(args, seed=20261207, copies=3):
    """Every held-out frame of mask-scenes-val and gloves-val once as it is (no animal:
    compliant) and `copies` times with the test cat pasted in (models/composite.py: 12-55 % of
    the frame's height, anywhere; a violation of a no-animals rule), JPEG quality 90. Seeded: the
    same set each run. It shows whether a change keeps the same verdicts, not how well cats in
    general are found (one licensed cat photo)."""
    import random

    import cv2

    from vigil_tools import composite
    rnd, items = random.Random(seed), []
    cat = cv2.imread(composite.ANIMAL)
    backgrounds = [(f"ms/{s}", DATA / "mask-scenes" / "images" / f"{s}.jpg") for s in read_split("mask-scenes-val")] + \
                  [(f"gl/{r}", DATA / "gloves" / r) for r in read_split("gloves-val")]
    for name, path in backgrounds:
        img = cv2.imread(str(path))
        H, W = img.shape[:2]
        items.append(Item(camera_id("an0", name), path, truth=False, size=(W, H)))
        for k in range(1, copies + 1):
            out, box = composite.paste_animal(img, cat, rnd)
            items.append(Item(camera_id(f"an{k}", name), f"{path}#cat{k}", [("cat", *box)], truth=True,
                              size=(W, H), data=composite.jpeg(out)))
    return ImageSet("animals", "kitchen", "animals", ["cat"], items)


SETS = {"mask-scenes-val": load_mask_scenes, "gloves-val": load_gloves, "closeups": load_closeups,
        "closeups-val": load_closeups_val, "animals": load_animals}


def rule_kind(name, rule, overrides):
    """Which truth a rule is scored against, guessed from its names unless --rule-kind says."""
    if name in overrides:
        return overrides[name]
    text = " ".join([name, rule.get("classifier", ""), str(rule.get("violation_label", ""))]).lower()
    if "animal" in text or {"cat", "dog"} & set(rule.get("classes", [])):
        return "animals"
    return "gloves" if ("glove" in text or "hand" in text) else "mask" if "mask" in text else None


def jpeg_bytes(path):
    """The file as it is if it is a JPEG; other images are re-encoded as JPEG (quality 95) with
    OpenCV (`opencv-python-headless`, in .venv), since the worker takes JPEG only."""
    data = Path(path).read_bytes()
    if data[:2] == b"\xff\xd8":
        return data
    import cv2
    return cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


# ---------------------------------------------------------------- processes: broker, worker, tail
class Run:
    """Every process this script starts, stopped in reverse order on exit."""

    def __init__(self, args):
        self.args, self.procs = args, []
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-eval."))
        self.broker_dir = None

    def spawn(self, cmd, **kw):
        p = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, grace=15):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self):
        for p in reversed(self.procs):
            self.stop(p)
        if self.broker_dir:
            subprocess.run([str(ROOT / "scripts" / "broker.sh"), "stop", str(self.broker_dir)])
        subprocess.run(["rm", "-rf", str(self.dir)])

    def brokers(self):
        if self.args.brokers:
            return self.args.brokers
        self.broker_dir = self.dir / "broker"
        out = subprocess.run([str(ROOT / "scripts" / "broker.sh"), "start", str(self.broker_dir), "1"],
                             check=True, capture_output=True, text=True).stdout
        return re.search(r"VIGIL_BROKERS=(\S+)", out).group(1)


def follow(proc, sink):
    """Collects the JSON lines a `vigil tail --json` prints (a thread per tail)."""
    for line in proc.stdout:
        try:
            sink.append((time.monotonic(), json.loads(line)))
        except json.JSONDecodeError:
            pass


def measure_pack(run, brokers, pack, rules_file, sets):
    """Publishes every set's frames to this pack's topics, runs one worker over them and
    returns (observations by camera, dead letters, timing)."""
    a, vigil = run.args, run.args.vigil
    base = f"eval-{os.getpid()}-{re.sub(r'[^A-Za-z0-9]', '_', pack)}"
    t = {k: f"{base}.{k}" for k in ("frames", "observations", "dlq", "violations", "state")}
    topic_flags = [x for k, v in t.items() for x in (f"--{k}-topic", v)]
    subprocess.run([vigil, "topics", "create", "--brokers", brokers, "--partitions", "6", *topic_flags],
                   cwd=ROOT, check=True, capture_output=True)

    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True,
                         "message.max.bytes": 10_000_000, "log_level": 4})
    errors, sent = [], 0
    for s in sets:
        for it in s.items:
            now = str(int(time.time() * 1000))
            headers = {"site": SITE, "camera": it.camera, "captured_at": now, "seq": "1", "zone": s.zone}
            producer.produce(t["frames"], key=it.camera, value=it.data or jpeg_bytes(it.path), headers=list(headers.items()),
                             on_delivery=lambda e, m: e and errors.append(str(e)))
            producer.poll(0)
            sent += 1
    if producer.flush(60) or errors:
        sys.exit(f"evaluate: frames not delivered: {errors[:3] or 'flush timed out'}")

    log = open(run.dir / f"worker-{pack}.log", "w")
    t_spawn = time.monotonic()
    worker = run.spawn([vigil, "worker", "--brokers", brokers, *topic_flags, "--group", f"{base}-workers",
                        "--worker-id", f"eval-{pack}", "--metrics-addr", "", "--model-dir", a.model_dir,
                        *(["--rules", str(rules_file)] if rules_file else []),
                        # Every frame is judged: the set is published before the worker starts.
                        "--max-staleness-secs", "0",
                        "--intra-threads", str(a.intra_threads),
                        "--progress-secs", "30", *shlex.split(a.worker_args)], stdout=log, stderr=log)
    obs, dlq, tails = [], [], []
    for topic, sink in ((t["observations"], obs), (t["dlq"], dlq)):
        tails.append(tail := run.spawn([vigil, "tail", "--brokers", brokers, "--topic", topic, "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        threading.Thread(target=follow, args=(tail, sink), daemon=True).start()

    def done():
        return {o["camera"] for _, o in obs if "camera" in o} | {d["headers"].get("camera") for _, d in dlq}

    last, last_n = time.monotonic(), 0
    while len(done()) < sent:
        time.sleep(0.5)
        n = len(obs) + len(dlq)
        if n != last_n:
            last, last_n = time.monotonic(), n
        why = ("the worker exited (code %s)" % worker.poll() if worker.poll() is not None else
               f"nothing arrived for {a.idle_timeout} s" if time.monotonic() - last > a.idle_timeout else None)
        if why:
            missing = sorted({it.camera for s in sets for it in s.items} - done())
            log.flush()
            text = re.sub(r"\x1b\[[0-9;]*m", "", (run.dir / f"worker-{pack}.log").read_text())
            tail_log = text.splitlines()[-15:]
            for _, d in dlq:
                print(f"  dead letter: {d['headers']}", file=sys.stderr)
            sys.exit(f"evaluate: pack {pack}: {why}: {len(missing)} of {sent} frames have neither an "
                     f"observation nor a dead letter (e.g. {missing[:3]}); {len(dlq)} dead letters.\n"
                     f"worker log (last lines):\n  " + "\n  ".join(tail_log))
    t_end = time.monotonic()
    for p in (worker, *tails):
        run.stop(p)
    log.close()
    by_cam = {o["camera"]: o for _, o in obs if "camera" in o}
    first = min(ts for ts, _ in obs) if obs else t_end
    timing = {"wall_s": round(t_end - t_spawn, 2), "frames": sent,
              "frames_per_s": round((len(obs) - 1) / max(t_end - first, 1e-3), 2) if len(obs) > 1 else None}
    return by_cam, [d for _, d in dlq], timing


# ---------------------------------------------------------------- scoring
iou = geometry.iou


def centre_inside(t, d):
    """1 when the detection's centre lies inside the truth box (a palm box covers half a hand,
    so IoU with the labelled hand box says little), else 0."""
    cx, cy = (d[0] + d[2]) / 2, (d[1] + d[3]) / 2
    return 1.0 if t[0] <= cx <= t[2] and t[1] <= cy <= t[3] else 0.0


def matched(truth_boxes, det_boxes, kind="mask"):
    """Indices of truth boxes matched one-to-one (greedy): faces at IoU >= IOU_MATCH; hands when
    the palm detection's centre lies inside the hand's box, animals when the detection's centre
    lies inside the pasted photo (whose box holds the cat and its surroundings)."""
    overlap, floor = (centre_inside, 1.0) if kind in ("gloves", "animals") else (iou, IOU_MATCH)
    pairs = sorted(((overlap(t, d), i, j) for i, t in enumerate(truth_boxes) for j, d in enumerate(det_boxes)),
                   reverse=True)
    used_t, used_d = set(), set()
    for v, i, j in pairs:
        if v < floor:
            break
        if i not in used_t and j not in used_d:
            used_t.add(i), used_d.add(j)
    return used_t


def score(s, pack, rule, kind, observations):
    """Rows (one per truth floor) for one set × pack × rule."""
    judged = [(it, o, r) for it in s.items if (o := observations.get(it.camera))
              for r in o["rules"] if r["rule"] == rule]
    unknown = sum(r["verdict"] == "unknown" for _, _, r in judged)
    buckets = {b: [0, 0] for b, _, _ in SIZE_BUCKETS}  # bucket -> [matched, labelled]
    if kind == s.kind:
        for it, o, _ in judged:
            dets = [d["bbox"] for d in o["detections"] if d["rule"] == rule]
            hit = matched([b[1:] for b in it.boxes], dets, kind)
            for i, b in enumerate(it.boxes):
                px = (b[4] - b[2]) * o["frame"]["height"]
                name = next(n for n, lo, hi in SIZE_BUCKETS if lo <= px < hi)
                buckets[name][0] += i in hit
                buckets[name][1] += 1
    rows = []
    for suffix, min_px in s.floors:
        row = {"set": s.name + suffix, "pack": pack, "rule": rule, "frames": len(judged),
               "unknown_rate": round(unknown / len(judged), 3) if judged else None,
               "truth_violations": None, "said_violations": sum(r["verdict"] == "violation" for _, _, r in judged),
               "precision": None, "recall": None,
               "detection_recall": {b: (round(m / n, 3) if n else None, n) for b, (m, n) in buckets.items()}
               if kind == s.kind else None}
        if kind == s.kind:
            pairs = [(t, r["verdict"] == "violation") for it, o, r in judged
                     if (t := s.frame_truth(it, min_px, o["frame"]["height"])) is not None]
            truth, said = [t for t, _ in pairs], [p for _, p in pairs]
            tp = sum(t and p for t, p in pairs)
            row.update(frames=len(pairs), truth_violations=sum(truth), said_violations=sum(said),
                       precision=round(tp / sum(said), 3) if sum(said) else None,
                       recall=round(tp / sum(truth), 3) if sum(truth) else None)
        rows.append(row)
    return rows


def fmt(v):
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def print_table(rows):
    head = ["set", "pack", "rule", "frames", "truth viol.", "said viol.", "P", "R", "unknown"] + \
           [f"det R {b}" for b, _, _ in SIZE_BUCKETS]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        dr = r["detection_recall"] or {}
        cells = [r["set"], r["pack"], r["rule"], r["frames"], r["truth_violations"], r["said_violations"], r["precision"],
                 r["recall"], r["unknown_rate"]] + \
                [f"{fmt(dr[b][0])} ({dr[b][1]})" if b in dr else "–" for b, _, _ in SIZE_BUCKETS]
        print("| " + " | ".join(fmt(c) for c in cells) + " |")
    print("\nP, R: frame-level precision and recall of `violation` (`unknown` counts as not a violation);"
          f"\ndet R: labelled objects matched by the rule's detections at IoU >= {IOU_MATCH}, by box"
          " height in px (objects in the bucket); –: not applicable (the set's truth is not the rule's kind)")


# ---------------------------------------------------------------- main
def default_vigil():
    """The release binary if it is newer than every source file, else the debug one."""
    release, debug = ROOT / "target/release/vigil", ROOT / "target/debug/vigil"
    newest = max(p.stat().st_mtime for p in [ROOT / "Cargo.toml", ROOT / "Cargo.lock", *(ROOT / "src").rglob("*")])
    return str(release if release.exists() and release.stat().st_mtime > newest else debug)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="mask-scenes-val,closeups", help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--pack", action="append", default=[], metavar="NAME=RULES_TOML",
                    help="a rules file to measure (repeat); default: " + ", ".join(DEFAULT_PACKS))
    ap.add_argument("--model-dir", default=str(ROOT / "models"))
    ap.add_argument("--vigil", default=None, help="vigil binary (default: release if fresh, else debug)")
    ap.add_argument("--brokers", help="use this broker instead of starting one with scripts/broker.sh")
    ap.add_argument("--closeup-dir", help="extra close-ups: DIR/labels.txt lines `FILE compliant|violation`")
    ap.add_argument("--rule-kind", action="append", default=[], metavar="RULE=KIND",
                    help="score RULE against KIND truth (mask, gloves, animals) instead of guessing from its names")
    ap.add_argument("--intra-threads", type=int, default=1, help="worker's ONNX Runtime threads per operator")
    ap.add_argument("--worker-args", default="", help="extra worker flags, e.g. '--device cuda'")
    ap.add_argument("--idle-timeout", type=float, default=180, help="seconds without a new observation before giving up")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    a.vigil = a.vigil or default_vigil()
    unknown_sets = [n for n in a.sets.split(",") if n not in SETS]
    if unknown_sets:
        ap.error(f"unknown set(s) {unknown_sets}; known: {', '.join(SETS)}")
    sets = [SETS[n](a) for n in a.sets.split(",")]
    kinds = dict(x.split("=", 1) for x in a.rule_kind)
    run = Run(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        packs = {}
        for spec in a.pack or [f"{n}=" for n in DEFAULT_PACKS]:
            name, path = spec.split("=", 1)
            if not path:  # a default pack: a rules file, or None for the built-in rules
                packs[name] = DEFAULT_PACKS[name]
            else:
                packs[name] = Path(path)
        brokers = run.brokers()
        print(f"evaluate: vigil {a.vigil}, broker {brokers}, sets "
              + ", ".join(f"{s.name} ({len(s.items)})" for s in sets), file=sys.stderr)
        rows = []
        report = {"vigil": a.vigil, "model_dir": a.model_dir, "packs": {}, "rows": rows, "frames": {}}
        for name, path in packs.items():
            rules = tomllib.loads(path.read_text()).get("rules", {}) if path else {}
            print(f"evaluate: pack {name} ({path}): rules {', '.join(rules)}", file=sys.stderr)
            obs, dlq, timing = measure_pack(run, brokers, name, path, sets)
            report["packs"][name] = dict(timing, rules_file=str(path or "built-in"), dead_letters=len(dlq))
            for d in dlq:
                print(f"  dead letter: {d['headers'].get('camera')}: {d['headers'].get('reason')} "
                      f"({d['headers'].get('reason_detail')})", file=sys.stderr)
            report["frames"][name] = [{"set": s.name, "image": str(it.path), "camera": it.camera,
                                       "verdicts": {r["rule"]: r["verdict"] for r in obs[it.camera]["rules"]},
                                       "detections": [{k: d[k] for k in ("rule", "score", "bbox", "label", "scores")}
                                                      for d in obs[it.camera]["detections"]]}
                                      for s in sets for it in s.items if it.camera in obs]
            for s in sets:
                mismatched = sum(1 for it in s.items if it.size and it.camera in obs and
                                 tuple(obs[it.camera]["frame"][k] for k in ("width", "height")) != it.size)
                if mismatched:
                    print(f"  warning: {s.name}: {mismatched} frames differ in size from their labels",
                          file=sys.stderr)
                seen = sorted({r["rule"] for it in s.items if it.camera in obs for r in obs[it.camera]["rules"]})
                for rule in seen:
                    rows += score(s, name, rule, rule_kind(rule, rules.get(rule, {}), kinds), obs)
        print_table(rows)
        print()
        for name, t in report["packs"].items():
            print(f"pack {name}: {t['frames']} frames, wall {t['wall_s']} s from worker start "
                  f"(model loading included), {t['frames_per_s']} frames/s once observations flowed, "
                  f"{t['dead_letters']} dead letters")
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        run.close()


if __name__ == "__main__":
    main()
