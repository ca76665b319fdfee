#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A stand-in for a Hugging Face hub on loopback, for the tests of mpool-pull.

    fake-hub.py --root=DIR --log=FILE [--control=FILE]

Serves the repositories below DIR (DIR/ORG/NAME/…, or DIR/NAME/…) with the
two routes mpool-pull uses:

  GET /api/models/{repo}/revision/{rev}?blobs=true
      {"id", "sha", "siblings": [{"rfilename", "size", "lfs"?}]}: a fixed
      fake commit per repository (the SHA-1 of its name); rev is "main" or
      that commit, anything else is 404, as is a repository that is not
      there. LFS-like files (*.safetensors, *.bin) get "lfs": {"sha256",
      "size"}. A file .info.json in the repository's folder is served
      instead, as it is (the tests' hostile model infos). Dot files are not
      listed.
  GET /{repo}/resolve/{rev}/{path}
      the file, with single-range Range support (206, 416); LFS-like files
      are redirected (302) to the second server, on 127.0.0.2, as the real
      hub redirects them to its CDN, so that a client's cross-host redirect
      can be watched there.

Once both servers listen it prints one JSON line on stdout:
{"endpoint": "http://127.0.0.1:PORT", "lfs": "http://127.0.0.2:PORT"}.

Every request is logged to FILE as a JSON line once it is answered:
{"server": "main"|"lfs", "path", "range" (the header or null), "auth"
(whether an Authorization header came), "status", "bytes" (body bytes
written before the end or the fault)}.

Faults: FILE given by --control holds a JSON object, read again for every
request, so a test can change it between runs of the client:

  "token": "T"                 main-server requests need "Authorization:
                               Bearer T": 401 without one, 403 with another
  "drop": [{"file": F, "after": N, "times": K}]
                               the body of file F stops after N bytes and the
                               connection is closed; K times (-1: always)
  "stall": [{"file": F, "after": N, "times": K}]
                               the body of F stops after N bytes and the
                               server then sends nothing until it exits
  "fail": [{"match": S, "status": C, "times": K}]
                               requests whose path holds S get status C
  "corrupt": [F, …]            F is served with one byte changed (same size)
  "ignore_range": true         Range headers are ignored (200, whole body)
  "slow": {"chunk": B, "delay": S}
                               bodies are written B bytes at a time with S
                               seconds between
  "redirect": {F: URL}         F is redirected (302) to URL

Stops on SIGTERM or SIGINT."""

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".bin")


class Hub:
        def __init__(self, root, log_path, control_path):
                self.root = os.path.abspath(root)
                self.log_path = log_path
                self.control_path = control_path
                self.lock = threading.Lock()
                self.used = {}          # fault key -> times used
                self.stopping = threading.Event()
                self.lfs_base = None

        def control(self):
                if not self.control_path or not os.path.exists(self.control_path):
                        return {}
                with open(self.control_path) as f:
                        text = f.read()
                return json.loads(text) if text.strip() else {}

        def take_fault(self, kind, fault):
                """Whether this fault applies once more (and counts it)."""
                key = kind + json.dumps(fault, sort_keys=True)
                with self.lock:
                        used = self.used.get(key, 0)
                        times = fault.get("times", -1)
                        if times >= 0 and used >= times:
                                return False
                        self.used[key] = used + 1
                        return True

        def log(self, record):
                with self.lock:
                        with open(self.log_path, "a") as f:
                                f.write(json.dumps(record) + "\n")

        def repo_dir(self, repo):
                parts = repo.split("/")
                if not repo or len(parts) > 2 or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
                        return None
                path = os.path.join(self.root, *parts)
                return path if os.path.isdir(path) else None

        @staticmethod
        def commit(repo):
                return hashlib.sha1(("fake-commit:" + repo).encode()).hexdigest()

        def files(self, directory):
                out = []
                for dirpath, dirnames, filenames in os.walk(directory):
                        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                        for name in sorted(filenames):
                                if name.startswith("."):
                                        continue
                                full = os.path.join(dirpath, name)
                                out.append((os.path.relpath(full, directory), full))
                return out

        def model_info(self, repo, directory):
                override = os.path.join(directory, ".info.json")
                if os.path.exists(override):
                        with open(override, "rb") as f:
                                return f.read()
                siblings = []
                for rel, full in self.files(directory):
                        entry = {"rfilename": rel, "size": os.path.getsize(full)}
                        if rel.endswith(LFS_SUFFIXES):
                                with open(full, "rb") as f:
                                        digest = hashlib.sha256(f.read()).hexdigest()
                                entry["lfs"] = {"sha256": digest, "size": entry["size"], "pointerSize": 134}
                        siblings.append(entry)
                info = {"id": repo, "modelId": repo, "sha": self.commit(repo), "private": False,
                        "siblings": siblings}
                return json.dumps(info).encode()


def make_handler(hub, role):
        class Handler(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                server_version = "fake-hub/1"

                def log_message(self, format, *args):  # noqa: A002 - the base class's name
                        pass

                def record(self, status, sent):
                        hub.log({"server": role, "path": self.path, "range": self.headers.get("Range"),
                                 "auth": self.headers.get("Authorization") is not None, "status": status,
                                 "bytes": sent})

                def reply(self, status, body=b"", headers=()):
                        self.send_response(status)
                        for k, v in headers:
                                self.send_header(k, v)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        if body:
                                self.wfile.write(body)
                        self.record(status, len(body))

                def error(self, status, message):
                        self.reply(status, json.dumps({"error": message}).encode(),
                                   [("Content-Type", "application/json")])

                def do_GET(self):  # noqa: N802 - the base class's name
                        try:
                                self.route()
                        except (BrokenPipeError, ConnectionResetError):
                                self.close_connection = True

                def route(self):
                        control = hub.control()
                        url = urllib.parse.urlsplit(self.path)
                        path = urllib.parse.unquote(url.path)

                        for fault in control.get("fail", []):
                                if fault["match"] in path and hub.take_fault("fail", fault):
                                        return self.error(fault["status"], "injected failure")

                        if role == "lfs":
                                # /lfs/{repo}/{commit}/{file}: the CDN side, no token asked.
                                if not path.startswith("/lfs/"):
                                        return self.error(404, "not found")
                                rest = path[len("/lfs/"):]
                                for repo_len in (2, 1):
                                        parts = rest.split("/")
                                        repo = "/".join(parts[:repo_len])
                                        directory = hub.repo_dir(repo)
                                        if directory and len(parts) > repo_len + 1 and \
                                           parts[repo_len] == hub.commit(repo):
                                                return self.send_file(control, directory,
                                                                      "/".join(parts[repo_len + 1:]))
                                return self.error(404, "not found")

                        token = control.get("token")
                        if token:
                                given = self.headers.get("Authorization")
                                if given is None:
                                        return self.error(401, "Access to this repository requires a token")
                                if given != f"Bearer {token}":
                                        return self.error(403, "This token may not read this repository")

                        if path.startswith("/api/models/") and "/revision/" in path:
                                repo, _, revision = path[len("/api/models/"):].rpartition("/revision/")
                                directory = hub.repo_dir(repo)
                                if directory is None:
                                        return self.error(404, "Repository not found")
                                if revision not in ("main", hub.commit(repo)):
                                        return self.error(404, "Revision not found")
                                return self.reply(200, hub.model_info(repo, directory),
                                                  [("Content-Type", "application/json")])

                        if "/resolve/" in path:
                                repo, _, rest = path[1:].partition("/resolve/")
                                directory = hub.repo_dir(repo)
                                revision, _, name = rest.partition("/")
                                if directory is None:
                                        return self.error(404, "Repository not found")
                                if revision not in ("main", hub.commit(repo)):
                                        return self.error(404, "Revision not found")
                                location = control.get("redirect", {}).get(name)
                                if location:
                                        return self.reply(302, b"", [("Location", location)])
                                if name.endswith(LFS_SUFFIXES):
                                        target = (f"{hub.lfs_base}/lfs/{repo}/{hub.commit(repo)}/"
                                                  f"{urllib.parse.quote(name)}?expires=1&signature=fake")
                                        return self.reply(302, b"", [("Location", target)])
                                return self.send_file(control, directory, name)

                        return self.error(404, "not found")

                def send_file(self, control, directory, name):
                        full = os.path.realpath(os.path.join(directory, name))
                        if not full.startswith(os.path.realpath(directory) + os.sep) or not os.path.isfile(full) \
                           or os.path.basename(full).startswith("."):
                                return self.error(404, "Entry not found")
                        with open(full, "rb") as f:
                                data = bytearray(f.read())
                        if name in control.get("corrupt", []) and data:
                                data[len(data) // 2] ^= 0xFF
                        size = len(data)

                        status, start, end = 200, 0, size
                        wanted = self.headers.get("Range")
                        if wanted and not control.get("ignore_range"):
                                spec = wanted.strip()
                                if not spec.startswith("bytes=") or "," in spec:
                                        return self.error(400, "unsupported range")
                                first, _, last = spec[len("bytes="):].partition("-")
                                start = int(first)
                                end = min(int(last) + 1, size) if last else size
                                if start >= size or start >= end:
                                        return self.reply(416, b"", [("Content-Range", f"bytes */{size}")])
                                status = 206
                        body = bytes(data[start:end])

                        self.send_response(status)
                        self.send_header("Content-Length", str(len(body)))
                        self.send_header("Accept-Ranges", "bytes")
                        if status == 206:
                                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                        self.end_headers()

                        cut = None
                        stall = False
                        for kind in ("drop", "stall"):
                                for fault in control.get(kind, []):
                                        if fault["file"] == name and hub.take_fault(kind, fault):
                                                cut = min(fault["after"], len(body))
                                                stall = kind == "stall"
                                                break
                                if cut is not None:
                                        break

                        slow = control.get("slow")
                        chunk = slow["chunk"] if slow else 256 * 1024
                        limit = len(body) if cut is None else cut
                        sent = 0
                        try:
                                while sent < limit:
                                        n = min(chunk, limit - sent)
                                        self.wfile.write(body[sent:sent + n])
                                        self.wfile.flush()
                                        sent += n
                                        if slow and sent < limit and hub.stopping.wait(slow["delay"]):
                                                break
                        finally:
                                self.record(status, sent)
                        if cut is None:
                                return
                        if stall:
                                hub.stopping.wait(3600)
                        self.close_connection = True
                        try:
                                self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                                pass

        return Handler


class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
                # A client that hangs up (as clients under test do on purpose)
                # is no error of the hub's.
                if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                        return
                super().handle_error(request, client_address)


def main():
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--root", required=True)
        parser.add_argument("--log", required=True)
        parser.add_argument("--control", default=None)
        args = parser.parse_args()

        hub = Hub(args.root, args.log, args.control)
        main_server = Server(("127.0.0.1", 0), make_handler(hub, "main"))
        lfs_server = Server(("127.0.0.2", 0), make_handler(hub, "lfs"))
        hub.lfs_base = f"http://127.0.0.2:{lfs_server.server_address[1]}"

        threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (main_server, lfs_server)]
        for t in threads:
                t.start()

        done = threading.Event()

        def stop(signum, frame):
                done.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(json.dumps({"endpoint": f"http://127.0.0.1:{main_server.server_address[1]}", "lfs": hub.lfs_base}),
              flush=True)
        while not done.wait(3600):
                pass
        hub.stopping.set()
        for s in (main_server, lfs_server):
                s.shutdown()
                s.server_close()
        return 0


if __name__ == "__main__":
        sys.exit(main())
