# SPDX-License-Identifier: MIT
"""mpool-pull, the download helper, on its own: run from the build against
tests/tools/fake-hub.py on loopback (127.0.0.1, with LFS files redirected
to 127.0.0.2), with a temporary staging folder. No daemon, no bus.

Every wait is on an event (a line of the helper, a file reaching a size, a
process exiting) with a generous deadline; the fake hub's faults that stop
a transfer mid-file (drop, stall) stop it at a byte count, never at a time."""

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

from harness import DEADLINE, SANITIZER_REPORT, MiB, wait_until

PAGE = os.sysconf("SC_PAGESIZE")
# A whole run of the helper on a loaded machine: far more than it takes.
RUN_TIMEOUT = 120
# Retries in the tests wait milliseconds, not seconds: an option only the
# helper's test build (mpool-pull-test) takes.
TEST_ARGS = ["--test-backoff-msec=20"]
FAILURE_KINDS = {"not-found", "unauthorized", "network", "hash-mismatch", "size-mismatch", "storage", "protocol",
                 "unsupported", "cancelled", "internal"}
USED_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
              "1_Pooling/config.json"]


def page_align(n):
        return (n + PAGE - 1) // PAGE * PAGE


def sha256_file(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
        return h.hexdigest()


def read(path):
        with open(path, "rb") as f:
                return f.read()


def staged(staging):
        """Every file below staging, by its path relative to it."""
        out = []
        for dirpath, _, filenames in os.walk(staging):
                for name in filenames:
                        out.append(os.path.relpath(os.path.join(dirpath, name), staging))
        return sorted(out)


class FakeHub:
        def __init__(self, ctx):
                self.ctx = ctx
                self.root = os.path.join(ctx.dir, "hubroot")
                self.log_path = os.path.join(ctx.dir, "hub.log")
                self.control_path = os.path.join(ctx.dir, "hub-control.json")
                os.makedirs(self.root)
                self.control()
                script = os.path.join(ctx.suite.source_root, "tests", "tools", "fake-hub.py")
                self.proc = ctx.spawn([sys.executable, script, f"--root={self.root}", f"--log={self.log_path}",
                                       f"--control={self.control_path}"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
                line = self.proc.stdout.readline()
                assert line, "fake-hub.py did not start"
                addresses = json.loads(line)
                self.endpoint = addresses["endpoint"]
                self.lfs = addresses["lfs"]

        def control(self, **faults):
                with open(self.control_path, "w") as f:
                        json.dump(faults, f)

        def repo(self, name):
                path = os.path.join(self.root, name)
                os.makedirs(path, exist_ok=True)
                return path

        def requests(self, server=None, contains=None):
                if not os.path.exists(self.log_path):
                        return []
                with open(self.log_path) as f:
                        records = [json.loads(line) for line in f if line.strip()]
                return [r for r in records if (server is None or r["server"] == server)
                        and (contains is None or contains in r["path"])]

        def clear_log(self):
                open(self.log_path, "w").close()

        def commit(self, repo):
                return hashlib.sha1(("fake-commit:" + repo).encode()).hexdigest()


class Pull:
        """One run of the helper, its stdout read line by line in a thread."""

        def __init__(self, ctx, hub, repo, staging, revision="main", token=None, inspect=False, endpoint=None,
                     test_args=(), parallel=None):
                args = [os.path.join(ctx.suite.build_dir, "mpool-pull-test"), f"--endpoint={endpoint or hub.endpoint}",
                        f"--repo={repo}", f"--revision={revision}", f"--staging={staging}"] + TEST_ARGS + \
                        list(test_args)
                if inspect:
                        args.append("--inspect")
                if parallel:
                        args.append(f"--parallel={parallel}")
                pass_fds = ()
                token_read = None
                if token is not None:
                        token_read, token_write = os.pipe()
                        os.write(token_write, token.encode() + b"\n")
                        os.close(token_write)
                        args.append(f"--token-fd={token_read}")
                        pass_fds = (token_read,)
                self.proc = ctx.spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      pass_fds=pass_fds)
                if token_read is not None:
                        os.close(token_read)
                self.lines = []
                self.stderr = b""
                self.lock = threading.Lock()
                self.reader = threading.Thread(target=self._read, daemon=True)
                self.reader.start()
                self.err_reader = threading.Thread(target=self._read_err, daemon=True)
                self.err_reader.start()

        def _read(self):
                for raw in self.proc.stdout:
                        with self.lock:
                                self.lines.append(raw.decode())
                self.proc.stdout.close()

        def _read_err(self):
                self.stderr = self.proc.stderr.read()
                self.proc.stderr.close()

        def output(self):
                with self.lock:
                        return "".join(self.lines)

        def words(self, keyword):
                """The lines starting with keyword, split in words."""
                with self.lock:
                        lines = list(self.lines)
                return [line.rstrip("\n").split(" ") for line in lines if line.split(" ", 1)[0].rstrip("\n") == keyword]

        def wait_line(self, keyword):
                def seen():
                        if self.words(keyword):
                                return True
                        if self.proc.poll() is not None and not self.reader.is_alive():
                                raise AssertionError(f"mpool-pull exited ({self.proc.returncode}) without {keyword}:\n"
                                                     f"{self.output()}{self.stderr.decode(errors='replace')}")
                        return False
                wait_until(seen, f"{keyword} from mpool-pull")

        def answer(self, text):
                self.proc.stdin.write(text.encode())
                self.proc.stdin.flush()

        def go(self):
                self.wait_line("READY")
                self.answer("GO\n")
                return self

        def close_stdin(self):
                self.proc.stdin.close()

        def finish(self):
                """Waits for the exit; returns (exit status, last line's words)."""
                self.proc.wait(timeout=RUN_TIMEOUT)
                self.reader.join(timeout=DEADLINE)
                self.err_reader.join(timeout=DEADLINE)
                if not self.proc.stdin.closed:
                        self.proc.stdin.close()
                # UBSan reports on stderr (ASan's and LSan's go to the test's
                # report directory, which the runner checks).
                found = SANITIZER_REPORT.search(self.stderr.decode(errors="replace"))
                assert not found, f"sanitizer report from mpool-pull:\n{self.stderr.decode(errors='replace')}"
                lines = self.output().splitlines()
                assert lines, f"mpool-pull printed nothing: {self.stderr.decode(errors='replace')}"
                return self.proc.returncode, lines[-1].split(" ")

        def plan(self):
                return {w[3]: (int(w[1]), w[2]) for w in self.words("FILE")}

        def describe(self):
                return f"stdout:\n{self.output()}stderr:\n{self.stderr.decode(errors='replace')}"


def run_pull(ctx, hub, repo, staging, **kwargs):
        p = Pull(ctx, hub, repo, staging, **kwargs)
        if not kwargs.get("inspect"):
                p.go()
        status, last = p.finish()
        return p, status, last


def expect_done(p, status, last):
        assert status == 0 and last == ["DONE"], f"the pull failed ({status}):\n{p.describe()}"


def expect_failed(p, status, last, kind):
        assert status != 0, f"mpool-pull exited 0:\n{p.describe()}"
        assert last[0] == "FAILED" and last[1] == kind, f"expected FAILED {kind}:\n{p.describe()}"
        assert len(last) > 2, f"FAILED without a message:\n{p.describe()}"


def make_repo(ctx, hub, name="org/tiny", size="2M", shards=None, dtype=None, extras=True):
        """A repository as the hub holds one: the weights (mpool-mkmodel,
        which also writes config.json), the tokenizer's and
        sentence-transformers' files, and files mpool does not use."""
        directory = hub.repo(name)
        ctx.mkmodel(directory, size=size, shards=shards, dtype=dtype)
        if extras:
                for used in USED_FILES:
                        path = os.path.join(directory, used)
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        if not os.path.exists(path):
                                with open(path, "w") as f:
                                        json.dump({"file": used, "padding": "x" * 1000}, f)
                with open(os.path.join(directory, "pytorch_model.bin"), "wb") as f:
                        f.write(os.urandom(64 * 1024))
                with open(os.path.join(directory, "README.md"), "w") as f:
                        f.write("# a model\n")
                os.makedirs(os.path.join(directory, "onnx"))
                with open(os.path.join(directory, "onnx", "model.onnx"), "wb") as f:
                        f.write(b"onnx" * 100)
        return directory


def new_staging(ctx, name="staging"):
        path = os.path.join(ctx.dir, name)
        os.makedirs(path)
        return path


def weights_requests(hub, name="model.safetensors"):
        return [r for r in hub.requests(server="lfs") if r["path"].split("?")[0].endswith("/" + name)]


# ---------------------------------------------------------------------------

def test_pull_fetches_the_files_mpool_uses(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub)
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)

        expected = sorted(USED_FILES + ["model.safetensors"])
        assert staged(staging) == expected, staged(staging)
        for name in expected:
                assert read(os.path.join(staging, name)) == read(os.path.join(source, name)), name

        # The plan: the commit, every file with its size, the weights with
        # their SHA-256, the total.
        assert p.words("COMMIT") == [["COMMIT", hub.commit("org/tiny")]]
        plan = p.plan()
        assert sorted(plan) == expected, plan
        for name, (size, digest) in plan.items():
                assert size == os.path.getsize(os.path.join(source, name)), name
                assert digest == (sha256_file(os.path.join(source, name)) if name.endswith(".safetensors") else "-")
        total = sum(size for size, _ in plan.values())
        assert p.words("TOTAL") == [["TOTAL", str(total), str(len(plan))]]
        progress = p.words("PROGRESS")
        assert progress and progress[-1] == ["PROGRESS", str(total), str(total)], progress
        done = [int(w[1]) for w in progress]
        assert done == sorted(done), progress

        # Nothing else was asked for; the weights came from the second host.
        fetched = {r["path"].split("?")[0].rsplit("/", 1)[-1] for r in hub.requests() if "/api/" not in r["path"]}
        for skipped in ("pytorch_model.bin", "README.md", "model.onnx"):
                assert skipped not in fetched, hub.requests()
        assert len(weights_requests(hub)) == 1, hub.requests()


def test_pull_sharded_model_takes_the_shards_of_the_index(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="3M", shards=3, extras=False)
        # Another precision's shard in the same repository: not in the index.
        with open(os.path.join(source, "model.fp16-00001-of-00001.safetensors"), "wb") as f:
                f.write(read(os.path.join(source, "model-00001-of-00003.safetensors")))
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging, parallel=2)
        expect_done(p, status, last)

        with open(os.path.join(source, "model.safetensors.index.json")) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        assert len(shards) == 3, shards
        expected = sorted(["config.json", "model.safetensors.index.json"] + shards)
        assert staged(staging) == expected, staged(staging)
        for name in expected:
                assert read(os.path.join(staging, name)) == read(os.path.join(source, name)), name
        # The index is planned first: it is read before the rest is known.
        assert p.words("FILE")[0][3] == "model.safetensors.index.json", p.output()
        assert not hub.requests(contains="fp16"), hub.requests()


