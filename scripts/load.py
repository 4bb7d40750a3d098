#!/usr/bin/env python3
"""Load tool: drives a vigil deployment with simulated cameras and reports what came out.

It publishes camera frames with `vigil gateway` (cameras staggered evenly, 1280 px wide by
default) either at a fixed total rate for a while, or as a backlog published before any is
judged, reads the observations back with `vigil tail --json`, and reports:

- throughput: observations per second between the first and the last observation;
- latency from each frame's `captured_at` to its observation (`processed_at`), p50/p90/p99/max,
  for judged frames and for all (frames skipped by load shedding are reported apart);
- CPU use of the workers, from their `/metrics` (`process_cpu_seconds_total`), in cores, and
  the crops they classified or reused (`vigil_crops_total`);
- at a steady rate, latency again without the frames captured in the first `--warmup-secs`;
- where a judged frame's time goes: medians per stage, and the same for the slowest 1 %.

Point it at any deployment (`--brokers`, topics, `-X` properties through VIGIL_KAFKA_* env);
or give `--local N` to start a broker and N release-build workers itself, with `--worker-arg`
passed to each. Each run's cameras carry a run-unique id prefix, so earlier records in the
topics are ignored.

`--local-python N` starts N reference Python pipelines (scripts/pipeline.py, the same job with
the same models, run with .venv's Python; `--python-arg` passed to each) instead of workers.
`--compare` measures both on one broker, vigil's `--local` workers first, then as many Python
pipelines (or `--local-python`) on a frames topic of their own, and reports both and the ratios.
With `--backlog`, `--steady-fraction F` then measures each one's latency at F times its own
measured maximum for `--seconds`.

    scripts/load.py --local 1 --backlog 400 --cameras 50          # maximum: drain a backlog
    scripts/load.py --local 1 --rate 12 --seconds 60 --cameras 50  # latency at a steady rate
    scripts/load.py --brokers HOST:9092 --metrics-url http://w1:9100/metrics --rate 20
    scripts/load.py --local 1 --compare --backlog 400 --steady-fraction 0.8 --seconds 60

Uses only the standard library (run it with any Python 3.9+).
"""
import argparse
import copy
import json
import os
import re
import shutil
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


