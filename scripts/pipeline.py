#!/usr/bin/env python3
"""Reference Python pipeline: the job of `vigil worker` with its default rules, written the
straightforward way in Python, to compare vigil with (scripts/load.py --local-python, --compare).

Per poll of up to --max-batch frames: intake checks (bad frames dead-lettered), OpenCV decode at
the reduction the detectors allow (thread pool), each detector once on the batch, each classifier
once on all the batch's crops, verdicts, one observation per frame in vigil's format (Avro
single-object encoding; `vigil tail --json` reads it). Offsets are stored once a frame's outcome
and all earlier ones of its partition are acknowledged. A still detection's crop is classified
again every --reclassify-every frames, as in the worker. The rules are the worker's built-in ones,
read out of src/rules/mod.rs, or a rules file (--rules, as `vigil worker --rules`). Not done:
episodes, load shedding, a rule's own rate (`every_secs`: every rule runs on every frame),
close-ups searched again.

    .venv/bin/python scripts/pipeline.py --brokers 127.0.0.1:9092 --metrics-port 9400
"""
import argparse, hashlib, io, json, os, re, signal, sys, threading, time, tomllib  # noqa: E401
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import fastavro
import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from vigil_tools import geometry  # models/geometry.py: the worker's pixel geometry
from vigil_tools.topics import single_object_header

ROOT, F32 = os.path.dirname(os.path.dirname(os.path.abspath(__file__))), np.float32

def load_rules(path=None):
    """The worker's rules: a rules file (`vigil worker --rules`), or the built-in DEFAULT_RULES
    read out of src/rules/mod.rs, so the reference judges what the worker judges. Returns
    ({rule: settings}, [assignment]). Not done here: whole-frame rules, `violation_when`,
    `every_secs` (every rule runs on every frame) and close-ups."""
    if path:
        text, where = open(path).read(), path
    else:
        src = open(os.path.join(ROOT, "src", "rules", "mod.rs")).read()
        text, where = re.search(r'pub const DEFAULT_RULES: &str = r#"(.*?)"#;', src, re.S).group(1), "DEFAULT_RULES"
    t = tomllib.loads(text)

    def labels(v):
        return [v] if isinstance(v, str) else list(v or [])
    rules = {}
    for name, r in t.get("rules", {}).items():  # src/rules/mod.rs Rule and its defaults
        if not r.get("detector") or r.get("violation_when"):
            sys.exit(f"pipeline: rules.{name} in {where}: only detector rules are done here")
        rules[name] = dict(detector=r["detector"], classifier=r.get("classifier"),
                           violation=labels(r.get("violation_label")), unjudged=labels(r.get("unjudged_label")),
                           classes=r.get("classes"), min_score=r.get("min_detection_score", 0.5),
                           margin=r.get("crop_margin", 0.15), min_box=r.get("min_box_px", 16),
                           max_detections=r.get("max_detections", 16))
    assign = t.get("assign", [])
    for a in assign:
        if set(a["rules"]) - set(rules):
            sys.exit(f"pipeline: an assignment in {where} names undefined rules {sorted(set(a['rules']) - set(rules))}")
    return rules, assign


def rules_for(assign, meta):
    """src/rules/mod.rs: the most specific matching assignment (camera, then site + zone, zone,
    site, the catch-all); no match, no rules."""
    best = None
    for a in assign:
        if all(a.get(k) is None or a.get(k) == meta.get(k) for k in ("site", "zone", "camera")):
            rank = 4 * ("camera" in a) + 2 * ("site" in a) + ("zone" in a)
            if best is None or rank > best[0]:
                best = (rank, a["rules"])
    return best[1] if best else []


RULES, ASSIGN = load_rules()  # main() replaces them with --rules
MATCH_IOU, MAX_SHIFT, MAX_SCALE, MAX_AGE_MS, FORGET_MS = 0.3, 0.15, 0.2, 10_000, 10_000  # src/infer/track.rs TrackPolicy
# src/contract/frame.rs limits, the worker's defaults
MAX_FRAME_BYTES, MAX_PIXELS, MAX_FUTURE_MS, TIME_FLOOR_MS = 4 << 20, 40_000_000, 300_000, 1_577_836_800_000

fit = geometry.letterbox_fit  # src/decode/image.rs Letterbox::fit: (width, height, x, y)