def test_pull_resumes_after_a_dropped_connection(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="4M", extras=False)
        size = os.path.getsize(os.path.join(source, "model.safetensors"))
        cut = size // 3
        hub.control(drop=[{"file": "model.safetensors", "after": cut, "times": 1}])
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)
        assert read(os.path.join(staging, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))

        requests = weights_requests(hub)
        assert len(requests) == 2, requests
        assert requests[0]["range"] is None and requests[0]["bytes"] == cut, requests
        assert requests[1]["range"] == f"bytes={cut}-" and requests[1]["status"] == 206, requests
        fetched = sum(r["bytes"] for r in requests)
        assert fetched < 1.5 * size, (fetched, size)


def test_pull_keeps_resuming_a_connection_that_keeps_dropping(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="2M", extras=False)
        size = os.path.getsize(os.path.join(source, "model.safetensors"))
        # Every response stops after 400 KiB: each retry makes progress, so
        # the retries never run out.
        hub.control(drop=[{"file": "model.safetensors", "after": 400 * 1024, "times": -1}])
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)
        assert read(os.path.join(staging, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))
        requests = weights_requests(hub)
        assert len(requests) == (size + 400 * 1024 - 1) // (400 * 1024), requests
        assert sum(r["bytes"] for r in requests) == size, requests