def scrape(url):
    """A worker's /metrics: (process_cpu_seconds_total or None, {crop outcome: count}), or
    (None, {}) when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None, {}
    m = re.search(r"^process_cpu_seconds_total\s+(\S+)", text, re.M)
    crops = {}
    for outcome, v in re.findall(r'^vigil_crops_total\{[^}]*outcome="(\w+)"[^}]*\}\s+(\S+)', text, re.M):
        crops[outcome] = crops.get(outcome, 0) + float(v)
    return (float(m.group(1)) if m else None), crops


def cpu_seconds(url):
    """process_cpu_seconds_total of one worker, or None when unreachable."""
    return scrape(url)[0]


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Local:
    """A broker on this machine, and the workers (or Python pipelines) started on it, stopped on
    exit."""

    def __init__(self, partitions):
        self.dir = tempfile.mkdtemp(prefix="vigil-load.")
        out = subprocess.run([os.path.join(ROOT, "scripts/broker.sh"), "start", self.dir,
                              str(partitions)], check=True, capture_output=True, text=True).stdout
        self.brokers = re.search(r"VIGIL_BROKERS=(\S+)", out).group(1).strip("'\"")
        self.procs, self.metrics = [], []

    def start(self, n, command, name="worker"):
        """Starts n processes, `command(port)` each (port: its /metrics and /readyz), and waits
        until all are ready."""
        for i in range(n):
            port = free_port()
            self.metrics.append(f"http://127.0.0.1:{port}/metrics")
            log = open(os.path.join(self.dir, f"{name}{i}.log"), "w")
            self.procs.append(subprocess.Popen(command(port), stdout=log, stderr=log))
        deadline = time.time() + 120
        while time.time() < deadline:
            if all(ready(u.replace("/metrics", "/readyz")) for u in self.metrics):
                return
            if any(p.poll() is not None for p in self.procs):
                raise SystemExit(f"load: a {name} exited; see {self.dir}/{name}*.log")
            time.sleep(0.5)
        raise SystemExit(f"load: {name}s not ready within 120 s")

    def workers(self, vigil, n, worker_args):
        self.start(n, lambda port: [vigil, "worker", "--brokers", self.brokers, "--group", "load",
                                    "--metrics-addr", f"127.0.0.1:{port}", *worker_args])

    def pipelines(self, python, n, frames_topic, observations_topic, python_args):
        self.start(n, lambda port: [python, os.path.join(ROOT, "scripts/pipeline.py"),
                                    "--brokers", self.brokers, "--group", "load-python",
                                    "--metrics-port", str(port), "--frames-topic", frames_topic,
                                    "--observations-topic", observations_topic, *python_args],
                   name="pipeline")

    def stop(self):
        """Stops the workers or pipelines (SIGTERM: they drain, commit and leave the group)."""
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs, self.metrics = [], []

    def close(self, keep):
        """Stops everything. The directory (broker data: hundreds of MB per run) is removed
        unless `keep`: after a failure its logs are what tells why."""
        self.stop()
        subprocess.run([os.path.join(ROOT, "scripts/broker.sh"), "stop", self.dir],
                       capture_output=True)
        if keep:
            sys.stderr.write(f"load: logs kept in {self.dir}\n")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


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
    ap.add_argument("--keep", action="store_true",
                    help="with --local: keep the broker's data and the logs (removed after a "
                         "successful run, kept after a failed one)")
    ap.add_argument("--worker-arg", action="append", default=[],
                    help="extra argument for --local workers (repeat)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--cameras", type=int, default=50)
    ap.add_argument("--rate", type=float, help="frames per second, all cameras together")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--backlog", type=int, help="publish this many frames, then measure the drain")
    ap.add_argument("--footage-fps", type=float, metavar="F",
                    help="with --backlog: stamp the frames as footage recorded at F frames/s per "
                         "camera (vigil gateway --footage-fps), so that a rule with its own rate "
                         "(no_animals every 2 s) runs as often as at that camera rate; without it a "
                         "backlog is stamped as published, within seconds, and such a rule looks "
                         "cheaper than it is")
    ap.add_argument("--source", default=os.path.join(ROOT, "tests/data/faces"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--zone", default="kitchen")
    ap.add_argument("--moving", action="store_true",
                    help="cameras step through the images (default: each shows one still scene)")
    ap.add_argument("--idle-secs", type=float, default=60)
    ap.add_argument("--warmup-secs", type=float, default=10,
                    help="at a steady rate, also report latency without the frames captured in the "
                         "first this many seconds (every face is new to the worker then)")
    ap.add_argument("--json", help="write the report here too")
    ap.add_argument("--local-python", type=int, metavar="N",
                    help="start a broker and N reference Python pipelines (scripts/pipeline.py) here "
                         "instead of workers; with --compare, how many (default: as many as --local)")
    ap.add_argument("--python-arg", action="append", default=[],
                    help="extra argument for the Python pipelines (repeat)")
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv/bin/python"),
                    help="the Python that runs scripts/pipeline.py (with its packages)")
    ap.add_argument("--python-observations-topic", default="vigil.observations.py")
    ap.add_argument("--compare", action="store_true",
                    help="with --local N: measure the workers, then the Python pipelines on the same "
                         "broker (frames topic: --frames-topic + '.py'); report both and the ratios")
    ap.add_argument("--steady-fraction", type=float, metavar="F",
                    help="with --backlog: then measure latency at F times the maximum just measured "
                         "(each system its own), for --seconds")
    a = ap.parse_args()
    if (a.rate is None) == (a.backlog is None):
        ap.error("give exactly one of --rate or --backlog")
    if a.compare and not a.local:
        ap.error("--compare needs --local N")
    if a.local and a.local_python and not a.compare:
        ap.error("--local and --local-python together need --compare")
    if a.footage_fps is not None and not (a.backlog and a.footage_fps > 0):
        ap.error("--footage-fps needs --backlog and a positive rate")
    if a.steady_fraction is not None and not (a.backlog and 0 < a.steady_fraction):
        ap.error("--steady-fraction needs --backlog and a positive fraction")
    if a.local and a.backlog:
        # A backlog measures the most a worker judges: nothing may be shed.
        a.worker_arg.append("--max-staleness-secs=0")
    legs = ["vigil"] if a.local else []
    legs += ["python"] if a.local_python or a.compare else []
    local, ok = None, False
    try:
        if legs:
            local = Local(a.partitions)
            a.brokers = local.brokers
        if not a.brokers:
            ap.error("--brokers (or VIGIL_BROKERS) is required without --local")
        reports = {}
        for leg in legs or [None]:
            b = copy.copy(a)
            if leg == "vigil":
                local.workers(a.vigil, a.local, a.worker_arg)
            elif leg == "python":
                b.observations_topic = a.python_observations_topic
                if a.compare:
                    # A frames topic of its own, so that the first leg's frames are not read again.
                    b.frames_topic = a.frames_topic + ".py"
                    subprocess.run([a.vigil, "topics", "create", "--frames-topic", b.frames_topic,
                                    "--observations-topic", b.observations_topic,
                                    "--partitions", str(a.partitions)],
                                   env=dict(os.environ, VIGIL_BROKERS=a.brokers), check=True,
                                   capture_output=True)
                local.pipelines(a.python, a.local_python or a.local, b.frames_topic,
                                b.observations_topic, a.python_arg)
            if local:
                b.metrics_url = a.metrics_url + local.metrics
            if leg and len(legs) > 1:
                sys.stderr.write(f"load: measuring {leg}\n")
            reports[leg] = measure(b)
            if local:
                local.stop()
        ok = True
    finally:
        if local:
            local.close(keep=a.keep or not ok)
    if len(reports) == 1:
        report = reports[legs[0] if legs else None]
    else:
        report = {**reports, "comparison": compare(reports["vigil"], reports["python"])}
    print(json.dumps(report, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)


def measure(a):
    """One measurement, and with --steady-fraction the latency at that fraction of its result."""
    report = run(a)
    if a.steady_fraction is None:
        return report
    rate = report["throughput_frames_per_s"]
    steady = None
    if rate:
        s = copy.copy(a)
        s.backlog, s.rate = None, round(a.steady_fraction * rate, 2)
        sys.stderr.write(f"load: now {s.rate} frames/s ({a.steady_fraction:g} of {rate})\n")
        steady = run(s)
    return {"maximum": report, "steady": steady}


def compare(vigil, python):
    """Side by side: the maximum's throughput and CPU, and latency (judged frames)."""
    out = {}
    both = {"vigil": vigil, "python": python}
    maxima = {k: r.get("maximum", r) for k, r in both.items()}

    def ratio(x, y):
        return round(x / y, 2) if x and y else None

    tp = {k: r["throughput_frames_per_s"] for k, r in maxima.items()}
    cpu = {k: round(sum(c for c in r["worker_cpu_cores"] if c is not None), 2)
           for k, r in maxima.items()}
    out["throughput_frames_per_s"] = tp
    out["throughput_ratio_vigil_over_python"] = ratio(tp["vigil"], tp["python"])
    out["cpu_cores"] = cpu
    per_cpu = {k: ratio(tp[k], cpu[k]) for k in tp}
    out["frames_per_cpu_second"] = per_cpu
    out["frames_per_cpu_second_ratio_vigil_over_python"] = ratio(per_cpu["vigil"], per_cpu["python"])
    lat = {k: {q: r["latency_s_judged"][q] for q in ("p50", "p99")} for k, r in maxima.items()}
    out["latency_s_judged" + ("_at_maximum" if "maximum" in vigil else "")] = lat
    if "steady" in vigil:
        st = {k: r["steady"] for k, r in both.items()}
        out["steady"] = {k: None if r is None else {
            "offered_frames_per_s": r["offered_frames_per_s"],
            "throughput_frames_per_s": r["throughput_frames_per_s"],
            "p50": r["latency_s_judged"]["p50"], "p99": r["latency_s_judged"]["p99"],
            **{f"p99_{name[len('latency_s_judged_'):]}": (v or {}).get("p99")
               for name, v in r.items() if name.startswith("latency_s_judged_after_")}}
            for k, r in st.items()}
        if all(st.values()):
            out["steady_p99_ratio_python_over_vigil"] = ratio(
                st["python"]["latency_s_judged"]["p99"], st["vigil"]["latency_s_judged"]["p99"])
    return out


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
    crops0 = [scrape(u)[1] for u in a.metrics_url]
    cpu0 = [cpu_seconds(u) for u in a.metrics_url]
    t0 = time.time()
    gateway = [a.vigil, "gateway", "--frames-topic", a.frames_topic, "--source", a.source,
               "--loop", "--cameras", str(a.cameras), "--fps", f"{fps:.6f}",
               "--frames", str(per_camera), "--width", str(a.width), "--zones", a.zone,
               "--camera-prefix", prefix] + ([] if a.moving else ["--still"])
    if a.backlog and a.footage_fps:
        gateway += ["--footage-fps", f"{a.footage_fps:.6f}"]
    sys.stderr.write(f"load: publishing {expected} frames from {a.cameras} cameras"
                     + (" as a backlog\n" if a.backlog else f" at {a.rate} frames/s\n"))
    subprocess.run(gateway, env=env, check=True, stderr=subprocess.DEVNULL)
    published = time.time()
    reader.join()
    tail.wait()
    t1 = time.time()
    cpu1 = [cpu_seconds(u) for u in a.metrics_url]
    crops = {}
    for c0, (_, c1) in zip(crops0, [scrape(u) for u in a.metrics_url]):
        for k, v in c1.items():
            crops[k] = int(crops.get(k, 0) + v - c0.get(k, 0))
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
        # A steady rate: judged frames captured after the first --warmup-secs, when a worker
        # meets every camera's faces for the first time and classifies them all at once.
        f"latency_s_judged_after_{a.warmup_secs:g}s": summary(
            [o for o in judged if o["captured_at_ms"] >= t0 * 1000 + a.warmup_secs * 1000])
        if a.rate else None,
        "skipped_stale": len(skipped),
        "cameras_judged": cameras_judged,
        "worker_cpu_cores": cpu,
        # Detection crops classified or reusing a still track's scores (vigil_crops_total).
        "crops": crops,
        "breakdown_ms": breakdown(judged),
        # The same for the slowest 1 % of judged frames (at least 5): what the tail waits on.
        "breakdown_ms_slowest": breakdown(sorted(
            judged, key=lambda o: o["processed_at_ms"] - o["captured_at_ms"])[-max(5, len(judged) // 100):]),
    }


if __name__ == "__main__":
    main()
