"""A small stand-in for a Confluent-compatible schema registry, for tests only.

No Confluent-compatible registry (Confluent Schema Registry, Karapace, Apicurio) can be installed
where vigil's tests run, so this serves the part of the documented REST API that vigil and
confluent-kafka's client use, keeping schemas in memory:

  POST /subjects/{subject}/versions   {"schema": "..."} -> {"id": N}  (same schema: same id)
  GET  /schemas/ids/{id}              -> {"schema": "..."}
  GET  /subjects                      -> ["subject", ...]
  GET  /subjects/{subject}/versions   -> [1, 2, ...]
  GET  /subjects/{subject}/versions/{version|latest} -> {"subject", "version", "id", "schema"}

It enforces no compatibility rules. Prints "listening PORT" and serves until killed. With
--tls CERT KEY it serves HTTPS; with --user-info USER:PASSWORD it requires HTTP basic
authentication (as a hosted registry does) and answers 401 otherwise.

usage: registry.py [PORT] [--tls CERT KEY] [--user-info USER:PASSWORD]
       (PORT 0 or nothing: any free port on 127.0.0.1)
"""
import argparse
import base64
import json
import ssl
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LOCK = threading.Lock()
SCHEMAS = {}  # id -> schema text
IDS = {}  # canonical schema JSON -> id
SUBJECTS = {}  # subject -> [id of version 1, id of version 2, ...]
EXPECTED_AUTH = None  # "Basic ..." when --user-info is given


def canonical(text):
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


class Handler(BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.answer(status, {"error_code": code, "message": message})

    def authorised(self):
        if EXPECTED_AUTH is None or self.headers.get("Authorization") == EXPECTED_AUTH:
            return True
        self.error(401, 401, "Unauthorized")
        return False

    def do_POST(self):
        if not self.authorised():
            return
        path = urlsplit(self.path).path
        m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
        if not m:
            return self.error(404, 404, f"no route {path}")
        subject = unquote(m.group(1))
        length = int(self.headers.get("Content-Length", 0))
        try:
            request = json.loads(self.rfile.read(length))
            key = canonical(request["schema"])
        except (ValueError, KeyError, TypeError) as e:
            return self.error(422, 42201, f"invalid schema: {e}")
        if request.get("schemaType", "AVRO") != "AVRO":
            return self.error(422, 42201, "only AVRO schemas are served here")
        with LOCK:
            sid = IDS.get(key)
            if sid is None:
                sid = len(SCHEMAS) + 1
                IDS[key] = sid
                SCHEMAS[sid] = request["schema"]
            versions = SUBJECTS.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
        self.answer(200, {"id": sid})

    def do_GET(self):
        if not self.authorised():
            return
        path = urlsplit(self.path).path
        with LOCK:
            m = re.fullmatch(r"/schemas/ids/(\d+)", path)
            if m:
                sid = int(m.group(1))
                if sid not in SCHEMAS:
                    return self.error(404, 40403, f"schema {sid} not found")
                return self.answer(200, {"schema": SCHEMAS[sid]})
            if path == "/subjects":
                return self.answer(200, sorted(SUBJECTS))
            m = re.fullmatch(r"/subjects/([^/]+)/versions(?:/([^/]+))?", path)
            if m:
                subject = unquote(m.group(1))
                if subject not in SUBJECTS:
                    return self.error(404, 40401, f"subject {subject} not found")
                versions = SUBJECTS[subject]
                if m.group(2) is None:
                    return self.answer(200, list(range(1, len(versions) + 1)))
                v = len(versions) if m.group(2) == "latest" else int(m.group(2))
                if not 1 <= v <= len(versions):
                    return self.error(404, 40402, f"version {v} not found")
                sid = versions[v - 1]
                return self.answer(
                    200, {"subject": subject, "version": v, "id": sid, "schema": SCHEMAS[sid]}
                )
        self.error(404, 404, f"no route {path}")

    def log_message(self, *args):
        pass


def main():
    global EXPECTED_AUTH
    ap = argparse.ArgumentParser()
    ap.add_argument("port", nargs="?", type=int, default=0)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--user-info")
    args = ap.parse_args()
    if args.user_info:
        EXPECTED_AUTH = "Basic " + base64.b64encode(args.user_info.encode()).decode()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*args.tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