def test_pull_gives_up_after_its_retries(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        # Not a byte of the file, ever: no progress, so the retries count.
        hub.control(drop=[{"file": "model.safetensors", "after": 0, "times": -1}])
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_failed(p, status, last, "network")
        assert "model.safetensors" in " ".join(last), last
        assert len(weights_requests(hub)) == 6, hub.requests()     # the first attempt and 5 retries
        assert "model.safetensors" not in staged(staging)


def test_pull_retries_server_errors(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="1M", extras=False)
        hub.control(fail=[{"match": "/api/models/", "status": 503, "times": 2},
                          {"match": "/lfs/", "status": 500, "times": 1}])
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)
        assert [r["status"] for r in hub.requests(contains="/api/models/")] == [503, 503, 200]
        assert [r["status"] for r in weights_requests(hub)] == [500, 200]
        assert read(os.path.join(staging, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))


def test_pull_resumes_the_part_a_killed_helper_left(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="4M", extras=False)
        cut = 1 * MiB + 12345
        hub.control(stall=[{"file": "model.safetensors", "after": cut, "times": 1}])
        staging = new_staging(ctx)
        part = os.path.join(staging, "model.safetensors.part")

        first = Pull(ctx, hub, "org/tiny", staging).go()
        wait_until(lambda: os.path.exists(part) and os.path.getsize(part) == cut, "the .part to reach the stall")
        first.proc.kill()
        first.finish()
        assert os.path.getsize(part) == cut
        assert "model.safetensors" not in staged(staging)

        hub.control()
        hub.clear_log()
        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)
        assert read(os.path.join(staging, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))
        assert not os.path.exists(part)
        requests = weights_requests(hub)
        assert len(requests) == 1 and requests[0]["range"] == f"bytes={cut}-" and requests[0]["status"] == 206, \
                requests
        # Progress starts from what the .part held.
        assert int(p.words("PROGRESS")[0][1]) >= cut, p.output()