class Model:
    """A manifest (models/*.toml), checked against its file, and its ONNX Runtime session."""

    def __init__(self, path, threads, spinning):
        m = tomllib.load(open(path, "rb"))
        self.name, self.version, self.labels = m["name"], m["version"], m["labels"]
        inp = m["input"]
        self.in_name, self.out_name, self.w, self.h = inp["name"], m["output"]["name"], inp["width"], inp["height"]
        self.nchw, self.rgb = inp["layout"] == "NCHW", inp["channels"] == "RGB"
        self.letterbox = inp.get("resize", "stretch") == "letterbox"
        self.mean, self.scale = np.array(inp["mean"], F32), F32(1.0) / np.array(inp["std"], F32)
        data = open(os.path.join(os.path.dirname(path), m["file"]), "rb").read()
        if hashlib.sha256(data).hexdigest() != m["sha256"].lower():
            sys.exit(f"pipeline: {m['file']} does not match its manifest's sha256")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]

    def preprocess(self, img):
        """src/decode/image.rs preprocess: resize (stretch, or letterbox padded with black),
        channel order, (pixel - mean) / std, layout."""
        h0, w0 = img.shape[:2]
        fw, fh, x, y = fit(w0, h0, self.w, self.h) if self.letterbox else (self.w, self.h, 0, 0)
        r = img if (w0, h0) == (fw, fh) else cv2.resize(img, (fw, fh), interpolation=cv2.INTER_LINEAR)
        v = ((r[:, :, ::-1] if self.rgb else r).astype(F32) - self.mean) * self.scale
        if (fw, fh) != (self.w, self.h):
            out = np.empty((self.h, self.w, 3), F32)
            out[:] = -self.mean * self.scale
            out[y:y + fh, x:x + fw] = v
            v = out
        return np.ascontiguousarray(v.transpose(2, 0, 1) if self.nchw else v)

    def run(self, tensors):
        return self.session.run([self.out_name], {self.in_name: np.stack(tensors)})[0]

    def detect(self, tensors):
        """src/infer/model.rs detect: rows [batch, class, score, x1, y1, x2, y2] normalised to
        the input, clamped, empty boxes dropped; per image (class, score, box), best first."""
        n, out = len(tensors), self.run(tensors).astype(F32).reshape(-1, 7)
        box = np.clip(out[:, 3:7], F32(0), F32(1))
        ok = np.isfinite(out).all(axis=1) & (out[:, 0] >= 0) & (out[:, 0] < n)
        ok &= (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
        res = [[] for _ in range(n)]
        for i in np.nonzero(ok)[0]:
            res[int(out[i, 0])].append((int(max(out[i, 1], 0)), out[i, 2], box[i]))
        return [sorted(r, key=lambda d: -d[1]) for r in res]

def to_image(box, w, h, m):
    """src/decode/image.rs Letterbox::to_image: a box normalised to the input, to the frame."""
    return np.array(geometry.to_image(box, fit(w, h, m.w, m.h), m.w, m.h), F32)

crop_rect = geometry.crop_rect  # src/infer/cascade.rs crop_rect

def share(scores, labels):
    """src/infer/cascade.rs verdict: the labels' share of a crop's scores, in f32."""
    part, total = F32(sum(F32(scores[i]) for i in labels)), F32(sum(F32(x) for x in scores))
    return float(min(max(part / total, F32(0)), F32(1))) if total > 0 else 0.0

iou = geometry.iou

def changed(then, now):
    w0, h0 = max(then[2] - then[0], 1e-6), max(then[3] - then[1], 1e-6)
    dx = abs((now[0] + now[2]) - (then[0] + then[2])) / 2 / w0
    dy = abs((now[1] + now[3]) - (then[1] + then[3])) / 2 / h0
    return max(dx, dy) > MAX_SHIFT or max(abs((now[2] - now[0]) / w0 - 1), abs((now[3] - now[1]) / h0 - 1)) > MAX_SCALE

class Tracker:
    """src/infer/track.rs: per camera and rule, detections linked into tracks by IoU; a track's
    crop is classified when new, moved or grown, or every `every` frames; otherwise its last
    scores are reused (or awaited while its first classification is pending). As in the
    worker, a track's first cycle is shortened by (id - 1) % every frames once its first scores
    arrive (`scored`), so tracks that began together are re-classified apart."""

    def __init__(self, every):
        self.every, self.tracks, self.next_id = every, {}, 1

    def scored(self, t, scores):
        if t["scores"] is None:
            head = (t["id"] - 1) % self.every
            t["since"] = max(t["since"], head)
            t["classified_ms"] -= head * MAX_AGE_MS // self.every
        t["scores"] = scores

    def plan(self, key, at_ms, boxes):
        tracks = [t for t in self.tracks.get(key, []) if at_ms - t["seen"] <= FORGET_MS]
        pairs = sorted(((o, bi, ti) for bi, b in enumerate(boxes) for ti, t in enumerate(tracks)
                        if (o := iou(b, t["bbox"])) >= MATCH_IOU), key=lambda p: -p[0])
        of_box, taken = [None] * len(boxes), set()
        for _, bi, ti in pairs:
            if of_box[bi] is None and ti not in taken:
                of_box[bi] = ti
                taken.add(ti)
        out = []
        for bi, b in enumerate(boxes):
            if of_box[bi] is None:
                tracks.append(dict(id=self.next_id, bbox=b, classified=b, classified_ms=at_ms,
                                   scores=None, since=0, seen=at_ms))
                self.next_id += 1
                out.append(("classify", tracks[-1]))
                continue
            t = tracks[of_box[bi]]
            t["bbox"], t["seen"], t["since"] = b, max(t["seen"], at_ms), t["since"] + 1
            still = (t["since"] < self.every and at_ms - t["classified_ms"] < MAX_AGE_MS
                     and not changed(t["classified"], b))
            if not still:
                t["since"], t["classified"], t["classified_ms"] = 0, b, at_ms
            out.append(("classify" if not still else "reuse" if t["scores"] is not None else "await", t))
        self.tracks[key] = tracks
        if not tracks:
            del self.tracks[key]
        return out

class Reject(Exception):
    """Reject(reason, detail): a frame dead-lettered with this reason (src/contract/reject.rs)."""

def intake(msg):
    """src/source/intake.rs validate, in short: headers, key, event time, size, JPEG header."""
    hs, meta = dict(reversed(msg.headers() or [])), {}  # the first of a repeated name
    for name in ("camera", "site", "captured_at", "seq", "zone"):
        if hs.get(name) is None and name != "zone":
            raise Reject("missing_header", f"required header `{name}` is missing")
        meta[name] = v = None if hs.get(name) is None else hs[name].decode(errors="replace").strip()
        if v is not None and (not v or len(v.encode()) > 128 or any(ord(c) < 32 or c in "\x7f\ufffd" for c in v)):
            raise Reject("bad_header", f"header `{name}` {v[:40]!r} is not valid")
    try:
        meta["captured_at_ms"], meta["seq"] = int(meta.pop("captured_at")), int(meta["seq"])
    except ValueError:
        raise Reject("bad_header", "header `captured_at` or `seq` is not a valid number")
    if not (0 <= meta["seq"] < 2**63 and TIME_FLOOR_MS <= meta["captured_at_ms"] <= time.time() * 1e3 + MAX_FUTURE_MS):
        raise Reject("bad_header", "header `seq` or `captured_at` is out of range")
    if msg.key() != meta["camera"].encode():
        raise Reject("missing_header" if msg.key() is None else "bad_header", "record key is not the camera id")
    data = msg.value() or b""
    if not data or len(data) > MAX_FRAME_BYTES:
        raise Reject("oversize" if data else "empty", f"frame is {len(data)} bytes")
    meta["width"], meta["height"] = sniff(data)
    if meta["width"] * meta["height"] > MAX_PIXELS:
        raise Reject("pixel_budget", f"JPEG header claims {meta['width']}x{meta['height']}")
    return meta

def sniff(d):
    """src/contract/jpeg.rs sniff: the start-of-frame dimensions, and an end-of-image marker."""
    if d[:3] != b"\xff\xd8\xff":
        raise Reject("not_jpeg", "value does not start with a JPEG start-of-image marker")
    pos, dims, marker = 2, None, 0
    while marker != 0xDA:  # up to the start of scan
        while pos < len(d) and d[pos] == 0xFF:
            pos += 1
        if pos + 3 > len(d) or d[pos] == 0xD9:
            raise Reject("truncated", "JPEG ends inside its header")
        marker, pos = d[pos], pos + 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        n = int.from_bytes(d[pos:pos + 2], "big")
        if n < 2 or pos + n > len(d):
            raise Reject("truncated" if n >= 2 else "not_jpeg", f"JPEG marker 0x{marker:02x} length {n}")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            dims = (int.from_bytes(d[pos + 5:pos + 7], "big"), int.from_bytes(d[pos + 3:pos + 5], "big"))
            if n < 8 or 0 in dims:
                raise Reject("not_jpeg", f"JPEG start-of-frame claims a {dims[0]}x{dims[1]} image")
        pos += n
    if dims is None:
        raise Reject("not_jpeg", "JPEG has no start-of-frame marker before its scan")
    if b"\xff\xd9" not in d[max(len(d) - 64, pos):]:
        raise Reject("truncated", "JPEG ends without an end-of-image marker")
    return dims

class Pipeline:
    def __init__(self, a):
        self.a, self.stop, self.ready, self.fatal, self.observed, self.dead = a, False, False, None, 0, 0
        self.worker = a.worker_id or f"python-{os.getpid()}"
        names, self.models = {r[k] for r in RULES.values() for k in ("detector", "classifier") if r[k]}, {}
        for path in sorted(os.path.join(a.model_dir, f) for f in os.listdir(a.model_dir) if f.endswith(".toml")):
            if tomllib.load(open(path, "rb")).get("name") in names:
                m = Model(path, a.intra_threads, a.ort_spinning)
                self.models[m.name] = m
        if names - set(self.models):
            sys.exit(f"pipeline: no manifest for {sorted(names - set(self.models))} in {a.model_dir}")
        self.schema = fastavro.parse_schema(json.load(open(os.path.join(ROOT, "schemas/observation.avsc"))))
        self.header = single_object_header(self.schema)
        self.tracker = Tracker(max(1, a.reclassify_every))
        self.pool = ThreadPoolExecutor(a.decode_threads or os.cpu_count() or 2)
        base = {"bootstrap.servers": a.brokers, "client.id": "vigil-python"}
        self.ensure_topic(base)  # clients as src/kafka/mod.rs and src/source/consumer.rs configure them
        self.producer = Producer({**base, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                                  "message.max.bytes": 64 << 20, "message.timeout.ms": 120000})
        self.consumer = Consumer({**base, "group.id": a.group, "enable.auto.commit": True,
                                  "auto.commit.interval.ms": 1000, "enable.auto.offset.store": False,
                                  "auto.offset.reset": "earliest", "fetch.wait.max.ms": 5,
                                  "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000})
        self.pending = {}  # partition -> deque of [offset, acknowledged], in read order
        ready = lambda *_: setattr(self, "ready", True)  # noqa: E731
        self.consumer.subscribe([a.frames_topic], on_assign=ready, on_revoke=self.on_revoke)

    def ensure_topic(self, base):  # the observations topic, as many partitions as the frames topic
        topics = (admin := AdminClient(base)).list_topics(timeout=10).topics
        if self.a.observations_topic not in topics:
            n = len(topics[self.a.frames_topic].partitions) if self.a.frames_topic in topics else 6
            e = admin.create_topics([NewTopic(self.a.observations_topic, n, 1)])[self.a.observations_topic].exception()
            if e is not None and "TOPIC_ALREADY_EXISTS" not in str(e):
                sys.exit(f"pipeline: cannot create {self.a.observations_topic}: {e}")

    def commit(self):
        self.producer.flush(10)  # the deliveries store the offsets of the frames done
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException:
            pass  # nothing stored since the last commit

    def on_revoke(self, consumer, parts):
        self.commit()
        for p in parts:
            self.pending.pop(p.partition, None)

    def track(self, msg):
        """Registers a frame (in read order) and returns the delivery callback of its outcome,
        which stores the offset past the partition's last contiguous acknowledged frame."""
        partition, entry = msg.partition(), [msg.offset(), False]
        self.pending.setdefault(partition, deque()).append(entry)

        def delivered(err, _msg):
            if err is not None:
                self.fatal = f"delivery failed: {err}"
                return
            entry[1], q, last = True, self.pending.get(partition), None
            while q and q[0][1]:
                last = q.popleft()[0]
            if last is not None:
                try:
                    self.consumer.store_offsets(offsets=[TopicPartition(self.a.frames_topic, partition, last + 1)])
                except KafkaException:
                    pass  # revoked meanwhile
        return delivered

    def dead_letter(self, msg, cb, reason, detail):
        v = msg.value()  # a payload over the frame limit may not fit the dead-letter topic: dropped
        drop = [("payload_dropped", str(len(v)))] if v and len(v) > MAX_FRAME_BYTES else []
        hs = list(msg.headers() or []) + [
            ("reason", reason), ("reason_detail", detail), ("source_topic", msg.topic()),
            ("source_partition", str(msg.partition())), ("source_offset", str(msg.offset())), ("worker", self.worker)]
        self.dead += 1
        self.producer.produce(self.a.dlq_topic, key=msg.key(), value=None if drop else v, headers=hs + drop,
                              on_delivery=cb)

    def decode(self, f):
        """Decodes at the reduction the frame's detectors allow; their input tensors."""
        models = list({RULES[r]["detector"]: self.models[RULES[r]["detector"]] for r in f["rules"]}.values())
        if not models:
            return f  # observed, not judged: not decoded
        t0 = time.perf_counter()  # the reduction the detectors' inputs allow (the frame's size is in its header)
        factor = geometry.reduction_factor(f["width"], f["height"], max(m.w for m in models),
                                           max(m.h for m in models))
        img = cv2.imdecode(np.frombuffer(f["msg"].value(), np.uint8), geometry.reduced_flag(factor))
        if img is None:
            raise Reject("decode_failed", "opencv could not decode the JPEG data")
        t1 = time.perf_counter()
        f["tensors"], f["used"] = [(m.name, m.preprocess(img)) for m in models], [m.name for m in models]
        t2 = time.perf_counter()
        f.update(image=img, decode_ms=(t1 - t0) * 1e3, preprocess_ms=(t2 - t1) * 1e3, ready=t2)
        return f

    def batch(self, msgs):
        arrived, frames = time.perf_counter(), []
        for msg in msgs:
            cb = self.track(msg)
            try:
                meta = intake(msg)
            except Reject as r:
                self.dead_letter(msg, cb, *r.args)
                continue
            frames.append(dict(meta, msg=msg, cb=cb, arrived=arrived, tensors=[], image=None, decode_ms=0.0,
                               preprocess_ms=0.0, crop_ms=0.0, stages=[], used=[], dets={}, kept={}, scores={},
                               rules=rules_for(ASSIGN, meta)))
        decoded = []
        for f, job in [(f, self.pool.submit(self.decode, f)) for f in frames]:
            try:
                decoded.append(job.result())
            except (Reject, cv2.error) as e:
                self.dead_letter(f["msg"], f["cb"], *(e.args if isinstance(e, Reject) else ("decode_failed", str(e))))
        frames = decoded
        for name in dict.fromkeys(n for f in frames for n, _ in f["tensors"]):  # each detector once
            items = [(f, t) for f in frames for n, t in f["tensors"] if n == name]
            start = time.perf_counter()
            dets = self.models[name].detect([t for _, t in items])
            ms = (time.perf_counter() - start) * 1e3
            for (f, _), d in zip(items, dets):
                f["dets"][name] = d
                f["stages"].append(dict(model=name, inference_ms=ms, batch_size=len(items),
                                        batch_wait_ms=max(0.0, (start - f["ready"]) * 1e3)))
        crops, awaits = {}, []  # classifier -> [(frame, rule, i, track, tensor, queued)]; (frame, rule, i, track)
        for f in frames:  # in read order, for the tracks
            for r in f["rules"]:
                rule, det, (h, w) = RULES[r], self.models[RULES[r]["detector"]], f["image"].shape[:2]
                ds = [(c, s, to_image(b, w, h, det) if det.letterbox else b) for c, s, b in f["dets"][det.name]]
                classes = [det.labels.index(c) for c in rule["classes"]] if rule.get("classes") else None
                kept = [d for d in ds if (classes is None or d[0] in classes) and d[1] >= F32(rule["min_score"])
                        and min((d[2][2] - d[2][0]) * F32(w), (d[2][3] - d[2][1]) * F32(h)) >= rule["min_box"]]
                f["kept"][r] = kept = sorted(kept, key=lambda d: -d[1])[:rule["max_detections"]]  # cascade::select
                if not rule["classifier"]:
                    continue
                t0, cls = time.perf_counter(), self.models[rule["classifier"]]
                plans = self.tracker.plan((f["site"], f["camera"], r), f["captured_at_ms"],
                                          [d[2].tolist() for d in kept])
                for i, (d, (what, t)) in enumerate(zip(kept, plans)):
                    if what == "reuse":
                        f["scores"][(r, i)] = t["scores"]
                    elif what == "await":
                        awaits.append((f, r, i, t))
                    else:
                        x, y, cw, ch = crop_rect(d[2], rule["margin"], w, h)
                        tensor = cls.preprocess(f["image"][y:y + ch, x:x + cw])
                        crops.setdefault(cls.name, []).append((f, r, i, t, tensor, time.perf_counter()))
                f["crop_ms"] += (time.perf_counter() - t0) * 1e3
        for name, items in crops.items():  # each classifier once on all its crops
            start = time.perf_counter()
            out = self.models[name].run([it[4] for it in items]).astype(F32)
            ms = (time.perf_counter() - start) * 1e3
            for (f, r, i, t, _, queued), s in zip(items, out):
                f["scores"][(r, i)] = [float(v) for v in s]
                self.tracker.scored(t, f["scores"][(r, i)])
                f["used"] += [] if name in f["used"] else [name]
                f["stages"].append(dict(model=name, inference_ms=ms, batch_size=len(items),
                                        batch_wait_ms=max(0.0, (start - queued) * 1e3)))
        for f, r, i, t in awaits:
            if t["scores"] is not None:
                f["scores"][(r, i)] = t["scores"]
        for f in frames:
            self.publish(f)

    def publish(self, f):
        """src/infer/observe.rs finish and src/infer/cascade.rs verdicts: the observation."""
        rules, detections = [], []

        def detection(r, det, s, b, classifier, label, scores):
            detections.append(dict(rule=r, detector=det.name, score=float(s), bbox=b.tolist(),
                                   classifier=classifier, label=label, scores=scores))
        for r in f["rules"]:
            rule, det, kept = RULES[r], self.models[RULES[r]["detector"]], f["kept"][r]
            if not rule["classifier"]:  # presence: a kept detection is the violation
                for c, s, b in kept:
                    label = det.labels[c] if c < len(det.labels) else f"class_{c}"
                    detection(r, det, s, b, "", label, {label: float(s)})
                rules.append(dict(rule=r, verdict="violation" if kept else "compliant", reason=None,
                                  level=1.0 if kept else 0.0, detections=len(kept)))
                continue
            cls, shares = self.models[rule["classifier"]], []  # (unjudged share, violation share) per crop
            viol = [cls.labels.index(v) for v in rule["violation"]]  # unjudged: if the model has them
            unjudged = [cls.labels.index(v) for v in rule.get("unjudged", []) if v in cls.labels]
            for i, (c, s, b) in enumerate(kept):
                sc = f["scores"].get((r, i))
                if sc is None:
                    continue
                detection(r, det, s, b, cls.name, cls.labels[int(np.argmax(sc))], dict(zip(cls.labels, sc)))
                shares.append((share(sc, unjudged), share(sc, viol)))
            judged = [v for u, v in shares if u <= 0.5]  # a crop whose unjudged labels outweigh the rest: left out
            if judged:  # a crop violates when its violation labels outweigh the others
                rules.append(dict(rule=r, verdict="violation" if max(judged) > 0.5 else "compliant",
                                  reason=None, level=max(judged), detections=len(shares)))
            else:
                rules.append(dict(rule=r, verdict="unknown", reason="not_judgeable" if shares else "no_detection",
                                  level=None, detections=len(shares)))
        msg, img = f["msg"], f["image"]
        obs = dict(
            camera=f["camera"], site=f["site"], zone=f["zone"], captured_at_ms=f["captured_at_ms"], seq=f["seq"],
            frame=dict(width=f["width"], height=f["height"], decoded_width=0 if img is None else img.shape[1],
                       decoded_height=0 if img is None else img.shape[0]),
            rules=rules, detections=detections, classifications=[],
            models=[dict(name=n, version=self.models[n].version, provider=self.models[n].provider) for n in f["used"]],
            timings=dict(decode_ms=f["decode_ms"], preprocess_ms=f["preprocess_ms"], crop_ms=f["crop_ms"],
                         stages=f["stages"], total_ms=(time.perf_counter() - f["arrived"]) * 1e3),
            source=dict(topic=msg.topic(), partition=msg.partition(), offset=msg.offset()),
            worker=self.worker, processed_at_ms=int(time.time() * 1000))
        fastavro.schemaless_writer(buf := io.BytesIO(), self.schema, obs)
        self.producer.produce(self.a.observations_topic, key=f["camera"].encode(),
                              value=self.header + buf.getvalue(), on_delivery=f["cb"])
        self.observed += 1

    def loop(self):
        while not self.stop and self.fatal is None:
            msgs = self.consumer.consume(num_messages=self.a.max_batch, timeout=0.02)
            for m in [m for m in msgs if m.error()]:
                sys.stderr.write(f"pipeline: consumer: {m.error()}\n")
            if [m for m in msgs if not m.error()]:
                self.batch([m for m in msgs if not m.error()])
            self.producer.poll(0)
        self.commit()
        self.consumer.close()
        if self.fatal:
            sys.exit(f"pipeline: {self.fatal}; the offsets of frames not acknowledged were not stored")

def serve(p, port):
    """/metrics (process CPU, as the load tool reads it from a worker), /healthz, /readyz."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            t = os.times()
            body, code = {
                "/metrics": (f"# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "
                             f"{t.user + t.system:.3f}\n# TYPE pipeline_observations_total counter\n"
                             f"pipeline_observations_total {p.observed}\n# TYPE pipeline_dead_letters_total "
                             f"counter\npipeline_dead_letters_total {p.dead}\n", 200),
                "/healthz": ("ok\n", 200),
                "/readyz": ("ready\n", 200) if p.ready else ("starting\n", 503),
            }.get(self.path, ("not found\n", 404))
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
        log_message = lambda *_: None  # noqa: E731 (quiet)

    threading.Thread(target=ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever, daemon=True).start()

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default=os.environ.get("VIGIL_BROKERS", "127.0.0.1:9092"))
    ap.add_argument("--group", default="vigil-python")
    ap.add_argument("--frames-topic", default="vigil.frames")
    ap.add_argument("--observations-topic", default="vigil.observations.py")
    ap.add_argument("--dlq-topic", default="vigil.dlq")
    ap.add_argument("--model-dir", default=os.path.join(ROOT, "models"))
    ap.add_argument("--rules", help="a rules file, as `vigil worker --rules` (default: the worker's built-in rules)")
    ap.add_argument("--max-batch", type=int, default=16, help="records per poll (the detectors' batch)")
    ap.add_argument("--intra-threads", type=int, default=0, help="ONNX Runtime threads per operator (0: its default)")
    ap.add_argument("--ort-spinning", choices=["true", "false"], default="false",
                    help="let ONNX Runtime's idle threads spin (vigil's default: false)")
    ap.add_argument("--decode-threads", type=int, default=0, help="decode thread pool size (0: CPU count)")
    ap.add_argument("--reclassify-every", type=int, default=1,
                    help="classify a still detection's crop every this many frames (1, the worker's default: every frame)")
    ap.add_argument("--worker-id", help="written into observations (default: python-PID)")
    ap.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on 127.0.0.1")
    a = ap.parse_args()
    global RULES, ASSIGN
    if a.rules:
        RULES, ASSIGN = load_rules(a.rules)
    a.ort_spinning = a.ort_spinning == "true"
    if a.max_batch < 1:
        ap.error("--max-batch must be at least 1")
    p = Pipeline(a)
    for s in (signal.SIGTERM, signal.SIGINT):  # finish the batch, flush, commit, leave the group
        signal.signal(s, lambda *_: setattr(p, "stop", True))
    if a.metrics_port:
        serve(p, a.metrics_port)
    sys.stderr.write(f"pipeline: {p.worker} reading {a.frames_topic} as group {a.group}; models "
                     + ", ".join(f"{m.name} {m.version}" for m in p.models.values()) + "\n")
    p.loop()

if __name__ == "__main__":
    main()
