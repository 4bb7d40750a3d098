#!/usr/bin/python3
"""RTSP cameras for the gateway's tests and the demo: still images served as live H.264 streams.

Runs GStreamer's RTSP server (Debian: python3-gi, gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-{base,good,ugly}) with one mount per image, all on one port:

    /usr/bin/python3 tests/tools/rtsp_cameras.py --port 8554 \
        --mount cam-01=tests/data/faces/grace_hopper.jpg --mount cam-02=pattern:snow ...

serves rtsp://127.0.0.1:8554/cam-01 and so on. Each stream shows its image frozen, as a live
camera at --fps (default 10) and --width x --height (default: the image's own size), encoded
by x264 for low latency. Prints `ready <port>` on stdout once it listens, and runs until it
is killed (SIGTERM or SIGKILL: it holds no files).

Uses the system's Python (`gi` is a Debian package), not the project's .venv.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(image, fps, width, height, bitrate):
    """The pipeline of one mount: the image decoded once, frozen, encoded as live H.264; or,
    for an image named `pattern:NAME`, GStreamer's test pattern NAME (`snow`: noise, every
    frame new, the costliest to decode at a given bitrate)."""
    caps = f"video/x-raw,framerate={fps}/1"
    if width and height:
        caps = f"video/x-raw,width={width},height={height},framerate={fps}/1"
    if image.startswith("pattern:"):
        source = f"videotestsrc is-live=true pattern={image[8:]}"
    else:
        source = f"filesrc location={image} ! jpegdec ! videoconvert ! videoscale ! imagefreeze is-live=true"
    rate = f" bitrate={bitrate}" if bitrate else ""
    return (
        f"( {source} ! {caps} ! videoconvert "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps}{rate} "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mount", action="append", default=[], help="NAME=IMAGE (repeatable)")
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--width", type=int, default=0)
    ap.add_argument("--height", type=int, default=0)
    ap.add_argument("--bitrate", type=int, default=0, help="x264 bitrate, kbit/s (default: x264's)")
    a = ap.parse_args()
    if not a.mount:
        ap.error("give at least one --mount NAME=IMAGE")
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    mounts = server.get_mount_points()
    for m in a.mount:
        name, _, image = m.partition("=")
        if not name or not image:
            ap.error(f"--mount {m}: expected NAME=IMAGE")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(image, a.fps, a.width, a.height, a.bitrate))
        # One pipeline per mount, shared by every client (one encoder per camera, as a camera).
        factory.set_shared(True)
        mounts.add_factory(f"/{name}", factory)
    if server.attach(None) == 0:
        sys.exit(f"rtsp_cameras: cannot listen on port {a.port}")
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print(f"ready {a.port}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