def test_pull_starts_over_when_the_server_ignores_range(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="2M", extras=False)
        staging = new_staging(ctx)
        part = os.path.join(staging, "model.safetensors.part")
        # What a killed run left, but wrong: were it kept, the hash would fail.
        with open(part, "wb") as f:
                f.write(b"\xff" * 300000)
        hub.control(ignore_range=True)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)
        assert read(os.path.join(staging, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))
        requests = weights_requests(hub)
        assert len(requests) == 1 and requests[0]["range"] == "bytes=300000-" and requests[0]["status"] == 200, \
                requests


def test_pull_keeps_verified_files_and_replaces_wrong_ones(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="1M", extras=False)
        staging = new_staging(ctx)
        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)

        # Same size, another byte: not verified, so fetched again.
        with open(os.path.join(staging, "model.safetensors"), "r+b") as f:
                f.seek(100)
                f.write(b"\x00" if read(os.path.join(source, "model.safetensors"))[100] != 0 else b"\x01")
        hub.clear_log()
        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)
        assert read(os.path.join(staging, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))
        assert len(weights_requests(hub)) == 1
        assert not hub.requests(contains="config.json"), hub.requests()

        hub.clear_log()
        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_done(p, status, last)
        assert [r for r in hub.requests() if "/api/" not in r["path"]] == [], hub.requests()


