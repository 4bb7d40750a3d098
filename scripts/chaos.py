#!/usr/bin/env python3
"""The chaos scenario of issue 32: real cameras' frames, a consumer group of two vigil workers
SIGKILLed in turn, the broker stopped and restarted, then a comparison with one undisturbed
worker on the same frames.

    scripts/chaos.py                 # real time: frames stamped when sent (about 7 minutes)
    scripts/chaos.py --backlog       # the same footage stamped an hour ago (about 5 minutes)

Everything is real and local: the `nisshi` broker (a private one, on a free loopback port, its
data in a temporary folder removed at the end), `target/release/vigil worker` with the shipped
defaults (only brokers, topics, group, worker id and metrics address are passed), and
confluent-kafka and fastavro from `.venv` as the outside producer and reader. Build first with
`cargo build --release`; the script re-runs itself under `.venv/bin/python` when needed.

Real time (the default). `--cameras` cameras (16) each send one photo every `--interval`
seconds (2) for `--duration` seconds (210), `captured_at` = the moment it is sent. A third of the
cameras show a bare face throughout (a persistent violation), a third a bare face that is masked
after 20-40 % of the scene (a flip: one episode, opened then resolved), the rest masked faces
(compliant). The photos are tests/data/faces and their masked copies tests/data/masked.
Meanwhile two workers of one group judge them; every `--kill-every` seconds (10) one of them, in
turn, is SIGKILLed and started again, and the broker is stopped (`--broker-signal`, SIGTERM by
default) for 5 s, later 15 s and later 30 s (counted from the broker's exit) and restarted on the
same port and data. The kills go on during outages, so workers also start while the broker is
away (a worker waits for it); `--spare-outages` kills none from 2 s before an outage to 10 s
after its planned end. After the scene the script waits until every frame has an outcome, stops
the workers with SIGTERM and starts the reference: one worker in a fresh group, writing to topics
of its own, with `--max-staleness-secs 0`. It replays frames that are minutes old by then, so
without that flag it would shed them; with it, it judges every frame.

Backlog (`--backlog`). The same footage stamped one hour in the past, published in `--bursts`
bursts (8), each at once, one per kill interval, so that restarts land while the backlog drains
(`--bursts 1`: all at once); the chaos group judges it under SIGKILLs and one broker restart
(15 s). The reference is an undisturbed worker with the shipped defaults on the same frames.
Load shedding keeps one judged frame per camera per hour of footage, so both must judge the same
frames and give the same (here: no) events.

Checks (printed as a table; exit code 1 if any fails):
  - no chaos worker exited on its own (not killed by the script); its log tail is printed;
  - the frames topic holds every frame sent, once;
  - every frame has an outcome (an observation or a dead letter), and none has both;
  - no frame was judged in one observation and skipped as stale in another;
  - per camera, the distinct events (by event_id) of the chaos group equal the reference's;
  - real time: the reference judged every frame, and the episodes of each camera match its
    footage (one opened for a persistent violation, one opened and resolved for a flip, none for
    a compliant camera), for the chaos group and for the reference;
  - backlog: per camera, the frames judged (not `skipped_stale`) equal the reference's.
Noted without failing: whether an event_id carries the same content (frame counts, levels)
everywhere, frames skipped as stale, the judging lag, and the workers' warnings and errors.
"""
import argparse
import heapq
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")

try:
    from confluent_kafka import Producer

    from vigil_tools.topics import TopicReader, avro_reader
except ImportError:
    # .venv/bin/python may be a link to this very interpreter: tell them apart by sys.prefix.
    venv = os.path.dirname(os.path.dirname(VENV_PY))
    if os.path.exists(VENV_PY) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(VENV_PY, [VENV_PY, os.path.abspath(__file__)] + sys.argv[1:])
    sys.exit("chaos.py needs .venv (confluent-kafka, fastavro, vigil_tools): run scripts/bootstrap.sh")

# Photos whose faces the shipped rules judge reliably: bare -> violation, masked -> compliant.
PHOTOS = ["grace_hopper.jpg", "sample1.jpg", "sample2.jpg", "sample3.jpg", "sample4.jpg",
          "sample5.jpg", "sample6.jpg"]
TOPICS = ["frames", "observations", "dlq", "violations", "state"]
T_START = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"(no log: {e})"


# ----------------------------------------------------------------------------------------------
# Processes: the broker and the workers


