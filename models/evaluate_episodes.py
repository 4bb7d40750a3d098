"""Episode-level accuracy through the pipeline: what a manager is alerted to, not what one frame
says. Each held-out image becomes a camera that watches the same scene for `--seconds` of
footage at `--fps` (each frame the image jittered: shifted and scaled by a few per cent,
re-lit, re-encoded, seeded), as a camera watches a cook who keeps a mask off, or on, for that
long. A real `vigil worker` with the shipped smoothing judges every frame, and the episodes it
opens are read back from the violations topic (fastavro, the event schema in schemas/).

Per set and rule: episode recall (violating scenes with an episode opened), false episodes
(compliant scenes with one opened), episode precision, scenes with more than one episode
(flapping), seconds of footage from the first frame to the opening; beside them the
frame-level precision and recall of the same frames, for comparison.

    .venv/bin/python models/evaluate_episodes.py --vigil target/release/vigil \\
        --sets mask-scenes-val,closeups-val,gloves-val --seconds 10

Sets are those of models/evaluate.py (the same loaders and truth); a frame's truth is its
image's (every labelled violating object counts, whatever its size).
"""
import argparse
import os
import random
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from confluent_kafka import Producer

from vigil_tools import evaluate
from vigil_tools.topics import TopicReader, avro_reader

HERE = Path(__file__).resolve().parent

ROOT = HERE.parent
SITE = "episodes"


def jittered(img, rnd):
    """The image as the next frame of a camera that keeps watching it: shifted up to 2 %,
    scaled up to +-3 % about its centre, brightness +-8 %, JPEG quality 80-95."""
    h, w = img.shape[:2]
    s = 1 + rnd.uniform(-0.03, 0.03)
    tx, ty = rnd.uniform(-0.02, 0.02) * w, rnd.uniform(-0.02, 0.02) * h
    m = np.float32([[s, 0, (1 - s) * w / 2 + tx], [0, s, (1 - s) * h / 2 + ty]])
    out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = cv2.convertScaleAbs(out, alpha=1 + rnd.uniform(-0.08, 0.08))
    return cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, rnd.randint(80, 95)])[1].tobytes()