def test_pull_hash_mismatch_leaves_no_file(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        hub.control(corrupt=["model.safetensors"])
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_failed(p, status, last, "hash-mismatch")
        assert "model.safetensors" in " ".join(last[2:]), last
        assert not any(name.startswith("model.safetensors") for name in staged(staging)), staged(staging)


def test_pull_not_found(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        staging = new_staging(ctx)

        for repo, revision in (("org/missing", "main"), ("org/tiny", "no-such-branch")):
                p, status, last = run_pull(ctx, hub, repo, staging, revision=revision, inspect=True)
                expect_failed(p, status, last, "not-found")
                assert repo in " ".join(last), last
        assert staged(staging) == []


def test_pull_without_safetensors_weights(ctx):
        hub = FakeHub(ctx)
        directory = hub.repo("org/old")
        with open(os.path.join(directory, "pytorch_model.bin"), "wb") as f:
                f.write(b"\0" * 1024)
        with open(os.path.join(directory, "config.json"), "w") as f:
                f.write("{}")
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/old", staging, inspect=True)
        expect_failed(p, status, last, "unsupported")
        assert " ".join(last[2:]) == "There are no safetensors weights in org/old at main.", last


def test_pull_token_goes_only_where_it_belongs(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="1M", extras=False)
        token = "hf_secretTOKENvalue0123456789"
        hub.control(token=token)
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging, inspect=True)
        expect_failed(p, status, last, "unauthorized")
        p, status, last = run_pull(ctx, hub, "org/tiny", staging, token="hf_wrong", inspect=True)
        expect_failed(p, status, last, "unauthorized")
        assert "403" in " ".join(last), last

        hub.clear_log()
        p, status, last = run_pull(ctx, hub, "org/tiny", staging, token=token)
        expect_done(p, status, last)
        assert read(os.path.join(staging, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))

        assert token not in p.output() and token.encode() not in p.stderr
        for name in staged(staging):
                assert token.encode() not in read(os.path.join(staging, name)), name
        main = hub.requests(server="main")
        lfs = hub.requests(server="lfs")
        assert main and all(r["auth"] for r in main), main
        # Redirected to another host: the header stayed behind.
        assert lfs and not any(r["auth"] for r in lfs), lfs


def test_pull_cancelled_before_go(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        staging = new_staging(ctx)

        p = Pull(ctx, hub, "org/tiny", staging)
        p.wait_line("READY")
        p.close_stdin()
        status, last = p.finish()
        expect_failed(p, status, last, "cancelled")
        assert staged(staging) == []
        assert [r["path"].split("?")[0] for r in hub.requests()] == ["/api/models/org/tiny/revision/main"]


def test_pull_sigterm_mid_download_leaves_parts(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="2M", extras=False)
        cut = 512 * 1024
        hub.control(stall=[{"file": "model.safetensors", "after": cut, "times": 1}])
        staging = new_staging(ctx)
        part = os.path.join(staging, "model.safetensors.part")

        p = Pull(ctx, hub, "org/tiny", staging).go()
        wait_until(lambda: os.path.exists(part) and os.path.getsize(part) == cut, "the .part to reach the stall")
        p.proc.send_signal(signal.SIGTERM)
        status, last = p.finish()
        expect_failed(p, status, last, "cancelled")
        names = staged(staging)
        assert "model.safetensors.part" in names and "model.safetensors" not in names, names
        # What is not a .part is a whole, verified file.
        for name in names:
                if not name.endswith(".part"):
                        assert read(os.path.join(staging, name)) == read(os.path.join(source, name)), name


def test_pull_low_speed_timeout_retries(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="2M", extras=False)
        cut = 300000
        # Stalls until the hub exits: only the low-speed timeout ends it.
        hub.control(stall=[{"file": "model.safetensors", "after": cut, "times": 1}])
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging, test_args=["--test-low-speed-sec=1"])
        expect_done(p, status, last)
        assert read(os.path.join(staging, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))
        requests = weights_requests(hub)
        assert [r["range"] for r in requests] == [None, f"bytes={cut}-"], requests


def test_pull_refuses_redirects_out_of_http(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        secret = os.path.join(ctx.dir, "secret.txt")
        with open(secret, "w") as f:
                f.write("{}")
        hub.control(redirect={"config.json": f"file://{secret}"})
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging)
        expect_failed(p, status, last, "protocol")
        assert "config.json" in " ".join(last), last
        assert "config.json" not in staged(staging)


def test_pull_network_unreachable(ctx):
        hub = FakeHub(ctx)
        # A port nothing listens on.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging, endpoint=f"http://127.0.0.1:{port}", inspect=True)
        expect_failed(p, status, last, "network")


def test_pull_storage_full(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="4M", extras=False)
        staging = new_staging(ctx)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "mpool-test", staging], check=True)
        try:
                p, status, last = run_pull(ctx, hub, "org/tiny", staging)
                expect_failed(p, status, last, "storage")
                assert "model.safetensors" in " ".join(last), last
                assert "model.safetensors" not in staged(staging)
        finally:
                subprocess.run(["umount", staging], check=True)


