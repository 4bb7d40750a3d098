"""Measures the site gateway's CPU per camera: N RTSP cameras streaming 1080p H.264 (a test
photo, GStreamer's x264 via tests/tools/rtsp_cameras.py), sampled by one `vigil gateway
--cameras-file` at --fps each, publishing to a broker of its own (nisshi, as the tests start it).

    .venv/bin/python tests/tools/gateway_cpu.py --vigil target/release/vigil --cameras 4 \
        --secs 60 [--fps 1] [--stream-fps 25] [--size 1920x1080]

Prints the gateway's CPU seconds over the measured window (user + system, from
/proc/PID/stat, after a warm-up), per camera as a share of one core, its resident memory and
the frames it published, and the RTSP server's CPU for context. Everything it starts it stops;
its files live in a temporary folder removed at the end.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scrape(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def total(text, metric):
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(metric + "{"))


def wait_listening(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vigil", default=os.path.join(ROOT, "target/release/vigil"))
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--secs", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=15)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--stream-fps", type=int, default=25)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--image", default=os.path.join(ROOT, "tests/data/faces/grace_hopper.jpg"),
                    help="the still every camera shows, or pattern:NAME (e.g. pattern:snow)")
    ap.add_argument("--bitrate", type=int, default=0, help="x264 bitrate, kbit/s")
    a = ap.parse_args()
    w, h = a.size.split("x")
    tmp = tempfile.mkdtemp(prefix="gateway-cpu-")
    procs = []
    try:
        bport = free_port()
        url = f"tcp://127.0.0.1:{bport}"
        log = open(os.path.join(tmp, "broker.log"), "w")
        procs.append(subprocess.Popen(
            [os.path.join(ROOT, ".tools/bin/nisshi"), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "sqlite://broker.db"],
            cwd=tmp, stdout=log, stderr=log))
        wait_listening(bport)
        brokers = f"127.0.0.1:{bport}"
        admin = AdminClient({"bootstrap.servers": brokers})
        for f in admin.create_topics([NewTopic("frames", 6, 1), NewTopic("status", 1, 1)]).values():
            f.result()
        rport = free_port()
        mounts = [f"--mount=cam-{i:02}={a.image}" for i in range(a.cameras)]
        rtsp = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(ROOT, "tests/tools/rtsp_cameras.py"), "--port",
             str(rport), "--fps", str(a.stream_fps), "--width", w, "--height", h,
             "--bitrate", str(a.bitrate), *mounts],
            stdout=subprocess.PIPE)
        procs.append(rtsp)
        assert rtsp.stdout.readline().startswith(b"ready")
        site = "site = \"bench\"\n" + "".join(
            f"[[camera]]\nid = \"cam-{i:02}\"\nurl = \"rtsp://127.0.0.1:{rport}/cam-{i:02}\"\n"
            f"fps = {a.fps}\n" for i in range(a.cameras))
        open(os.path.join(tmp, "site.toml"), "w").write(site)
        maddr = f"127.0.0.1:{free_port()}"
        glog = open(os.path.join(tmp, "gateway.log"), "w")
        gw = subprocess.Popen(
            [a.vigil, "gateway", "--brokers", brokers, "--frames-topic", "frames",
             "--status-topic", "status", "--cameras-file", os.path.join(tmp, "site.toml"),
             "--buffer-dir", os.path.join(tmp, "buffer"), "--metrics-addr", maddr],
            stderr=glog)
        procs.append(gw)
        time.sleep(a.warmup)
        up = total(scrape(maddr), "vigil_gateway_camera_up")
        c0, r0, p0, t0 = cpu_seconds(gw.pid), cpu_seconds(rtsp.pid), \
            total(scrape(maddr), "vigil_gateway_frames_published_total"), time.time()
        time.sleep(a.secs)
        c1, r1, p1, t1 = cpu_seconds(gw.pid), cpu_seconds(rtsp.pid), \
            total(scrape(maddr), "vigil_gateway_frames_published_total"), time.time()
        wall = t1 - t0
        print(json.dumps({
            "cameras": a.cameras, "cameras_up": up, "size": a.size, "stream_fps": a.stream_fps,
            "sample_fps": a.fps, "source": os.path.basename(a.image), "bitrate_kbps": a.bitrate,
            "secs": round(wall, 1),
            "gateway_cpu_s": round(c1 - c0, 2),
            "gateway_cores": round((c1 - c0) / wall, 3),
            "per_camera_core_share": round((c1 - c0) / wall / a.cameras, 3),
            "gateway_rss_mb": round(rss_mb(gw.pid), 1),
            "published": p1 - p0,
            "published_per_s": round((p1 - p0) / wall, 2),
            "rtsp_server_cores": round((r1 - r0) / wall, 3),
        }))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