def image_of(item):
    data = item.data or evaluate.jpeg_bytes(item.path)
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def rule_for(s):
    return {"mask": "mask_required", "gloves": "gloves_required"}[s.kind]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="mask-scenes-val,closeups-val,gloves-val")
    ap.add_argument("--seconds", type=float, default=10.0, help="footage per scene")
    ap.add_argument("--fps", type=float, default=1.0, help="frames per second of footage")
    ap.add_argument("--rules", help="a rules file (default: the worker's built-in rules)")
    ap.add_argument("--vigil", default=None)
    ap.add_argument("--model-dir", default=str(ROOT / "models"))
    ap.add_argument("--brokers")
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--worker-args", default="")
    ap.add_argument("--idle-timeout", type=float, default=180)
    a = ap.parse_args()
    a.vigil = a.vigil or evaluate.default_vigil()
    a.closeup_dir, a.intra_threads = None, 1
    sets = [evaluate.SETS[n](a) for n in a.sets.split(",")]
    n = max(1, round(a.seconds * a.fps))
    run = evaluate.Run(a)
    try:
        brokers = run.brokers()
        base = f"episodes-{os.getpid()}"
        t = {k: f"{base}.{k}" for k in ("frames", "observations", "dlq", "violations", "state")}
        flags = [x for k, v in t.items() for x in (f"--{k}-topic", v)]
        subprocess.run([a.vigil, "topics", "create", "--brokers", brokers, "--partitions", "6", *flags],
                       cwd=ROOT, check=True, capture_output=True)
        producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True,
                             "message.max.bytes": 10_000_000, "log_level": 4})
        rnd, errors, sent = random.Random(a.seed), [], 0
        start = int(time.time() * 1000) - int(a.seconds * 1000) - 60_000
        print(f"episodes: {sum(len(s.items) for s in sets)} scenes x {n} frames", file=sys.stderr)
        for s in sets:
            for it in s.items:
                img = image_of(it)
                for i in range(n):
                    headers = {"site": SITE, "camera": it.camera, "zone": s.zone, "seq": str(i),
                               "captured_at": str(start + int(i * 1000 / a.fps))}
                    producer.produce(t["frames"], key=it.camera, value=jittered(img, rnd),
                                     headers=list(headers.items()),
                                     on_delivery=lambda e, m: e and errors.append(str(e)))
                    producer.poll(0)
                    sent += 1
        if producer.flush(120) or errors:
            sys.exit(f"episodes: frames not delivered: {errors[:3] or 'flush timed out'}")
        del producer  # closed before the broker stops

        log = open(run.dir / "worker.log", "w")
        worker = run.spawn([a.vigil, "worker", "--brokers", brokers, *flags, "--group", f"{base}-w",
                            "--worker-id", "episodes", "--metrics-addr", "", "--model-dir", a.model_dir,
                            *(["--rules", a.rules] if a.rules else []), "--max-staleness-secs", "0",
                            *shlex.split(a.worker_args)], stdout=log, stderr=log)
        obs = []
        tail = run.spawn([a.vigil, "tail", "--brokers", brokers, "--topic", t["observations"], "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=evaluate.follow, args=(tail, obs), daemon=True).start()
        t0, last, last_n = time.monotonic(), time.monotonic(), 0
        while len(obs) < sent:
            time.sleep(1)
            if len(obs) != last_n:
                last, last_n = time.monotonic(), len(obs)
            if worker.poll() is not None or time.monotonic() - last > a.idle_timeout:
                sys.exit(f"episodes: {len(obs)} of {sent} observations; worker log in {run.dir}")
        took = time.monotonic() - t0
        time.sleep(3)  # the last events follow their frames' observations
        run.stop(worker)
        log.close()

        reader = TopicReader(brokers, t["violations"])
        msgs, _ = reader.catch_up(timeout=60)
        reader.close()
        read = avro_reader("violation_event.avsc")
        opened = {}  # (camera, rule) -> [opened_at ms]
        for m in msgs:
            e = read(m.value())
            if e["kind"] == "opened":
                opened.setdefault((e["camera"], e["rule"]), []).append(e["opened_at"])
        verdicts = {}  # (camera, rule) -> [violation?]
        for _, o in obs:
            for r in o.get("rules", []):
                verdicts.setdefault((o["camera"], r["rule"]), []).append(r["verdict"] == "violation")

        print(f"\n{sent} frames judged in {took:.0f} s; {len(msgs)} events\n")
        print("| set | rule | scenes (violating) | episode recall | false episodes | episode P "
              "| flapping | s to open (median) | frame P | frame R |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for s in sets:
            rule = rule_for(s)
            tp = fp = fn = flap = 0
            delays, ftp, ffp, ffn = [], 0, 0, 0
            for it in s.items:
                truth = s.frame_truth(it, 0, 1)
                eps = opened.get((it.camera, rule), [])
                flap += len(eps) > 1
                if truth:
                    tp += bool(eps)
                    fn += not eps
                    if eps:
                        delays.append((min(eps) - start) / 1000)
                else:
                    fp += bool(eps)
                for v in verdicts.get((it.camera, rule), []):
                    ftp += truth and v
                    ffp += (not truth) and v
                    ffn += truth and not v
            pos = tp + fn
            neg = len(s.items) - pos
            p = tp / (tp + fp) if tp + fp else float("nan")
            fpv = ftp / (ftp + ffp) if ftp + ffp else float("nan")
            frv = ftp / (ftp + ffn) if ftp + ffn else float("nan")
            med = sorted(delays)[len(delays) // 2] if delays else float("nan")
            print(f"| {s.name} | `{rule}` | {len(s.items)} ({pos}) | {tp / pos if pos else float('nan'):.3f} "
                  f"| {fp} of {neg} | {p:.3f} | {flap} | {med:.1f} | {fpv:.3f} | {frv:.3f} |")
        print(f"\n{n} frames per scene ({a.seconds:g} s at {a.fps:g} frame/s), seed {a.seed}, "
              f"rules {a.rules or 'built-in'}")
    finally:
        run.close()


if __name__ == "__main__":
    main()