def hostile_infos(commit):
        def info(siblings, sha=commit):
                return json.dumps({"sha": sha, "siblings": siblings})

        weights = {"rfilename": "model.safetensors", "size": 16,
                   "lfs": {"sha256": "0" * 64, "size": 16}}
        yield "dot-dot", info([weights, {"rfilename": "../../evil.json", "size": 1}])
        yield "dot-dot-inside", info([weights, {"rfilename": "a/../config.json", "size": 1}])
        yield "absolute", info([weights, {"rfilename": "/etc/passwd", "size": 1}])
        yield "too-long", info([weights, {"rfilename": "x" * 300, "size": 1}])
        yield "control-character", info([weights, {"rfilename": "conf\nig.json", "size": 1}])
        yield "empty-component", info([weights, {"rfilename": "a//b", "size": 1}])
        yield "listed-twice", info([weights, weights])
        yield "bad-sha", info([weights], sha="not-a-commit")
        yield "short-sha", info([weights], sha=commit[:39])
        yield "no-sha", json.dumps({"siblings": [weights]})
        yield "bad-lfs-sha256", info([{"rfilename": "model.safetensors", "size": 16, "lfs": {"sha256": "zz"}}])
        yield "negative-size", info([{"rfilename": "model.safetensors", "size": -16}])
        yield "sizes-differ", info([{"rfilename": "model.safetensors", "size": 16,
                                     "lfs": {"sha256": "0" * 64, "size": 17}}])
        yield "not-json", '{"sha": "' + commit + '", "siblings": [}'
        yield "not-an-object", "[]"
        yield "too-many-files", info([weights] + [{"rfilename": f"f{i}", "size": 1} for i in range(100000)])


def test_pull_refuses_hostile_model_info(ctx):
        hub = FakeHub(ctx)
        directory = hub.repo("org/evil")
        commit = hub.commit("org/evil")
        parent = os.path.join(ctx.dir, "parent")
        staging = os.path.join(parent, "staging")
        os.makedirs(staging)

        for name, text in hostile_infos(commit):
                with open(os.path.join(directory, ".info.json"), "w") as f:
                        f.write(text)
                p = Pull(ctx, hub, "org/evil", staging)
                status, last = p.finish()
                expect_failed(p, status, last, "protocol")
                assert not p.words("READY"), f"{name}: {p.output()}"
                assert os.listdir(parent) == ["staging"] and staged(staging) == [], f"{name}: {os.listdir(parent)}"
                # A message says what is wrong, never quoting the name.
                assert "evil" not in " ".join(last[2:]) and "passwd" not in " ".join(last[2:]), f"{name}: {last}"


def test_pull_refuses_an_index_naming_other_paths(ctx):
        hub = FakeHub(ctx)
        directory = hub.repo("org/evil")
        staging = new_staging(ctx)
        for shard in ("../model.safetensors", "config.json", "missing.safetensors"):
                with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
                        json.dump({"weight_map": {"w": shard}}, f)
                with open(os.path.join(directory, "config.json"), "w") as f:
                        f.write("{}")
                p = Pull(ctx, hub, "org/evil", staging)
                status, last = p.finish()
                expect_failed(p, status, last, "protocol")
                assert staged(staging) == [], staged(staging)