class Broker:
    """A nisshi broker on a fixed loopback port, its SQLite data in DIR; stop and start keep both."""

    def __init__(self, nisshi, data_dir):
        self.nisshi, self.dir = nisshi, data_dir
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.url = f"tcp://{self.addr}"
        self.proc = None
        self.log = os.path.join(data_dir, "broker.log")

    def start(self):
        log = open(self.log, "a")
        # nisshi reads sqlite://PATH relative to its working directory.
        self.proc = subprocess.Popen(
            [self.nisshi, "broker", "--listener-url", self.url, "--advertised-listener-url",
             self.url, "--storage-engine", "sqlite://broker.db"],
            cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited {self.proc.returncode}; log:\n{tail(self.log)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"broker did not listen on {self.addr}; log:\n{tail(self.log)}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def create_topics(self, prefix, partitions):
        for t in TOPICS:
            config = []
            if t == "state":
                config = ["--config", "cleanup.policy=compact"]
            elif t in ("frames", "dlq"):
                config = ["--config", "max.message.bytes=4456448"]
            subprocess.run([self.nisshi, "topic", "create", "--broker", self.url, "--partitions",
                            str(partitions), *config, "--silent", f"{prefix}.{t}"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Worker:
    """One `vigil worker` slot; each start is a new incarnation (worker id NAME.N, log NAME.N.log)."""

    def __init__(self, vigil, name, brokers, group, topics, log_dir, extra=()):
        self.vigil, self.name, self.brokers, self.group = vigil, name, brokers, group
        self.topics, self.log_dir, self.extra = topics, log_dir, list(extra)
        self.incarnation = 0
        self.proc = None
        self.metrics = None
        self.exits = []  # (worker id, exit code, log path) of exits the script did not cause

    @property
    def wid(self):
        return f"{self.name}.{self.incarnation}"

    @property
    def log(self):
        return os.path.join(self.log_dir, f"{self.wid}.log")

    def start(self):
        self.incarnation += 1
        self.metrics = f"127.0.0.1:{free_port()}"
        cmd = [self.vigil, "worker", "--brokers", self.brokers, "--group", self.group,
               "--worker-id", self.wid, "--metrics-addr", self.metrics]
        for t in TOPICS:
            cmd += [f"--{t}-topic", self.topics[t]]
        cmd += self.extra
        if self.incarnation == 1:
            shown = [os.path.relpath(c, ROOT) if c == self.vigil else c for c in cmd]
            say(f"{self.name}: {shlex.join(shown)}")
        log = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def check(self):
        """Records (and reports) an exit the script did not cause, and starts the worker again."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            self.exits.append((self.wid, code, self.log))
            say(f"!! {self.wid} EXITED ON ITS OWN with code {code}; log tail:\n{tail(self.log)}")
            self.proc = None
            self.start()
            say(f"   started {self.wid} in its place")

    def kill(self):
        self.check()
        pid = self.proc.pid
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        return pid

    def terminate(self, timeout=30):
        """SIGTERM; returns the exit code (None if it had to be killed)."""
        self.check()
        p = self.proc
        self.proc = None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return None

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://{self.metrics}/readyz", timeout=2) as r:
                return f"{r.status} {r.read().decode().strip()}"
        except urllib.error.HTTPError as e:
            return f"{e.code} {e.read().decode().strip()}"
        except OSError as e:
            return f"no answer ({e.__class__.__name__})"


# ----------------------------------------------------------------------------------------------
# Footage and the producer


def footage(n_cameras, duration, interval, seed):
    """Cameras: (camera, site, kind, photo, flip_at_secs) with kind violation|flip|compliant."""
    rng = random.Random(seed)
    third = n_cameras // 3
    kinds = ["violation"] * third + ["flip"] * third + ["compliant"] * (n_cameras - 2 * third)
    rng.shuffle(kinds)
    cams = []
    for i, kind in enumerate(kinds):
        flip_at = round(rng.uniform(0.2, 0.4) * duration, 1) if kind == "flip" else None
        cams.append((f"cam-{i:02d}", f"site-{i % 2 + 1:02d}", kind, rng.choice(PHOTOS), flip_at))
    return cams


def photo(kind, name, t, flip_at):
    bare = kind == "violation" or (kind == "flip" and t < flip_at)
    folder = "faces" if bare else "masked"
    with open(os.path.join(ROOT, "tests", "data", folder, name), "rb") as f:
        return f.read(), "V" if bare else "C"


class Publisher:
    """The cameras: an idempotent confluent-kafka producer, frames with the contract's headers."""

    def __init__(self, brokers, topic):
        self.topic = topic
        self.errors = []
        self.client_errors = 0
        self.sent = {}  # (camera, seq) -> frame dict
        self.acked = 0
        self.acked_no_offset = 0  # acknowledged as a duplicate of a retried batch: offset unknown
        self.lock = threading.Lock()
        self.producer = Producer({
            "bootstrap.servers": brokers, "enable.idempotence": True,
            "message.max.bytes": 10_000_000, "linger.ms": 5, "log_level": 2,
            "error_cb": self._error})

    def _error(self, err):
        self.client_errors += 1  # broker down: librdkafka retries; delivery reports tell losses

    def send(self, cam, site, seq, captured_at, jpeg, script):
        frame = {"camera": cam, "site": site, "seq": seq, "captured_at": captured_at,
                 "script": script}

        def delivered(err, msg):
            with self.lock:
                if err is not None:
                    self.errors.append(f"{cam}/{seq}: {err}")
                else:
                    self.acked += 1
                    self.acked_no_offset += msg.offset() < 0

        headers = [("site", site), ("camera", cam), ("captured_at", str(captured_at)),
                   ("seq", str(seq)), ("zone", "kitchen")]
        while True:
            try:
                self.producer.produce(self.topic, key=cam, value=jpeg, headers=headers,
                                      on_delivery=delivered)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.sent[(cam, seq)] = frame
        self.producer.poll(0)

    def flush(self, timeout=120):
        left = self.producer.flush(timeout)
        if left:
            self.errors.append(f"{left} frames still undelivered after {timeout} s")


def publish_real_time(pub, cams, duration, interval, t0, stop):
    """Each camera sends a frame every `interval` s, staggered, captured_at = when sent."""
    n = len(cams)
    per_cam = int(duration / interval)
    cache = {}
    for k in range(per_cam):
        for i, (cam, site, kind, name, flip_at) in enumerate(cams):
            due = t0 + k * interval + i * interval / n
            while (d := due - time.monotonic()) > 0:
                if stop.wait(min(d, 0.2)):
                    return
                pub.producer.poll(0)
            key = (kind, name, k * interval < flip_at if flip_at else None)
            if key not in cache:
                cache[key] = photo(kind, name, k * interval, flip_at)
            jpeg, script = cache[key]
            pub.send(cam, site, k, int(time.time() * 1000), jpeg, script)


def publish_backlog(pub, cams, duration, interval, base_ms, bursts, t0, burst_every, stop):
    """The same footage stamped from base_ms, in `bursts` parts each sent at once."""
    n = len(cams)
    per_cam = int(duration / interval)
    bounds = [round(j * per_cam / bursts) for j in range(bursts + 1)]
    cache = {}
    for j in range(bursts):
        due = t0 + j * burst_every
        while (d := due - time.monotonic()) > 0:
            if stop.wait(min(d, 0.2)):
                return
            pub.producer.poll(0)
        for k in range(bounds[j], bounds[j + 1]):
            for i, (cam, site, kind, name, flip_at) in enumerate(cams):
                key = (kind, name, k * interval < flip_at if flip_at else None)
                if key not in cache:
                    cache[key] = photo(kind, name, k * interval, flip_at)
                jpeg, script = cache[key]
                captured = base_ms + int((k * interval + i * interval / n) * 1000)
                pub.send(cam, site, k, captured, jpeg, script)
        say(f"backlog burst {j + 1}/{bursts}: frames {bounds[j]}..{bounds[j + 1] - 1} of every camera sent")


# ----------------------------------------------------------------------------------------------
# Reading outcomes


def read_frames(brokers, topic, sent):
    """(partition, offset) -> the sent frame, for every record of the frames topic; and the
    records that are not exactly one sent frame (duplicates, strangers)."""
    reader = TopicReader(brokers, topic)
    msgs, _ = reader.catch_up(timeout=120)
    reader.close()
    frames, extra, seen = {}, [], set()
    for m in msgs:
        h = {k: v.decode(errors="replace") for k, v in (m.headers() or [])}
        key = (h.get("camera"), int(h.get("seq", -1)))
        if key in sent and key not in seen:
            seen.add(key)
            frames[(m.partition(), m.offset())] = sent[key]
        else:
            extra.append((m.partition(), m.offset(), key))
    return frames, extra


class Outcomes:
    """Every outcome of one group's output topics, per frame (partition, offset)."""

    def __init__(self, brokers, prefix):
        self.obs = TopicReader(brokers, f"{prefix}.observations")
        self.dlq = TopicReader(brokers, f"{prefix}.dlq")
        self.ev = TopicReader(brokers, f"{prefix}.violations")
        self.read_obs, self.read_ev = avro_reader("observation.avsc"), avro_reader("violation_event.avsc")
        self.observations = {}  # (p, o) -> [observation]
        self.dead = {}  # (p, o) -> [reason]
        self.events = []  # every event record, in read order

    def update(self):
        for m in self.obs.catch_up()[0]:
            o = self.read_obs(m.value())
            self.observations.setdefault((o["source"]["partition"], o["source"]["offset"]), []).append(o)
        for m in self.dlq.catch_up()[0]:
            h = {k: (v or b"").decode(errors="replace") for k, v in (m.headers() or [])}
            self.dead.setdefault((int(h["source_partition"]), int(h["source_offset"])), []).append(
                h.get("reason", "?"))
        for m in self.ev.catch_up()[0]:
            self.events.append(self.read_ev(m.value()))

    def missing(self, frames):
        return [f for f in frames if f not in self.observations and f not in self.dead]

    def wait_complete(self, frames, timeout, label, watch=None):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            self.update()
            missing = self.missing(frames)
            if not missing:
                time.sleep(3)  # events are acknowledged with their frame's observation; settle
                self.update()
                return []
            if time.monotonic() > deadline:
                return missing
            if last is None or time.monotonic() - last > 15:
                say(f"{label}: {len(frames) - len(missing)}/{len(frames)} frames have an outcome")
                last = time.monotonic()
            for w in watch or []:
                w.check()
            time.sleep(2)

    def close(self):
        for r in (self.obs, self.dlq, self.ev):
            r.close()


def skipped(o):
    return bool(o["rules"]) and all(r["reason"] == "skipped_stale" for r in o["rules"])


def distinct_events(events):
    """event_id -> (first record, [worker-independent contents seen])."""
    out = {}
    for e in events:
        content = {k: v for k, v in e.items() if k not in ("worker", "evidence_uri")}
        first, contents = out.setdefault(e["event_id"], (e, []))
        if content not in contents:
            contents.append(content)
    return out


def episodes_of(events, camera):
    eps = {}
    for eid, (e, _) in events.items():
        if e["camera"] == camera:
            eps.setdefault(e["episode_id"], set()).add((e["kind"], e.get("reason")))
    return eps


def footage_matches(kind, eps):
    kinds = [set(k for k, _ in v) for v in eps.values()]
    if kind == "compliant":
        return not eps
    if len(eps) != 1:
        return False
    if kind == "violation":
        return "opened" in kinds[0] and "resolved" not in kinds[0]
    return {"opened", "resolved"} <= kinds[0]


def describe(eps):
    if not eps:
        return "none"
    parts = []
    for ep, ks in eps.items():
        names = sorted(k for k, _ in ks)
        short = "+".join(n for n in ("opened", "updated", "resolved") if n in names)
        reasons = sorted(r for k, r in ks if k == "resolved" and r)
        parts.append(short + (f"({','.join(reasons)})" if reasons else ""))
    return f"{len(eps)}: " + " ".join(parts)


# ----------------------------------------------------------------------------------------------


def load():
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backlog", action="store_true",
                    help="the footage stamped an hour ago, published in bursts (see --bursts)")
    ap.add_argument("--duration", type=float, default=210, help="seconds of footage (210)")
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between a camera's frames")
    ap.add_argument("--seed", type=int, default=32, help="footage: which camera shows what")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--kill-every", type=float, default=10.0, help="seconds between SIGKILLs")
    ap.add_argument("--outages", default=None,
                    help="broker outages as START:SECS,… (seconds into the scene); default real "
                         "time 0.2D:5,0.45D:15,0.7D:30, backlog 0.4 of the chaos:15")
    ap.add_argument("--spare-outages", action="store_true",
                    help="no SIGKILL from 2 s before a broker outage to 10 s after it")
    ap.add_argument("--broker-signal", choices=["term", "kill"], default="term")
    ap.add_argument("--bursts", type=int, default=8, help="backlog: bursts, one per kill interval")
    ap.add_argument("--settle-timeout", type=float, default=180,
                    help="seconds to wait for every frame's outcome, per group")
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target", "release", "vigil"))
    ap.add_argument("--nisshi", default=None)
    ap.add_argument("--logs", default=None, help="copy worker and broker logs to this folder")
    args = ap.parse_args()

    print("command: " + shlex.join(["scripts/chaos.py"] + sys.argv[1:]), flush=True)
    print(f"host: {os.cpu_count()} CPUs, load average {load()} (1/5/15 min): the workers share "
          "them with whatever else runs", flush=True)
    nisshi = args.nisshi or next(
        (p for p in (os.path.join(ROOT, ".tools", "bin", "nisshi"),
                     os.path.expanduser("~/.cache/vigil/nisshi-0.8.1-libsql/bin/nisshi"))
         if os.path.exists(p)), None)
    if not nisshi:
        sys.exit("no nisshi broker: run scripts/bootstrap.sh, or pass --nisshi")
    if not os.path.exists(args.vigil):
        sys.exit(f"no {args.vigil}: run cargo build --release")
    if not args.backlog and args.duration < 125:
        sys.exit("--duration must be at least 125 s: a flip needs about 70 s masked to resolve")

    tmp = tempfile.mkdtemp(prefix="vigil-chaos-")
    # SIGTERM (a CI time-out) cleans up as Ctrl-C does: processes stopped, temp folder removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    procs = []
    try:
        return run(args, nisshi, tmp, procs)
    finally:
        for p in procs:
            if isinstance(p, Worker) and p.proc and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
            elif isinstance(p, Broker):
                p.stop(signal.SIGKILL)
        if args.logs:
            os.makedirs(args.logs, exist_ok=True)
            for root, _, files in os.walk(tmp):
                for f in files:
                    if f.endswith(".log"):
                        shutil.copy(os.path.join(root, f), args.logs)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, nisshi, tmp, procs):
    mode = "backlog" if args.backlog else "real time"
    cams = footage(args.cameras, args.duration, args.interval, args.seed)
    broker_dir = os.path.join(tmp, "broker")
    os.makedirs(broker_dir)
    broker = Broker(nisshi, broker_dir)
    procs.append(broker)
    broker.start()
    broker.create_topics("chaos", args.partitions)
    broker.create_topics("ref", args.partitions)
    say(f"broker {broker.addr} (data in {broker_dir}); topics chaos.* and ref.*, "
        f"{args.partitions} partitions")
    per_cam = int(args.duration / args.interval)
    say(f"mode: {mode}; {args.cameras} cameras x {per_cam} frames (one per {args.interval:g} s, "
        f"{args.duration:g} s of footage), seed {args.seed}")
    for cam, site, kind, name, flip_at in cams:
        extra = f", masked from {flip_at:g} s" if flip_at else ""
        print(f"    {cam} {site} {kind:9} {name}{extra}")

    # The chaos schedule, in seconds from the scene's start.
    sig = signal.SIGKILL if args.broker_signal == "kill" else signal.SIGTERM
    if args.backlog:
        burst_every = args.kill_every
        scene = args.bursts * burst_every + 2 * args.kill_every + 15
        default_outages = f"{0.4 * scene:.0f}:15"
    else:
        scene = args.duration
        d = args.duration
        default_outages = f"{0.2 * d:.0f}:5,{0.45 * d:.0f}:15,{0.7 * d:.0f}:30"
    outages = [tuple(float(x) for x in o.split(":"))
               for o in (args.outages or default_outages).split(",") if o]
    kills = []
    t = args.kill_every
    while t < scene:
        if not (args.spare_outages and any(s - 2 <= t <= s + secs + 10 for s, secs in outages)):
            kills.append(t)
        t += args.kill_every
    say(f"schedule: SIGKILL a worker at {', '.join(f'{k:g}' for k in kills)} s; broker "
        f"{args.broker_signal.upper()} then restart at "
        + ", ".join(f"{s:g} s for {secs:g} s" for s, secs in outages))

    log_dir = os.path.join(tmp, "logs")
    os.makedirs(log_dir)
    group = f"chaos-{args.seed}"
    chaos_topics = {t: f"chaos.{t}" for t in TOPICS}
    workers = [Worker(args.vigil, n, broker.addr, group, chaos_topics, log_dir)
               for n in ("chaos-a", "chaos-b")]
    procs.extend(workers)
    for w in workers:
        w.start()

    pub = Publisher(broker.addr, "chaos.frames")
    stop = threading.Event()
    t0 = time.monotonic() + 3
    if args.backlog:
        base_ms = int(time.time() * 1000) - 3600_000
        target = lambda: publish_backlog(pub, cams, args.duration, args.interval, base_ms,
                                         args.bursts, t0, burst_every, stop)
    else:
        target = lambda: publish_real_time(pub, cams, args.duration, args.interval, t0, stop)
    producer = threading.Thread(target=target, daemon=True)
    producer.start()

    # The scene: kills and outages in time order. An outage lasts SECS from the moment the
    # broker has exited (a SIGTERMed nisshi takes a few seconds to shut down).
    pending = [(k, 0, "kill", None) for k in kills] + [(s, 1, "down", secs) for s, secs in outages]
    heapq.heapify(pending)
    kill_count = {"chaos-a": 0, "chaos-b": 0}
    turn = 0

    def now():
        return time.monotonic() - t0

    while pending:
        at, _, what, secs = heapq.heappop(pending)
        while now() < at:
            for w in workers:
                w.check()
            time.sleep(0.2)
        if what == "kill":
            w = workers[turn % 2]
            turn += 1
            old = w.wid
            pid = w.kill()
            w.start()
            kill_count[w.name] += 1
            say(f"t+{now():5.1f} SIGKILL {old} (pid {pid}); started {w.wid}")
        elif what == "down":
            signalled = now()
            broker.stop(sig)
            say(f"t+{signalled:5.1f} broker {args.broker_signal.upper()}: exited after "
                f"{now() - signalled:.1f} s; down for {secs:g} s")
            heapq.heappush(pending, (now() + secs / 2, 2, "probe", None))
            heapq.heappush(pending, (now() + secs, 1, "up", secs))
        elif what == "up":
            broker.start()
            say(f"t+{now():5.1f} broker restarted on {broker.addr}, same data")
            heapq.heappush(pending, (now() + 20, 2, "probe", None))
        elif what == "probe":
            say(f"t+{now():5.1f} /readyz: " + "; ".join(f"{w.wid} {w.ready()}" for w in workers))
    while time.monotonic() < t0 + scene:
        for w in workers:
            w.check()
        time.sleep(0.2)
    producer.join()
    pub.flush()
    say(f"scene over: {len(pub.sent)} frames sent, {pub.acked} acknowledged "
        f"({pub.acked_no_offset} as duplicates of a retried batch, offset unknown), "
        f"{len(pub.errors)} delivery errors, {pub.client_errors} client errors (broker down)")
    # The frames as the topic holds them: (partition, offset) -> frame (delivery reports can
    # lack the offset, see above).
    frames, extra = read_frames(broker.addr, "chaos.frames", pub.sent)
    say(f"frames topic read back: {len(frames)} frames")

    # Every frame's outcome from the chaos group.
    chaos = Outcomes(broker.addr, "chaos")
    missing = chaos.wait_complete(frames, args.settle_timeout, "chaos group", watch=workers)
    for w in workers:
        w.check()
    final_codes = {w.wid: w.terminate() for w in workers}
    say(f"chaos workers stopped with SIGTERM, exit codes {final_codes}")
    self_exits = [e for w in workers for e in w.exits]


    # The reference: one undisturbed worker, fresh group, its own topics.
    ref_extra = [] if args.backlog else ["--max-staleness-secs", "0"]
    if args.backlog:
        say("reference: one undisturbed worker with the shipped defaults on the same hour-old frames")
    else:
        say("reference: one undisturbed worker with --max-staleness-secs 0: a replay, the frames "
            "are minutes old by now, and the reference must judge them all")
    ref_topics = {t: f"ref.{t}" for t in TOPICS}
    ref_topics["frames"] = "chaos.frames"
    ref_w = Worker(args.vigil, "reference", broker.addr, f"ref-{args.seed}", ref_topics, log_dir,
                   ref_extra)
    procs.append(ref_w)
    ref_w.start()
    ref = Outcomes(broker.addr, "ref")
    ref_missing = ref.wait_complete(frames, args.settle_timeout, "reference", watch=[ref_w])
    ref_code = ref_w.terminate()
    say(f"reference stopped with SIGTERM, exit code {ref_code}")

    ok = report(log_dir, args, cams, frames, extra, pub, chaos, ref, missing, ref_missing, self_exits,
                kill_count, outages, final_codes, ref_w.exits, ref_code)
    chaos.close()
    ref.close()
    return 0 if ok else 1


def log_notes(log_dir):
    """WARN and ERROR lines of the chaos workers' logs, timestamps and colours removed, counted."""
    import re
    counts = {}
    for name in sorted(os.listdir(log_dir)):
        if not name.startswith("chaos-"):
            continue
        for line in open(os.path.join(log_dir, name), errors="replace"):
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            m = re.match(r"\S+\s+(WARN|ERROR)\s+(.*)", line)
            if m:
                msg = re.sub(r"\d+", "N", f"{m.group(1)} {m.group(2)}")[:160]
                counts[msg] = counts.get(msg, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def report(log_dir, args, cams, frames, extra, pub, chaos, ref, missing, ref_missing, self_exits,
           kill_count, outages, final_codes, ref_exits, ref_code):
    checks = []

    def check(name, passed, detail="", hard=True):
        """A check that fails the run, or (hard=False) a note: PASS or DIFF, exit code unchanged."""
        checks.append((name, passed, detail, hard))

    print()
    print("=" * 100)
    mode = "backlog (frames stamped an hour ago)" if args.backlog else "real time"
    print(f"SUMMARY  mode: {mode}; {args.cameras} cameras, {len(frames)} frames; "
          f"SIGKILLs: {sum(kill_count.values())} ({', '.join(f'{k} {v}' for k, v in kill_count.items())}); "
          f"broker {args.broker_signal.upper()}+restart: "
          + ", ".join(f"{secs:g} s" for _, secs in outages))

    by_frame_cam = {f: frames[f]["camera"] for f in frames}

    # Outcomes.
    both = [f for f in frames if f in chaos.observations and f in chaos.dead]
    dlq_reasons = {}
    for f, rs in chaos.dead.items():
        for r in rs:
            dlq_reasons[r] = dlq_reasons.get(r, 0) + 1
    dup_obs = sum(len(v) - 1 for v in chaos.observations.values())
    mixed = [f for f, os_ in chaos.observations.items() if len({skipped(o) for o in os_}) > 1]
    chaos_skipped = sum(1 for f in frames if f in chaos.observations
                        and all(skipped(o) for o in chaos.observations[f]))
    lags = [o["processed_at_ms"] - o["captured_at_ms"] for os_ in chaos.observations.values()
            for o in os_ if not skipped(o)]
    ref_skipped = sum(1 for f in frames if f in ref.observations
                      and all(skipped(o) for o in ref.observations[f]))

    exits_detail = "; ".join(f"{wid} code {code}" for wid, code, _ in self_exits)
    check("no chaos worker exited on its own", not self_exits,
          f"{len(self_exits)} exits" + (f": {exits_detail}" if self_exits else "")
          + f"; final SIGTERM exit codes {final_codes}")
    check("frames topic holds every frame sent, once",
          not pub.errors and not extra and len(frames) == len(pub.sent),
          f"sent {len(pub.sent)}, acknowledged {pub.acked}, in topic {len(frames) + len(extra)}"
          + (f", not sent or twice: {extra[:3]}" if extra else "")
          + (f", errors: {pub.errors[:3]}" if pub.errors else ""))
    def named(fs):
        return ", ".join(f"{frames[f]['camera']}/{frames[f]['seq']} at {f[0]}:{f[1]}" for f in fs[:5])

    check("every frame has an outcome (chaos group)", not missing,
          f"{len(frames) - len(missing)}/{len(frames)}"
          + (f" (none for {named(missing)})" if missing else "") + f"; dead letters {dlq_reasons or 0}; "
          f"repeated observations (at-least-once) {dup_obs}")
    check("no frame has both an observation and a dead letter", not both, f"{len(both)} frames")
    check("no frame both judged and skipped_stale", not mixed,
          f"{len(mixed)} frames" + (f" ({named(mixed)})" if mixed else ""))
    if lags:
        info = (f"chaos: {chaos_skipped} frames skipped_stale; judging lag (processed - captured) "
                f"max {max(lags) / 1000:.1f} s, median {sorted(lags)[len(lags) // 2] / 1000:.1f} s")
    else:
        info = f"chaos: {chaos_skipped} frames skipped_stale"
    check("every frame has an outcome (reference)", not ref_missing and not ref_exits and ref_code == 0,
          f"{len(frames) - len(ref_missing)}/{len(frames)}"
          + (f" (none for {named(ref_missing)})" if ref_missing else "") + f"; reference exit code {ref_code}, "
          f"{len(ref_exits)} exits on its own")
    if not args.backlog:
        check("reference judged every frame (--max-staleness-secs 0)", ref_skipped == 0,
              f"{ref_skipped} skipped_stale")

    # Events.
    ce, re_ = distinct_events(chaos.events), distinct_events(ref.events)
    differ = []
    for cam, *_ in cams:
        a = {k for k, (e, _) in ce.items() if e["camera"] == cam}
        b = {k for k, (e, _) in re_.items() if e["camera"] == cam}
        if a != b:
            differ.append((cam, a - b, b - a))
    check("distinct events per camera: chaos == reference", not differ,
          f"chaos {len(ce)} distinct ({len(chaos.events)} records), reference {len(re_)} distinct "
          f"({len(ref.events)} records); {len(differ)} cameras differ")
    conflicting = [k for k, (_, cs) in ce.items() if len(cs) > 1]
    conflicting += [k for k in ce.keys() & re_.keys()
                    if re_[k][1][0] not in ce[k][1] or ce[k][1][0] not in re_[k][1]]
    check("note: an event_id carries the same content everywhere", not conflicting,
          f"{len(set(conflicting))} event ids with differing contents (frames, levels: frames shed "
          "as stale count as gaps; the README promises equal ids, not equal contents)", hard=False)

    # Footage.
    foot_rows = []
    bad_foot = {"chaos": [], "reference": []}
    for cam, site, kind, name, flip_at in cams:
        ec, er = episodes_of(ce, cam), episodes_of(re_, cam)
        for label, eps in (("chaos", ec), ("reference", er)):
            if not footage_matches(kind, eps):
                bad_foot[label].append(cam)
        foot_rows.append((cam, kind, describe(ec), describe(er)))
    if not args.backlog:
        for label in ("chaos", "reference"):
            check(f"episodes match the footage ({label})", not bad_foot[label],
                  f"cameras off: {', '.join(bad_foot[label]) or 'none'}")

    # Judged frames (backlog).
    judged_differ = []
    if args.backlog:
        for cam, *_ in cams:
            cf = {f for f in frames if by_frame_cam[f] == cam}
            a = {frames[f]["seq"] for f in cf if f in chaos.observations
                 and any(not skipped(o) for o in chaos.observations[f])}
            b = {frames[f]["seq"] for f in cf if f in ref.observations
                 and any(not skipped(o) for o in ref.observations[f])}
            if a != b:
                judged_differ.append((cam, sorted(a), sorted(b)))
        n_judged = sum(1 for f in frames if f in ref.observations
                       and any(not skipped(o) for o in ref.observations[f]))
        check("judged frames per camera: chaos == reference", not judged_differ,
              f"reference judged {n_judged} of {len(frames)}, chaos {len(frames) - chaos_skipped}; "
              f"{len(judged_differ)} cameras differ")

    print(f"info: {info}; host load average at the end {load()} (1/5/15 min)")
    if not args.backlog and frames:
        # When was each frame first observed, by footage time: where the group fell behind.
        start = min(f["captured_at"] for f in frames.values())
        slices = {}
        for f, fr in frames.items():
            os_ = chaos.observations.get(f)
            if not os_:
                continue
            first = min(os_, key=lambda o: o["processed_at_ms"])
            sl = slices.setdefault((fr["captured_at"] - start) // 20_000, [0, 0])
            sl[0] = max(sl[0], first["processed_at_ms"] - fr["captured_at"])
            sl[1] += skipped(first)
        print("chaos judging lag by footage time (max lag s / frames skipped_stale, per 20 s): "
              + ", ".join(f"{k * 20}-{k * 20 + 20}s {v[0] / 1000:.0f}/{v[1]}"
                          for k, v in sorted(slices.items())))
    print()
    print(f"{'camera':8} {'footage':10} {'chaos episodes':34} {'reference episodes':34}")
    for cam, kind, a, b in foot_rows:
        print(f"{cam:8} {kind:10} {a:34} {b:34}")
    for cam, only_c, only_r in differ:
        print(f"\nevents of {cam} differ:")
        for label, ids, src in (("only chaos", only_c, ce), ("only reference", only_r, re_)):
            for k in sorted(ids, key=lambda k: src[k][0]["event_time"]):
                e = src[k][0]
                print(f"  {label:15} {e['kind']:8} event {k[:16]} episode {e['episode_id'][:16]} "
                      f"event_time {e['event_time']} seq {e.get('sequence')} frames {e['frames']} "
                      f"worker {e['worker']}")
    for cam, a, b in judged_differ:
        print(f"\njudged frames of {cam} differ: chaos {a} reference {b}")
    for k in sorted(set(conflicting))[:5]:
        a, b = ce[k][1][0], re_.get(k, (None, [{}]))[1][0]
        fields = {f: (a.get(f), b.get(f)) for f in a if a.get(f) != b.get(f)}
        print(f"\nevent {k} ({a['camera']} {a['kind']} seq {a.get('sequence')}) differs, "
              f"chaos vs reference: {fields}")
    for f in mixed[:5]:
        print(f"\n{frames[f]['camera']}/{frames[f]['seq']} at {f[0]}:{f[1]} (captured "
              f"{frames[f]['captured_at']}) observed as: " + "; ".join(
                  f"{o['worker']} {'skipped_stale' if skipped(o) else 'judged'} at +"
                  f"{(o['processed_at_ms'] - o['captured_at_ms']) / 1000:.1f} s"
                  for o in chaos.observations[f]))
    notes = log_notes(log_dir)
    if notes:
        print("\nwarnings and errors in the chaos workers' logs (count, message):")
        for msg, n in notes[:12]:
            print(f"  {n:4} {msg}")
    for wid, code, log in self_exits:
        print(f"\n{wid} exited with code {code}; log tail:\n{tail(log, 15)}")

    print()
    width = max(len(c[0]) for c in checks)
    print(f"{'check':{width}}  result  detail")
    for name, passed, detail, hard in checks:
        print(f"{name:{width}}  {'PASS' if passed else 'FAIL' if hard else 'DIFF':6}  {detail}")
    ok = all(p for _, p, _, hard in checks if hard)
    print(f"\n{'ALL CHECKS PASS' if ok else 'SOME CHECKS FAIL'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
