"""Drives headless Chromium (Debian's `chromium`) through the DevTools protocol over a pipe
(--remote-debugging-pipe: commands on fd 3, answers on fd 4; no port, no websocket library),
with only the standard library, so that a test can sign in by filling a form and clicking, as a
person would.

  browser.py STEPS.json

STEPS.json is a list of steps, run in order in one tab (cookies persist across steps):

  {"goto": URL}            navigate and wait for the load event; result: the final URL
  {"eval": JS}             evaluate JS (promises awaited); result: its value (JSON)
  {"submit": JS}           evaluate JS that navigates (a form submission, a click) and wait for
                           the next load event; result: the final URL
  {"screenshot": PATH}     write a PNG of the page (full width 1280); result: PATH
  {"sleep": SECONDS}

Prints one JSON list of the steps' results. Exits 1 (with the step) when a step fails.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

TIMEOUT = 30.0


class Browser:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="vigil-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def fds():
            # Chromium reads commands on fd 3 and writes answers on fd 4.
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                "--window-size=1280,1000", "--remote-debugging-pipe",
                # The tests' consoles serve HTTPS with a private test CA.
                "--ignore-certificate-errors",
                f"--user-data-dir={self.profile}", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # fds 3 and 4 are made in preexec_fn, which runs before close_fds would close
            # them: inherit instead (the pipes are this script's only open files).
            close_fds=False, preexec_fn=fds,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf = b""
        self.next_id = 0
        self.events = []
        try:
            self.attach()
        except Exception:
            self.close()
            raise

    def attach(self):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def read_message(self, deadline):
        while b"\0" not in self.buf:
            if time.time() > deadline:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=False):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + TIMEOUT
        while True:
            m = self.read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_event(self, method):
        deadline = time.time() + TIMEOUT
        while True:
            for i, m in enumerate(self.events):
                if m.get("method") == method:
                    del self.events[: i + 1]
                    return m
            self.events.clear()
            self.events.append(self.read_message(deadline))

    def evaluate(self, js):
        r = self.call("Runtime.evaluate", {
            "expression": js, "awaitPromise": True, "returnByValue": True}, session=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    steps = json.load(open(sys.argv[1]))
    results = []
    b = None
    try:
        b = Browser()
        for step in steps:
            try:
                if "goto" in step:
                    b.events.clear()
                    b.call("Page.navigate", {"url": step["goto"]}, session=True)
                    b.wait_event("Page.loadEventFired")
                    results.append(b.evaluate("location.href"))
                elif "eval" in step:
                    results.append(b.evaluate(step["eval"]))
                elif "submit" in step:
                    b.events.clear()
                    b.evaluate(step["submit"])
                    b.wait_event("Page.loadEventFired")
                    results.append(b.evaluate("location.href"))
                elif "screenshot" in step:
                    shot = b.call("Page.captureScreenshot",
                                  {"format": "png", "captureBeyondViewport": True}, session=True)
                    with open(step["screenshot"], "wb") as f:
                        f.write(base64.b64decode(shot["data"]))
                    results.append(step["screenshot"])
                elif "sleep" in step:
                    time.sleep(step["sleep"])
                    results.append(None)
                else:
                    raise ValueError(f"unknown step {step}")
            except Exception as e:
                print(json.dumps({"failed": step, "error": str(e), "results": results}))
                sys.exit(1)
    finally:
        if b is not None:
            b.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