def safetensors_summary(path):
        with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        tensors = parameters = 0
        dtypes = {}
        for name, t in header.items():
                if name == "__metadata__":
                        continue
                elements = 1
                for d in t["shape"]:
                        elements *= d
                tensors += 1
                parameters += elements
                dtypes[t["dtype"]] = dtypes.get(t["dtype"], 0) + elements
        return tensors, parameters, dtypes


def test_pull_inspect_reads_only_headers(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="3M", shards=3, dtype="F16", extras=False)
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/tiny", staging, inspect=True)
        expect_done(p, status, last)

        shards = sorted(f for f in os.listdir(source) if f.endswith(".safetensors"))
        tensors = parameters = memory = 0
        dtypes = {}
        for shard in shards:
                t, n, d = safetensors_summary(os.path.join(source, shard))
                tensors += t
                parameters += n
                for k, v in d.items():
                        dtypes[k] = dtypes.get(k, 0) + v
                memory += page_align(os.path.getsize(os.path.join(source, shard)))
        assert p.words("TENSORS") == [["TENSORS", str(tensors)]], p.output()
        assert p.words("PARAMETERS") == [["PARAMETERS", str(parameters)]], p.output()
        assert p.words("DTYPE") == [["DTYPE", k, str(v)] for k, v in sorted(dtypes.items())], p.output()
        assert p.words("MEMORY") == [["MEMORY", str(memory)]], p.output()
        assert not p.words("READY")
        assert staged(staging) == []

        # Two small Range requests per shard, nothing more of the weights.
        # The hub logs a request once it has answered it, so the second may
        # be logged first.
        for shard in shards:
                requests = weights_requests(hub, shard)
                with open(os.path.join(source, shard), "rb") as f:
                        (n,) = struct.unpack("<Q", f.read(8))
                assert sorted(r["range"] for r in requests) == ["bytes=0-7", f"bytes=8-{8 + n - 1}"], requests
                assert sum(r["bytes"] for r in requests) == 8 + n, requests


def test_pull_inspect_refuses_a_bad_header(ctx):
        hub = FakeHub(ctx)
        directory = hub.repo("org/bad")
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}).encode()
        header += b" " * ((8 - len(header) % 8) % 8)
        with open(os.path.join(directory, "model.safetensors"), "wb") as f:
                f.write(struct.pack("<Q", len(header)) + header + b"\0" * 16)
        staging = new_staging(ctx)

        p, status, last = run_pull(ctx, hub, "org/bad", staging, inspect=True)
        expect_failed(p, status, last, "protocol")
        assert "model.safetensors" in " ".join(last), last


def test_pull_usage_errors_say_failed(ctx):
        build = os.path.join(ctx.suite.build_dir, "mpool-pull")
        for args in ([], ["--endpoint=ftp://x", "--repo=a/b", "--revision=main", "--staging=/tmp"],
                     ["--endpoint=http://127.0.0.1:1", "--repo=../x", "--revision=main", "--staging=/tmp"],
                     ["--endpoint=http://127.0.0.1:1", "--repo=a/b", "--revision=main", "--staging=/tmp",
                      "--parallel=0"],
                     # The test build's options: the installed helper has none.
                     ["--endpoint=http://127.0.0.1:1", "--repo=a/b", "--revision=main", "--staging=/tmp",
                      "--test-backoff-msec=20"],
                     ["--endpoint=http://127.0.0.1:1", "--repo=a/b", "--revision=main", "--staging=/tmp",
                      "--test-low-speed-sec=1"]):
                proc = subprocess.run([build] + args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                      timeout=RUN_TIMEOUT)
                assert proc.returncode != 0, args
                assert proc.stdout.startswith("FAILED internal "), (args, proc.stdout)
