#!/usr/bin/env python3
"""Load tool: drives a vigil deployment with simulated cameras and reports what came out.

It publishes camera frames with `vigil gateway` (cameras staggered evenly, 1280 px wide by
default) either at a fixed total rate for a while, or as a backlog published before any is
judged, reads the observations back with `vigil tail --json`, and reports:

- throughput: observations per second between the first and the last observation;
- latency from each frame's `captured_at` to its observation (`processed_at`), p50/p90/p99/max,
  for judged frames and for all (frames skipped by load shedding are reported apart);
- CPU use of the workers, from their `/metrics` (`process_cpu_seconds_total`), in cores.

Point it at any deployment (`--brokers`, topics, `-X` properties through VIGIL_KAFKA_* env);
or give `--local N` to start a broker and N release-build workers itself, with `--worker-arg`
passed to each. Each run's cameras carry a run-unique id prefix, so earlier records in the
topics are ignored.

    scripts/load.py --local 1 --backlog 400 --cameras 50          # maximum: drain a backlog
    scripts/load.py --local 1 --rate 12 --seconds 60 --cameras 50  # latency at a steady rate
    scripts/load.py --brokers HOST:9092 --metrics-url http://w1:9100/metrics --rate 20

Uses only the standard library (run it with any Python 3.9+).
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentile(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(q / 100.0 * (len(xs) - 1)))))
    return xs[i]


def cpu_seconds(url):
    """process_cpu_seconds_total of one worker, or None when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(r"^process_cpu_seconds_total\s+(\S+)", text, re.M)
    return float(m.group(1)) if m else None


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Local:
    """A broker and N workers on this machine, stopped on exit."""

    def __init__(self, vigil, workers, worker_args, partitions):
        self.dir = tempfile.mkdtemp(prefix="vigil-load.")
        out = subprocess.run([os.path.join(ROOT, "scripts/broker.sh"), "start", self.dir,
                              str(partitions)], check=True, capture_output=True, text=True).stdout
        self.brokers = re.search(r"VIGIL_BROKERS=(\S+)", out).group(1).strip("'\"")
        self.procs, self.metrics = [], []
        for i in range(workers):
            port = free_port()
            self.metrics.append(f"http://127.0.0.1:{port}/metrics")
            log = open(os.path.join(self.dir, f"worker{i}.log"), "w")
            self.procs.append(subprocess.Popen(
                [vigil, "worker", "--brokers", self.brokers, "--group", "load",
                 "--metrics-addr", f"127.0.0.1:{port}", *worker_args],
                stdout=log, stderr=log))
        deadline = time.time() + 120
        while time.time() < deadline:
            if all(ready(u.replace("/metrics", "/readyz")) for u in self.metrics):
                return
            if any(p.poll() is not None for p in self.procs):
                raise SystemExit(f"load: a worker exited; see {self.dir}/worker*.log")
            time.sleep(0.5)
        raise SystemExit("load: workers not ready within 120 s")

    def close(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([os.path.join(ROOT, "scripts/broker.sh"), "stop", self.dir],
                       capture_output=True)


def ready(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target/release/vigil"))
    ap.add_argument("--brokers", default=os.environ.get("VIGIL_BROKERS"))
    ap.add_argument("--frames-topic", default="vigil.frames")
    ap.add_argument("--observations-topic", default="vigil.observations")
    ap.add_argument("--metrics-url", action="append", default=[],
                    help="a worker's /metrics, for its CPU use (repeat per worker)")
    ap.add_argument("--local", type=int, metavar="N",
                    help="start a broker and N workers here (release build)")
    ap.add_argument("--worker-arg", action="append", default=[],
                    help="extra argument for --local workers (repeat)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--cameras", type=int, default=50)
    ap.add_argument("--rate", type=float, help="frames per second, all cameras together")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--backlog", type=int, help="publish this many frames, then measure the drain")
    ap.add_argument("--source", default=os.path.join(ROOT, "tests/data/faces"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--zone", default="kitchen")
    ap.add_argument("--moving", action="store_true",
                    help="cameras step through the images (default: each shows one still scene)")
    ap.add_argument("--idle-secs", type=float, default=60)
    ap.add_argument("--json", help="write the report here too")
    a = ap.parse_args()
    if (a.rate is None) == (a.backlog is None):
        ap.error("give exactly one of --rate or --backlog")
    local = None
    if a.local and a.backlog:
        # A backlog measures the most a worker judges: nothing may be shed.
        a.worker_arg.append("--max-staleness-secs=0")
    if a.local:
        local = Local(a.vigil, a.local, a.worker_arg, a.partitions)
        a.brokers, a.metrics_url = local.brokers, a.metrics_url + local.metrics
    if not a.brokers:
        ap.error("--brokers (or VIGIL_BROKERS) is required without --local")
    try:
        report = run(a)
    finally:
        if local:
            local.close()
    print(json.dumps(report, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)


def run(a):
    prefix = f"load{os.getpid()}-{int(time.time()) % 100000}-"
    if a.backlog:
        per_camera = max(1, a.backlog // a.cameras)
        fps = 1000.0  # as fast as the gateway can publish
    else:
        per_camera = max(1, int(round(a.rate * a.seconds / a.cameras)))
        fps = a.rate / a.cameras
    expected = per_camera * a.cameras
    env = dict(os.environ, VIGIL_BROKERS=a.brokers)
    # The reader starts first and reads from the beginning; this run's cameras are picked out
    # by their prefix.
    tail = subprocess.Popen([a.vigil, "tail", "--topic", a.observations_topic, "--json",
                             "--idle-secs", str(a.idle_secs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    obs = []

    def read():
        for line in tail.stdout:
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if o.get("camera", "").startswith(prefix):
                o["_seen"] = time.time()
                obs.append(o)
                if len(obs) >= expected:
                    tail.terminate()
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    cpu0 = [cpu_seconds(u) for u in a.metrics_url]
    t0 = time.time()
    gateway = [a.vigil, "gateway", "--frames-topic", a.frames_topic, "--source", a.source,
               "--loop", "--cameras", str(a.cameras), "--fps", f"{fps:.6f}",
               "--frames", str(per_camera), "--width", str(a.width), "--zones", a.zone,
               "--camera-prefix", prefix] + ([] if a.moving else ["--still"])
    sys.stderr.write(f"load: publishing {expected} frames from {a.cameras} cameras"
                     + (" as a backlog\n" if a.backlog else f" at {a.rate} frames/s\n"))
    subprocess.run(gateway, env=env, check=True, stderr=subprocess.DEVNULL)
    published = time.time()
    reader.join()
    tail.wait()
    t1 = time.time()
    cpu1 = [cpu_seconds(u) for u in a.metrics_url]
    if len(obs) < expected:
        sys.stderr.write(f"load: only {len(obs)} of {expected} observations arrived\n")
    skipped = [o for o in obs
               if o["rules"] and all(r.get("reason") == "skipped_stale" for r in o["rules"])]
    judged = [o for o in obs if o not in skipped] if skipped else obs
    lat = lambda xs: [(o["processed_at_ms"] - o["captured_at_ms"]) / 1000.0 for o in xs]

    def summary(xs):
        v = lat(xs)
        return {"frames": len(v), **{f"p{q}": percentile(v, q) for q in (50, 90, 99)},
                "max": max(v) if v else None}

    def breakdown(xs):
        """Where a judged frame's time goes, medians in ms: before the worker's stages (broker,
        consumer, intake queue), decode and preprocess, and per model the wait for its batch
        (queue) and the run's cost per item (compute)."""
        med = lambda v: round(percentile(v, 50), 2) if v else None
        t = [o["timings"] for o in xs]
        out = {
            "capture_to_observation": med([o["processed_at_ms"] - o["captured_at_ms"] for o in xs]),
            "before_stages": med([o["processed_at_ms"] - o["captured_at_ms"] - x["total_ms"]
                                  for o, x in zip(xs, t)]),
            "in_stages": med([x["total_ms"] for x in t]),
            "decode": med([x["decode_ms"] for x in t]),
            "preprocess": med([x["preprocess_ms"] for x in t]),
            "crops": med([x["crop_ms"] for x in t]),
        }
        models = sorted({s["model"] for x in t for s in x["stages"]})
        for m in models:
            st = [s for x in t for s in x["stages"] if s["model"] == m]
            out[f"{m}: batch wait"] = med([s["batch_wait_ms"] for s in st])
            out[f"{m}: compute per item"] = med([s["inference_ms"] / max(1, s["batch_size"]) for s in st])
            out[f"{m}: batch size"] = med([s["batch_size"] for s in st])
        return out

    first = min((o["processed_at_ms"] for o in obs), default=0) / 1000.0
    last = max((o["processed_at_ms"] for o in obs), default=0) / 1000.0
    cameras_judged = len({o["camera"] for o in judged})
    cpu = [None if (x is None or y is None) else round((y - x) / (t1 - t0), 2)
           for x, y in zip(cpu0, cpu1)]
    return {
        "mode": "backlog" if a.backlog else "rate",
        "offered_frames_per_s": None if a.backlog else a.rate,
        "cameras": a.cameras,
        "frames_published": expected,
        "observations": len(obs),
        "publish_seconds": round(published - t0, 2),
        "throughput_frames_per_s": round((len(obs) - 1) / (last - first), 2) if last > first else None,
        "latency_s_judged": summary(judged),
        "latency_s_all": summary(obs),
        "skipped_stale": len(skipped),
        "cameras_judged": cameras_judged,
        "worker_cpu_cores": cpu,
        "breakdown_ms": breakdown(judged),
    }


if __name__ == "__main__":
    main()
