# SPDX-License-Identifier: MIT
"""mpool-client against the real daemon: every verb, its JSON parsed and
checked, the exit status of each class of error, holds released when the
client exits or is killed, the progress bar on a pseudo-terminal and none of
it through a pipe, Ctrl-C cancelling a load, monitor --json, and top on a
real terminal (tmux).

Where the real daemon cannot be made to do something on cue, a stand-in
(FAKE_MANAGER) owns org.mpool.Manager instead: a Load that waits until the
test lets it finish, as one waiting for polkit does. Where the shared private
bus cannot do something, a test starts a bus of its own (OwnBus): D-Bus
activation of mpoold, bus limits.

Every wait is for a real event (a line printed, a Status value, a pane's
text) with the harness's deadline; nothing sleeps to synchronise."""

import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import tempfile
import termios
import threading
import time

import dbus

from harness import (BUS_NAME, DEADLINE, ERROR_CANCELLED, MODEL_STATUS_DEFAULTS, GiB, MiB, NOBODY_UID, PyClient,
                     model_path, now_usec, wait_until, write_config_json, write_safetensors_raw, safetensors_header,
                     write_sparse_model)

ESC = "\x1b"

# Exit statuses documented in mpool-client(1).
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NO_MEMORY = 5
EXIT_INVALID_MODEL = 6
EXIT_UNREACHABLE = 7
EXIT_PINNED = 8
EXIT_CANCELLED = 9
EXIT_BUSY = 10
EXIT_INTERRUPTED = 130

POLKIT_AGENT = "/usr/bin/pkttyagent"

POOL_KEYS = {"version": str, "memory_total": int, "memory_available": int, "memory_limit": int,
             "memory_used": int, "models_loaded": int, "idle_timeout_sec": int, "idle_policy": str,
             "uptime_usec": int, "blas_core": str}
MODEL_KEYS = {"name": str, "state": str, "size_bytes": int, "memory_bytes": int, "memory_percent": (int, float),
              "memory_limit_percent": (int, float), "pinned": bool, "holds": int, "loaded_at_usec": int,
              "last_used_usec": int, "expires_at_usec": int, "requests_total": int, "error": str}


def client_path(ctx):
        path = os.path.join(ctx.suite.build_dir, "mpool-client")
        assert os.access(path, os.X_OK), f"{path} is missing; run make first"
        return path


def client_argv(ctx, d, *args):
        return [client_path(ctx), f"--address={d.address}", *args]


def client_env(**extra):
        env = dict(os.environ)
        env.pop("NO_COLOR", None)
        env.pop("PAGER", None)
        env.pop("MPOOL_PAGER", None)
        env.update(extra)
        return env


def run(ctx, d, *args, expect=0, env=None, timeout=DEADLINE * 4):
        """Runs mpool-client with pipes for stdout and stderr; checks its exit
        status (None: any) and returns the CompletedProcess."""
        proc = subprocess.run(client_argv(ctx, d, *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=timeout, env=env or client_env())
        if expect is not None:
                assert proc.returncode == expect, \
                        f"mpool-client {' '.join(args)} exited with {proc.returncode}, not {expect}\n" \
                        f"stdout: {proc.stdout!r}\nstderr: {proc.stderr!r}"
        return proc


def run_json(ctx, d, *args):
        proc = run(ctx, d, "--json", *args)
        assert ESC not in proc.stdout, proc.stdout
        return json.loads(proc.stdout)


def strip_colors(text):
        return re.sub(ESC + r"\[[0-9;]*m", "", text)


def check_error(proc, *words):
        """The failure is one line on stderr that says what happened in words,
        not a D-Bus error name."""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got {proc.stderr!r}"
        assert "org.freedesktop" not in lines[0] and "org.mpool.Error" not in lines[0], lines[0]
        assert ESC not in lines[0], f"escape codes on a pipe: {lines[0]!r}"
        for w in words:
                assert w in lines[0], f"{w!r} not in {lines[0]!r}"
        return lines[0]


def check_types(obj, spec, what):
        assert set(spec) <= set(obj), f"{what} lacks {set(spec) - set(obj)}: {obj}"
        for key, types in spec.items():
                assert isinstance(obj[key], types) and not (types is int and isinstance(obj[key], bool)), \
                        f"{what}[{key}] is {obj[key]!r}, not {types}"


def setpriv_nobody(*argv):
        return ["/usr/bin/setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--clear-groups", *argv]


def process_children(pid):
        """(pid, comm, state) of every process whose parent is pid."""
        children = []
        for entry in os.listdir("/proc"):
                if not entry.isdigit():
                        continue
                try:
                        with open(f"/proc/{entry}/stat") as f:
                                stat = f.read()
                except OSError:
                        continue
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
                if int(ppid) == pid:
                        children.append((int(entry), comm, state))
        return children


def process_gone(pid):
        """The process has exited (a zombie nobody reaps counts as gone)."""
        try:
                with open(f"/proc/{pid}/stat") as f:
                        stat = f.read()
        except OSError:
                return True
        return stat[stat.rindex(")") + 2:].split()[0] in ("Z", "X")


class PtyRun:
        """mpool-client on a pseudo-terminal of a given size: its output is
        collected as it comes; keys can be typed into it."""

        def __init__(self, argv, env, rows=40, columns=120):
                self.output = b""
                self.pid, self.fd = pty.fork()
                if self.pid == 0:
                        try:
                                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
                                # As a login on a terminal starts: the test
                                # runner may run with SIGINT and SIGQUIT
                                # ignored (a background job of a script).
                                for sig in (signal.SIGINT, signal.SIGQUIT):
                                        signal.signal(sig, signal.SIG_DFL)
                                os.execve(argv[0], argv, env)
                        finally:
                                os._exit(127)
                self.status = None

        def read_until(self, predicate, what, timeout=DEADLINE):
                """Reads until predicate(output so far) holds or the program exits."""
                deadline = time.monotonic() + timeout
                while not predicate(self.output):
                        if time.monotonic() >= deadline:
                                raise AssertionError(f"timed out waiting for {what}; output: {self.output[-2000:]!r}")
                        ready, _, _ = select.select([self.fd], [], [], 0.1)
                        if ready:
                                try:
                                        data = os.read(self.fd, 65536)
                                except OSError:         # EIO: the program is gone
                                        data = b""
                                if not data:
                                        if not predicate(self.output):
                                                raise AssertionError(f"the program exited before {what}; "
                                                                     f"output: {self.output[-2000:]!r}")
                                        return
                                self.output += data
                return self.output

        def type(self, keys):
                os.write(self.fd, keys)

        def wait(self, timeout=DEADLINE):
                """Reads the rest and returns the exit status."""
                try:
                        self.read_until(lambda out: False, "the end", timeout=timeout)
                except AssertionError as e:
                        if "exited before" not in str(e):
                                self.kill()
                                raise
                deadline = time.monotonic() + timeout
                while True:
                        pid, status = os.waitpid(self.pid, os.WNOHANG)
                        if pid:
                                self.status = os.waitstatus_to_exitcode(status)
                                break
                        assert time.monotonic() < deadline, "mpool-client did not exit"
                        time.sleep(0.02)
                os.close(self.fd)
                return self.status

        def kill(self):
                if self.status is None:
                        try:
                                os.kill(self.pid, signal.SIGKILL)
                                os.waitpid(self.pid, 0)
                        except (ProcessLookupError, ChildProcessError):
                                pass
                        try:
                                os.close(self.fd)
                        except OSError:
                                pass
                        self.status = -9


# ---------------------------------------------------------------------------
# status, list


def test_client_status_and_list(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("demo/beta", size="2M")
        d = ctx.daemon()
        d.load("alpha")
        _, daemon_models = d.status()

        status = run_json(ctx, d, "status")
        assert set(status) == {"pool", "models"}, status
        check_types(status["pool"], POOL_KEYS, "pool")
        assert status["pool"]["models_loaded"] == 1, status["pool"]
        assert status["pool"]["memory_limit"] == 512 * MiB, status["pool"]
        assert status["pool"]["idle_timeout_sec"] == 300, status["pool"]
        models = {m["name"]: m for m in status["models"]}
        assert set(models) == {"alpha", "demo/beta"}, models
        for name, m in models.items():
                check_types(m, MODEL_KEYS, name)
                assert m["size_bytes"] == daemon_models[name]["size_bytes"], (m, daemon_models[name])
        assert models["alpha"]["state"] == "loaded" and models["alpha"]["memory_bytes"] > 0, models["alpha"]
        assert models["alpha"]["memory_bytes"] == daemon_models["alpha"]["memory_bytes"]
        assert models["demo/beta"]["state"] == "available" and models["demo/beta"]["memory_bytes"] == 0

        # Named models only; pretty JSON parses the same.
        only = run_json(ctx, d, "status", "demo/beta")
        assert [m["name"] for m in only["models"]] == ["demo/beta"], only
        pretty = run(ctx, d, "--json=pretty", "status").stdout
        assert pretty.count("\n") > 10, pretty
        assert json.loads(pretty)["pool"]["version"] == status["pool"]["version"]

        listed = run_json(ctx, d, "list")
        assert isinstance(listed, list), listed
        assert {m["name"]: (m["state"], m["size_bytes"]) for m in listed} == \
                {n: (m["state"], m["size_bytes"]) for n, m in daemon_models.items()}, listed

        # Tables through a pipe: aligned, a header, no escape codes.
        text = run(ctx, d, "list").stdout
        assert ESC not in text, text
        lines = text.splitlines()
        assert lines[0].split() == ["NAME", "STATE", "SIZE", "SOURCE"], lines
        assert re.match(r"^alpha\s+loaded\s+4\.0M\s+store$", lines[1]), lines
        assert re.match(r"^demo/beta\s+available\s+2\.0M\s+store$", lines[2]), lines
        assert lines[1].index("loaded") == lines[2].index("available") == lines[0].index("STATE"), lines
        assert "2 models listed." in text, text
        bare = run(ctx, d, "list", "--no-legend").stdout
        assert [line.split()[0] for line in bare.splitlines()] == ["alpha", "demo/beta"], bare

        text = run(ctx, d, "status").stdout
        assert ESC not in text, text
        assert re.search(r"Memory: 4\.0M used", text), text
        assert re.search(r"Models: 1 loaded, 2 known", text), text
        row = next(line for line in text.splitlines() if line.startswith("alpha "))
        assert row.split()[:3] == ["alpha", "loaded", "4.0M"], row
        assert row.split()[-1] == "1", f"requests of alpha: {row}"
        # Without a command, status.
        assert run(ctx, d).stdout.splitlines()[0] == text.splitlines()[0]

        details = run(ctx, d, "status", "alpha").stdout
        assert re.search(r"^\s+State: loaded$", details, re.M), details
        assert re.search(r"^\s+Memory: 4\.0M \(", details, re.M), details
        assert re.search(r"^\s+Expires: .*; in [45]min", details, re.M), details

        proc = run(ctx, d, "status", "nope", expect=EXIT_NOT_FOUND)
        check_error(proc, "Model nope not found.")


def test_client_status_json_has_every_key(ctx):
        """Status leaves out a model's keys at their default; the client puts
        them back, in the daemon's order, so scripts reading --json find
        them all."""
        ctx.model("alpha", size="2M")
        d = ctx.daemon()
        _, (raw,) = d.py.call("Status")
        assert "error" not in raw and "holds" not in raw and "pinned" not in raw, raw

        for args in (("status",), ("status", "alpha")):
                (m,) = run_json(ctx, d, *args)["models"]
                assert list(m) == ["name", "state", *MODEL_STATUS_DEFAULTS], list(m)
                check_types(m, MODEL_KEYS, "alpha")
                assert m["name"] == "alpha" and m["state"] == "available", m
                assert m["error"] == "" and m["holds"] == 0 and m["pinned"] is False, m
                assert m["memory_bytes"] == 0 and m["memory_percent"] == 0 and m["loaded_at_usec"] == 0, m
                assert m["memory_by_precision"] == {} and m["revision"] == "", m
                # What was sent is as sent.
                for key, value in raw.items():
                        assert m[key] == value, (key, m[key], value)


def test_client_pager_for_long_output(ctx):
        for i in range(12):
                ctx.model(f"m{i:02d}", size="64K")
        d = ctx.daemon()
        env = client_env(PAGER="sed 's/^/PAGED:/'", LC_ALL="C")

        # Longer than an 8-row terminal: through $PAGER.
        term = PtyRun(client_argv(ctx, d, "list"), env, rows=8)
        assert term.wait() == 0
        out = term.output.decode(errors="replace")
        assert "PAGED:" in out and "m11" in out, out

        # Shorter than the terminal, or --no-pager: straight out.
        for argv, rows in ((client_argv(ctx, d, "list"), 40), (client_argv(ctx, d, "--no-pager", "list"), 8)):
                term = PtyRun(argv, env, rows=rows)
                assert term.wait() == 0
                out = term.output.decode(errors="replace")
                assert "PAGED:" not in out and "m11" in out, out

        # Our options for less replace the user's $LESS (without R our colors
        # would show as escape codes), for $PAGER too; $MPOOL_LESS sets them.
        for extra, expected in (({"LESS": "-i"}, "FRSXMK"), ({"LESS": "-i", "MPOOL_LESS": "FRX"}, "FRX")):
                env = client_env(PAGER='echo "LESS=[$LESS]"; cat > /dev/null', LC_ALL="C", **extra)
                term = PtyRun(client_argv(ctx, d, "list"), env, rows=8)
                assert term.wait() == 0
                out = term.output.decode(errors="replace")
                assert f"LESS=[{expected}]" in out, (extra, out)


# ---------------------------------------------------------------------------
# load, unload


def test_client_load_and_unload(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("beta", size="2M")
        ctx.model("gamma", size="1M")
        d = ctx.daemon()

        loaded = run_json(ctx, d, "load", "alpha")
        assert set(loaded) == {"name", "path", "memory_bytes"}, loaded
        assert loaded["name"] == "alpha" and loaded["path"] == model_path("alpha"), loaded
        m = d.model("alpha")
        assert m["state"] == "loaded" and loaded["memory_bytes"] == m["memory_bytes"] > 0, (loaded, m)

        # Piped: the result only, no progress, no escape codes.
        proc = run(ctx, d, "load", "beta")
        assert proc.stdout.startswith("Loaded beta: 2.0M in memory"), proc.stdout
        assert proc.stdout.count("\n") == 1 and proc.stderr == "", (proc.stdout, proc.stderr)
        proc = run(ctx, d, "load", "beta")
        assert proc.stdout == "beta is loaded: 2.0M in memory.\n", proc.stdout
        assert run(ctx, d, "-q", "load", "gamma").stdout == ""

        # Keep-alive and pin reach the daemon.
        run(ctx, d, "unload", "gamma")
        before = now_usec()
        run(ctx, d, "load", "gamma", "--keep-alive=5min")
        m = d.model("gamma")
        assert before + 290 * 10**6 <= m["expires_at_usec"] <= now_usec() + 300 * 10**6, m

        run(ctx, d, "unload", "beta")
        run(ctx, d, "load", "beta", "--pin", "--keep-alive=infinity")
        m = d.model("beta")
        assert m["pinned"] is True and m["expires_at_usec"] == 0, m

        proc = run(ctx, d, "unload", "beta", expect=EXIT_PINNED)
        check_error(proc, "beta", "pinned", "--force")
        assert d.model("beta")["state"] == "loaded"

        assert run_json(ctx, d, "unload", "alpha") == {"unloaded": ["alpha"]}
        assert d.model("alpha")["state"] == "available"
        assert run_json(ctx, d, "unload", "alpha") == {"unloaded": []}
        assert run(ctx, d, "unload", "alpha").stdout == "alpha was not loaded.\n"
        proc = run(ctx, d, "unload", "nope", expect=EXIT_NOT_FOUND)
        check_error(proc, "Model nope not found.")

        # --all leaves the pinned model unless forced.
        run(ctx, d, "load", "alpha")
        unloaded = run_json(ctx, d, "unload", "--all")
        assert sorted(unloaded["unloaded"]) == ["alpha", "gamma"], unloaded
        assert d.model("beta")["state"] == "loaded"
        assert run_json(ctx, d, "unload", "--all", "--force") == {"unloaded": ["beta"]}
        pool, _ = d.status()
        assert pool["models_loaded"] == 0 and pool["memory_used"] == 0, pool


def test_client_load_progress_on_terminal(ctx):
        ctx.model("alpha", size="64M")
        d = ctx.daemon()

        term = PtyRun(client_argv(ctx, d, "load", "alpha"), client_env(LC_ALL="C", TERM="xterm"))
        assert term.wait() == 0, term.output
        raw = term.output.decode(errors="replace")
        assert ESC + "[K" in raw, raw
        out = strip_colors(raw)
        assert re.search(r"\rLoading alpha \[-+\]\s+0% 0B/64\.0M", out), out
        assert re.search(r"\rLoading alpha \[#+\]\s+100% 64\.0M/64\.0M", out), out
        assert "Loaded alpha: 64.0M in memory" in out, out
        assert d.model("alpha")["state"] == "loaded"

        # The same through pipes: the result and nothing else.
        d.unload("alpha")
        proc = run(ctx, d, "load", "alpha")
        assert ESC not in proc.stdout + proc.stderr and "\r" not in proc.stdout + proc.stderr, proc
        assert re.fullmatch(r"Loaded alpha: 64\.0M in memory, in \S+\.\n", proc.stdout), proc.stdout
        assert proc.stderr == ""


def fresh_huge_models(ctx):
        """Sparse models of 1 and 4 GiB, never read before: reading them takes
        long enough to interrupt. Yields their names, removing each after."""
        for size in (1 * GiB, 4 * GiB):
                name = f"huge-{size // GiB}g-{int(time.monotonic() * 1000)}"
                write_sparse_model(os.path.join(ctx.store, name), size)
                try:
                        yield name
                finally:
                        shutil.rmtree(os.path.join(ctx.store, name), ignore_errors=True)


def test_client_ctrl_c_cancels_its_load(ctx):
        d = ctx.daemon(MemoryLimit="12G", IdleTimeoutSec="300")
        for name in fresh_huge_models(ctx):
                # The daemon rescans its store for a name it does not know yet.
                term = PtyRun(client_argv(ctx, d, "load", name), client_env(LC_ALL="C", TERM="xterm"))
                try:
                        # A frame past 0%: the loader is in the middle of it.
                        term.read_until(lambda out: re.search(rb"\s([1-9]\d?)% ", out) or b"Loaded" in out,
                                        "progress past 0%")
                        if b"Loaded" in term.output:
                                assert term.wait() == 0
                                d.unload(name)
                                continue
                        term.type(b"\x03")
                        status = term.wait()
                finally:
                        term.kill()
                out = term.output.decode(errors="replace")
                if status == 0:         # finished just before Ctrl-C arrived
                        d.unload(name)
                        continue
                assert status == EXIT_INTERRUPTED, (status, out)
                assert f"Cancelled loading {name}." in out, out
                m = d.model(name)
                assert m["state"] in ("available", "error") and m["memory_bytes"] == 0, m
                failed = ctx.monitor.wait_signal("LoadFailed", name)
                assert failed.args[1] == ERROR_CANCELLED, failed
                ctx.sync()
                assert ctx.monitor.signals("ModelLoaded", name) == [], "the cancelled load completed"
                return
        raise AssertionError("both loads (1 GiB, 4 GiB) completed before Ctrl-C: cancellation untested")


def start_client(ctx, d, *args):
        return ctx.spawn(client_argv(ctx, d, *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=client_env())


def load_started(ctx, name):
        return any(s.args[1] == 0 for s in ctx.monitor.signals("LoadProgress", name))


def test_client_exit_status_cancelled(ctx):
        ctx.model("held", size="1M")
        gate = ctx.gate("held")
        d = ctx.daemon(gates=True)
        proc = start_client(ctx, d, "load", "held")
        ctx.monitor.wait(lambda sigs: load_started(ctx, "held") or proc.poll() is not None,
                         "the load of held to start")
        assert proc.poll() is None, proc.communicate()
        d.unload("held")
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == EXIT_CANCELLED, (proc.returncode, out, err)
        assert "held" in err and "cancelled" in err, err
        assert out == "", out
        gate.release()


def test_client_exit_status_busy(ctx):
        """MaxConcurrentLoads= loads run, MaxQueuedLoads= more wait their
        turn, and only a load beyond both is Busy."""
        for name in ("running", "queued", "refused"):
                ctx.model(name, size="1M")
        gate = ctx.gate("running")
        d = ctx.daemon(MaxConcurrentLoads="1", MaxQueuedLoads="1", gates=True)
        running = start_client(ctx, d, "load", "running")
        ctx.monitor.wait(lambda sigs: load_started(ctx, "running") or running.poll() is not None,
                         "the load of running to start")
        assert running.poll() is None, running.communicate()
        queued = start_client(ctx, d, "load", "queued")
        wait_until(lambda: d.model("queued")["state"] == "loading" or queued.poll() is not None,
                   "queued to be queued")

        proc = run(ctx, d, "load", "refused", expect=None)
        assert proc.returncode == EXIT_BUSY, (proc.returncode, proc.stdout, proc.stderr)
        check_error(proc, "refused", "busy")

        # Nothing was lost: the queued load runs once the held one is done.
        gate.release()
        for p in (running, queued):
                out, err = p.communicate(timeout=DEADLINE)
                assert p.returncode == 0, (p.returncode, out, err)
        assert d.model("queued")["state"] == "loaded"
        run(ctx, d, "load", "refused")


def test_client_exit_status_per_error(ctx):
        ctx.model("alpha", size="16M")
        header, length = safetensors_header([("w", "F32", [256 * 1024], MiB)])
        directory = os.path.join(ctx.store, "truncated")
        write_config_json(directory)
        write_safetensors_raw(os.path.join(directory, "model.safetensors"), header, b"\0" * (length // 2))
        d = ctx.daemon(MemoryLimit="8M")

        check_error(run(ctx, d, "load", "demo/nope", expect=EXIT_NOT_FOUND), "Model demo/nope not found.")
        check_error(run(ctx, d, "hold", "nope", "--", "true", expect=EXIT_NOT_FOUND), "Model nope not found.")
        check_error(run(ctx, d, "load", "truncated", expect=EXIT_INVALID_MODEL), "truncated")
        check_error(run(ctx, d, "load", "alpha", expect=EXIT_NO_MEMORY), "alpha", "memory")
        assert d.model("alpha")["state"] != "loaded"

        # Usage errors: checked before anything is asked.
        check_error(run(ctx, d, "load", "bad name", expect=EXIT_USAGE), "Invalid model name", "bad name")
        check_error(run(ctx, d, "status", "a/b/c", expect=EXIT_USAGE), "Invalid model name")
        check_error(run(ctx, d, "frobnicate", expect=EXIT_USAGE), "frobnicate")
        check_error(run(ctx, d, "load", expect=EXIT_USAGE), "load")
        check_error(run(ctx, d, "unload", expect=EXIT_USAGE), "--all")
        check_error(run(ctx, d, "status", "--pin", expect=EXIT_USAGE), "--pin")
        check_error(run(ctx, d, "load", "alpha", "--keep-alive=soon", expect=EXIT_USAGE), "soon")
        check_error(run(ctx, d, "set", "memory-limit", "lots", expect=EXIT_USAGE), "lots")
        run(ctx, d, "--no-such-option", expect=EXIT_USAGE)
        # A malformed bus address is a usage error too, not a bus out of reach.
        for address in ("garbage", "unix:path", "unix:path=%zz", "frob:x=y", ";"):
                proc = subprocess.run([client_path(ctx), f"--address={address}", "status"], stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, timeout=DEADLINE)
                assert proc.returncode == EXIT_USAGE, (address, proc)
                check_error(proc, "Invalid bus address", address)

        # The daemon gone: unreachable, and how to start it.
        d.stop()
        for args in (("status",), ("load", "alpha"), ("unload", "alpha"), ("hold", "alpha", "--", "true")):
                check_error(run(ctx, d, *args, expect=EXIT_UNREACHABLE), "not running", "systemctl start mpoold")
        proc = subprocess.run([client_path(ctx), "--address=unix:path=" + os.path.join(ctx.dir, "no-bus"),
                               "status"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=DEADLINE)
        assert proc.returncode == EXIT_UNREACHABLE, proc
        check_error(proc, "Cannot connect")


def test_client_set(ctx):
        d = ctx.daemon()
        check_error(run(ctx, d, "set", "idle-timeout", "soon", expect=EXIT_USAGE), "soon")
        check_error(run(ctx, d, "set", "colour", "blue", expect=EXIT_USAGE), "colour")

        for args, key, value in ((("memory-limit", "256M"), "memory_limit", 256 * MiB),
                                 (("idle-timeout", "1h 30min"), "idle_timeout_sec", 5400),
                                 (("idle-timeout", "infinity"), "idle_timeout_sec", -1)):
                proc = run(ctx, d, "--json", "set", *args, expect=0)
                assert json.loads(proc.stdout) == {key: value}, proc.stdout
                pool, _ = d.status()
                assert pool[key] == value, pool

        # The daemon's own refusal reaches the user in words: 0 is no limit.
        check_error(run(ctx, d, "set", "memory-limit", "0", expect=None), "memory")


# ---------------------------------------------------------------------------
# hold


def test_client_hold_runs_command_and_releases(ctx):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(IdleTimeoutSec="300")
        seen = os.path.join(ctx.dir, "seen.json")
        script = f"{client_path(ctx)} --address='{d.address}' --json status alpha > '{seen}'; exit 5"
        proc = run(ctx, d, "hold", "alpha", "--", "/bin/sh", "-c", script, expect=5)
        assert proc.stderr == "", proc.stderr
        with open(seen) as f:
                inside = json.load(f)["models"][0]
        assert inside["state"] == "loaded" and inside["holds"] == 1, inside
        m = d.model("alpha")
        assert m["holds"] == 0 and m["expires_at_usec"] > 0, m

        # A command killed by a signal: 128 + the signal, and released too.
        run(ctx, d, "hold", "alpha", "--", "/bin/sh", "-c", "kill -TERM $$", expect=128 + signal.SIGTERM)
        assert d.model("alpha")["holds"] == 0
        run(ctx, d, "hold", "alpha", "--", os.path.join(ctx.dir, "no-such-command"), expect=127)
        assert d.model("alpha")["holds"] == 0

        # Ctrl-C on a terminal reaches the command; the hold goes when it does.
        term = PtyRun(client_argv(ctx, d, "hold", "alpha", "--", "/bin/sh", "-c", "echo started; sleep 300"),
                      client_env())
        try:
                term.read_until(lambda out: b"started" in out, "the held command to start")
                assert d.model("alpha")["holds"] == 1
                term.type(b"\x03")
                assert term.wait() == 128 + signal.SIGINT, term.output
        finally:
                term.kill()
        assert d.model("alpha")["holds"] == 0


def test_client_hold_dropped_when_client_is_killed(ctx):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(IdleTimeoutSec="300")
        # cat waits on a pipe of ours, so it ends when we close it.
        holder = ctx.spawn(client_argv(ctx, d, "hold", "alpha", "--", "cat"), stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=client_env())
        d.wait_model("alpha", lambda m: m["holds"] == 1, "the hold of mpool-client")
        holder.kill()
        holder.wait(timeout=DEADLINE)
        d.wait_model("alpha", lambda m: m["holds"] == 0, "the hold dropped after SIGKILL of mpool-client")
        holder.stdin.close()

        # Killed politely, it passes the signal on and releases the hold itself.
        holder = ctx.spawn(client_argv(ctx, d, "hold", "alpha", "--", "sleep", "300"), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=client_env())
        d.wait_model("alpha", lambda m: m["holds"] == 1, "the second hold")
        holder.terminate()
        assert holder.wait(timeout=DEADLINE) == 128 + signal.SIGTERM
        assert d.model("alpha")["holds"] == 0


def test_client_hold_starts_the_command_with_our_signal_state(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon(IdleTimeoutSec="300")

        # A signal ignored by whoever started us (nohup, trap '') stays
        # ignored in the command: we never changed it, only blocked it.
        hold = " ".join(shlex.quote(a) for a in client_argv(ctx, d, "hold", "alpha", "--", "/bin/sh", "-c",
                                                              "kill -HUP $$; echo ok"))
        proc = subprocess.run(["/bin/bash", "-c", f"trap '' HUP; {hold}"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=DEADLINE * 2, env=client_env())
        assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc
        assert d.model("alpha")["holds"] == 0

        # The command gets the signal mask we were started with: neither
        # ours (we block what we handle) nor an empty one.
        def block_usr1():
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

        def blocked_mask(argv):
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                      timeout=DEADLINE * 2, env=client_env(), preexec_fn=block_usr1)
                assert proc.returncode == 0, proc
                return int(proc.stdout.split()[1], 16)
        expected = blocked_mask(["grep", "^SigBlk:", "/proc/self/status"])
        assert expected & (1 << (signal.SIGUSR1 - 1)), hex(expected)
        held = blocked_mask(client_argv(ctx, d, "hold", "alpha", "--", "grep", "^SigBlk:", "/proc/self/status"))
        assert held == expected, f"the command's blocked signals are {held:#x}, not {expected:#x}"


# ---------------------------------------------------------------------------
# monitor


class MonitorRun:
        def __init__(self, ctx, d, *args, stdout_path=None):
                self.out_path = os.path.join(ctx.dir, f"client-monitor-{len(ctx.children)}.out")
                self.err_path = self.out_path + ".err"
                if stdout_path:
                        self.out_path = stdout_path
                with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
                        self.proc = ctx.spawn(client_argv(ctx, d, "monitor", *args), stdin=subprocess.DEVNULL,
                                              stdout=out, stderr=err, env=client_env())
                wait_until(lambda: self.proc.poll() is not None or "Monitoring" in self.err(),
                           "mpool-client monitor to subscribe")
                assert self.proc.poll() is None, f"monitor exited with {self.proc.returncode}: {self.err()}"

        def err(self):
                with open(self.err_path, errors="replace") as f:
                        return f.read()

        def text(self):
                with open(self.out_path, errors="replace") as f:
                        return f.read()

        def lines(self):
                return [line for line in self.text().split("\n")[:-1]]

        def wait_line(self, predicate, what):
                return wait_until(lambda: next((line for line in self.lines() if predicate(line)), None), what)

        def stop(self, sig=signal.SIGINT):
                self.proc.send_signal(sig)
                return self.proc.wait(timeout=DEADLINE)


def test_client_monitor_json(ctx):
        ctx.model("alpha", size="8M")
        ctx.model("beta", size="1M")
        d = ctx.daemon()
        everything = MonitorRun(ctx, d, "--json")
        only_alpha = MonitorRun(ctx, d, "alpha")

        started = now_usec()
        d.load("beta")
        d.load("alpha")
        d.unload("alpha")
        try:
                d.py.load("nope")
        except dbus.exceptions.DBusException:
                pass

        def events():
                return [json.loads(line) for line in everything.lines()]
        wait_until(lambda: any(e["event"] == "load-failed" for e in events()), "the load-failed event")
        evs = events()
        for e in evs:
                assert {"event", "name", "timestamp_usec"} <= set(e), e
                assert started <= e["timestamp_usec"] <= now_usec(), e
        alpha = [e for e in evs if e["name"] == "alpha"]
        kinds = [e["event"] for e in alpha]
        assert kinds[0] == "load-progress" and alpha[0]["percent"] == 0 and alpha[0]["bytes_done"] == 0, alpha
        assert alpha[0]["bytes_total"] >= 8 * MiB, alpha[0]
        progress = [e["percent"] for e in alpha if e["event"] == "load-progress"]
        assert progress == sorted(set(progress)) and progress[-1] == 100, progress
        assert set(progress) <= {0, 25, 50, 75, 100}, progress
        assert kinds[-2:] == ["loaded", "unloaded"], kinds
        assert alpha[-2]["memory_bytes"] >= 8 * MiB and alpha[-1]["reason"] == "request", alpha
        assert [e["event"] for e in evs if e["name"] == "beta"][-1] == "loaded", evs
        failed = next(e for e in evs if e["event"] == "load-failed")
        assert failed["name"] == "nope" and failed["error_name"] == "org.mpool.Error.ModelNotFound", failed
        assert failed["message"], failed

        # The filtered text monitor saw alpha only, as lines.
        only_alpha.wait_line(lambda line: "alpha: unloaded (request)" in line, "alpha's unload in text")
        text = only_alpha.text()
        assert "beta" not in text and "nope" not in text, text
        assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} alpha: loaded, 8\.0M in memory$", text, re.M), text
        assert ESC not in text, text

        assert everything.stop() == 0
        assert only_alpha.stop() == 0


def test_client_monitor_exit_status_on_signals(ctx):
        d = ctx.daemon()
        # Ctrl-C is how a monitor ends; being terminated or hung up on is not.
        for sig, status in ((signal.SIGINT, 0), (signal.SIGTERM, 128 + signal.SIGTERM),
                            (signal.SIGHUP, 128 + signal.SIGHUP)):
                monitor = MonitorRun(ctx, d)
                assert monitor.stop(sig) == status, (sig, monitor.err())


def test_client_output_errors_are_reported(ctx):
        ctx.model("alpha", size="1M")
        for i in range(60):
                ctx.model(f"m{i:02d}", size="4K")
        d = ctx.daemon()
        # More than stdio buffers: a write fails before the final flush, which
        # then has nothing left to write and succeeds.
        size = len(run(ctx, d, "--json=pretty", "status").stdout)
        assert size > 16384, size
        with open("/dev/full", "wb") as full:
                for args in (("--json", "status"), ("--json", "list"), ("--json=pretty", "status", "alpha"),
                             ("--json", "set", "idle-timeout", "5min"), ("status",), ("list",), ("--help",)):
                        proc = subprocess.run(client_argv(ctx, d, *args), stdin=subprocess.DEVNULL, stdout=full,
                                              stderr=subprocess.PIPE, text=True, timeout=DEADLINE, env=client_env())
                        assert proc.returncode == EXIT_FAILURE, (args, proc)
                        check_error(proc, "Cannot write the output: No space left on device")
                proc = subprocess.run(client_argv(ctx, d, "--json=pretty", "status"), stdin=subprocess.DEVNULL,
                                      stdout=full, stderr=subprocess.PIPE, text=True, timeout=DEADLINE,
                                      env=client_env())
                assert proc.returncode == EXIT_FAILURE, proc
                check_error(proc, "Cannot write the output")

        # A monitor whose events cannot be written ends at the first, saying
        # so once.
        for args in (("--json",), ()):
                monitor = MonitorRun(ctx, d, *args, stdout_path="/dev/full")
                d.load("alpha")
                assert monitor.proc.wait(timeout=DEADLINE) == EXIT_FAILURE, monitor.err()
                lines = monitor.err().splitlines()
                assert lines[0].startswith("Monitoring"), lines
                assert lines[1:] == ["Cannot write the output: No space left on device"], lines
                d.unload("alpha")


# ---------------------------------------------------------------------------
# top


class Tmux:
        """A private tmux server running a command in a pane of a fixed size,
        through a shell that says how the command exited and then waits, so
        that the pane is still alive to be looked at afterwards."""

        def __init__(self, ctx, argv, columns=130, rows=40):
                if not shutil.which("tmux"):
                        raise AssertionError("tmux is missing (Debian package tmux)")
                self.socket = os.path.join(ctx.dir, "tmux.sock")
                conf = os.path.join(ctx.dir, "tmux.conf")
                with open(conf, "w") as f:
                        f.write("set -g status off\n")
                self.base = ["tmux", "-S", self.socket, "-f", conf]
                command = " ".join(shlex.quote(a) for a in argv)
                shell = f'{command}; echo "exited with $?"; exec sleep 3600'
                self.tmux("new-session", "-d", "-x", str(columns), "-y", str(rows), "-s", "top",
                          "/bin/sh -c " + shlex.quote(shell))

        def tmux(self, *args):
                proc = subprocess.run(self.base + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=DEADLINE)
                assert proc.returncode == 0, f"tmux {' '.join(args)}: {proc.stderr}"
                return proc.stdout

        def pane(self):
                return self.tmux("capture-pane", "-p", "-t", "top")

        def show(self, fmt):
                return self.tmux("display-message", "-p", "-t", "top", fmt).strip()

        def wait_pane(self, predicate, what):
                last = [""]

                def check():
                        last[0] = self.pane()
                        return predicate(last[0])
                try:
                        wait_until(check, what, interval=0.1)
                except AssertionError as e:
                        raise AssertionError(f"{e}; the pane shows:\n{last[0]}") from None
                return last[0]

        def close(self):
                subprocess.run(self.base + ["kill-server"], stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=DEADLINE)


def test_client_top_on_a_terminal(ctx):
        ctx.model("alpha", size="8M")
        ctx.model("beta", size="4M")
        d = ctx.daemon(IdleTimeoutSec="300")
        argv = ["/usr/bin/env", "LC_ALL=C.UTF-8", "TERM=xterm-256color"] + client_argv(ctx, d, "top")
        tmux = Tmux(ctx, argv)
        try:
                tmux.wait_pane(lambda p: "No model is loaded." in p and "0 loaded" in p, "the empty pool")
                assert tmux.show("#{alternate_on} #{cursor_flag}") == "1 0", "not on the alternate screen, " \
                        "or the cursor is shown"
                first = tmux.pane()
                assert "q: quit" in first and "Memory: 0B used of 512.0M limit" in first, first

                d.load("alpha")
                tmux.wait_pane(lambda p: re.search(r"alpha\b.*\n.*loaded", p) and "memory 8.0M" in p
                               and "1 loaded" in p and "Memory: 8.0M used" in p, "alpha's tile")
                d.load("beta", pin=True)
                pane = tmux.wait_pane(lambda p: "memory 4.0M" in p and "2 loaded" in p, "beta's tile")
                assert "loaded, pinned" in pane and "expires never (pinned)" in pane, pane
                assert re.search(r"expires in [45]min", pane), pane
                assert "No model is loaded." not in pane, pane

                d.unload("alpha")
                pane = tmux.wait_pane(lambda p: "memory 8.0M" not in p and "1 loaded" in p
                                      and "Memory: 4.0M used" in p, "alpha's tile gone")
                d.unload("beta", force=True)
                tmux.wait_pane(lambda p: "No model is loaded." in p and "0 loaded" in p, "the empty pool again")

                tmux.tmux("send-keys", "-t", "top", "q")
                tmux.wait_pane(lambda p: "exited with " in p, "top to quit on q")
                # The terminal is given back as it was: main screen, cursor shown.
                pane = tmux.pane()
                assert "exited with 0" in pane, pane
                assert "q: quit" not in pane, pane
                assert tmux.show("#{alternate_on} #{cursor_flag}") == "0 1", "the terminal was not restored"
        finally:
                tmux.close()


def top_argv(ctx, d):
        return ["/usr/bin/env", "LC_ALL=C.UTF-8", "TERM=xterm-256color"] + client_argv(ctx, d, "top")


def pane_clock(pane):
        """The time top shows at the end of its first line."""
        first = pane.split("\n", 1)[0]
        found = re.search(r"(\d\d:\d\d:\d\d)\s*$", first)
        return found.group(1) if found else None


def test_client_top_exit_status_on_signals(ctx):
        d = ctx.daemon()
        tmux = Tmux(ctx, top_argv(ctx, d))
        try:
                tmux.wait_pane(lambda p: "q: quit" in p and "0 loaded" in p, "top to draw the pool")
                shell = int(tmux.show("#{pane_pid}"))
                top = wait_until(lambda: next((pid for pid, comm, _ in process_children(shell)
                                               if comm == "mpool-client"), None), "top's process")
                os.kill(top, signal.SIGTERM)
                pane = tmux.wait_pane(lambda p: "exited with " in p, "top to exit on SIGTERM")
                assert f"exited with {128 + signal.SIGTERM}" in pane, pane
                assert tmux.show("#{alternate_on} #{cursor_flag}") == "0 1", "the terminal was not restored"
        finally:
                tmux.close()


# ---------------------------------------------------------------------------
# A bus of the test's own


class OwnBus:
        """A dbus-daemon of the test's own, for what the shared private bus
        cannot do: D-Bus activation (with mpoold_config, mpoold is activatable,
        through a script that appends the pid of each start to self.starts)
        and limits (<limit> elements). A session-type bus with an open policy;
        a child of the test, killed at teardown."""

        def __init__(self, ctx, mpoold_config=None, limits=None):
                # A short directory: a socket's path has at most 107 bytes.
                self.dir = tempfile.mkdtemp(prefix="bus-", dir=ctx.suite.tmp)
                os.chmod(self.dir, 0o755)
                services = os.path.join(self.dir, "services")
                os.makedirs(services)
                socket = os.path.join(self.dir, "socket")
                self.address = f"unix:path={socket}"
                self.starts = os.path.join(self.dir, "mpoold-starts")
                if mpoold_config:
                        script = os.path.join(self.dir, "start-mpoold")
                        log = os.path.join(ctx.dir, "mpoold-activated.log")
                        with open(script, "w") as f:
                                f.write("#!/bin/sh\n"
                                        f"echo $$ >> {shlex.quote(self.starts)}\n"
                                        f"exec {shlex.join(ctx.daemon_command(many=True))} "
                                        f"--address={shlex.quote(self.address)} "
                                        f"--config={shlex.quote(mpoold_config)} --no-polkit >> {shlex.quote(log)} 2>&1\n")
                        os.chmod(script, 0o755)
                        with open(os.path.join(services, "org.mpool.Manager.service"), "w") as f:
                                f.write(f"[D-BUS Service]\nName={BUS_NAME}\nExec={script}\n")
                limit_lines = "".join(f'  <limit name="{name}">{value}</limit>\n'
                                      for name, value in (limits or {}).items())
                config = os.path.join(self.dir, "bus.conf")
                with open(config, "w") as f:
                        f.write('<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"\n'
                                ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
                                "<busconfig>\n"
                                "  <type>session</type>\n"
                                f"  <listen>{self.address}</listen>\n"
                                "  <auth>EXTERNAL</auth>\n"
                                f"  <servicedir>{services}</servicedir>\n"
                                '  <policy context="default">\n'
                                '    <allow send_destination="*" eavesdrop="true"/>\n'
                                '    <allow eavesdrop="true"/>\n'
                                '    <allow own="*"/>\n'
                                "  </policy>\n"
                                f"{limit_lines}"
                                "</busconfig>\n")
                with open(os.path.join(self.dir, "dbus-daemon.log"), "wb") as log:
                        self.proc = ctx.spawn(["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile",
                                               "--print-address=1"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                              stderr=log)
                ready, _, _ = select.select([self.proc.stdout], [], [], DEADLINE)
                printed = self.proc.stdout.readline().decode(errors="replace").strip() if ready else ""
                assert printed.startswith("unix:"), f"dbus-daemon printed no address: {printed!r}"

        def name_has_owner(self):
                """Asked of the bus itself, so that nothing is activated."""
                proc = subprocess.run(["busctl", f"--address={self.address}", "call", "org.freedesktop.DBus",
                                       "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s", BUS_NAME],
                                      stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=DEADLINE)
                assert proc.returncode == 0, proc
                return proc.stdout.strip() == "b true"

        def started(self):
                """The pids of the mpoold the bus has activated, in order."""
                try:
                        with open(self.starts) as f:
                                return [int(line) for line in f.read().split()]
                except FileNotFoundError:
                        return []

        def stop_activated(self):
                """Stops every activated mpoold still running (the bus's
                children, not ours)."""
                for pid in self.started():
                        try:
                                with open(f"/proc/{pid}/cmdline", "rb") as f:
                                        if b"mpoold" not in f.read():
                                                continue
                                os.kill(pid, signal.SIGTERM)
                        except (FileNotFoundError, ProcessLookupError):
                                continue
                        wait_until(lambda: process_gone(pid), f"activated mpoold (pid {pid}) to exit")


def test_client_top_does_not_restart_a_stopped_daemon(ctx):
        bus = OwnBus(ctx, mpoold_config=ctx.write_config())
        tmux = Tmux(ctx, top_argv(ctx, bus))
        try:
                # The first call may start mpoold, as busctl's would.
                tmux.wait_pane(lambda p: "Memory: 0B used of 512.0M limit" in p, "top to show the activated mpoold")
                started = bus.started()
                assert len(started) == 1, started

                os.kill(started[0], signal.SIGTERM)
                wait_until(lambda: process_gone(started[0]), "mpoold to stop")
                # Refreshing (on the daemon's leaving, and every second) does
                # not start it again: top says it is not running.
                tmux.wait_pane(lambda p: "mpoold is not running" in p or len(bus.started()) > 1,
                               "top to see mpoold stopped")
                assert bus.started() == started, f"top started mpoold again: {bus.started()}"
                clocks = set()

                def refreshed_twice_more(pane):
                        assert "mpoold is not running" in pane, f"mpoold came back:\n{pane}"
                        clocks.add(pane_clock(pane))
                        return len(clocks) >= 3
                tmux.wait_pane(refreshed_twice_more, "two more refreshes of top")
                assert bus.started() == started, f"mpoold was started again: {bus.started()}"
                assert not bus.name_has_owner()

                tmux.tmux("send-keys", "-t", "top", "q")
                assert "exited with 0" in tmux.wait_pane(lambda p: "exited with " in p, "top to quit on q")
        finally:
                tmux.close()
                bus.stop_activated()


def test_client_bus_limits_are_busy(ctx):
        # The bus refuses every call that expects a reply.
        bus = OwnBus(ctx, limits={"max_replies_per_connection": 0})
        with open(os.path.join(ctx.dir, "mpoold-own-bus.log"), "wb") as log:
                daemon = ctx.spawn(ctx.daemon_command() + [f"--address={bus.address}", f"--config={ctx.write_config()}",
                                    "--no-polkit"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: daemon.poll() is not None or bus.name_has_owner(), "mpoold to own its name")
        assert daemon.poll() is None, f"mpoold exited with {daemon.returncode}"
        check_error(run(ctx, bus, "status", expect=EXIT_BUSY), "limit")


# ---------------------------------------------------------------------------
# A stand-in for mpoold


FAKE_MANAGER = r"""
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

BUS_NAME = MANAGER_IFACE = "org.mpool.Manager"
MODELS_PATH = "/org/mpool/Manager/models"


def say(*words):
        print(*words, flush=True)


class Manager(dbus.service.Object):
        def __init__(self, bus):
                super().__init__(bus, "/org/mpool/Manager")
                self.state = "available"
                self.pending = []

        @dbus.service.method(MANAGER_IFACE, in_signature="sa{sv}", out_signature="o",
                             async_callbacks=("reply", "error"))
        def Load(self, name, options, reply, error):
                self.pending.append((str(name), reply, error))
                say("Load", name)

        @dbus.service.method(MANAGER_IFACE, in_signature="sa{sv}", out_signature="b")
        def Unload(self, name, options):
                was_loaded = self.state == "loaded"
                self.state = "available"
                say("Unload", name, "true" if was_loaded else "false")
                return was_loaded

        def finish_loads(self, succeed):
                for name, reply, error in self.pending:
                        if succeed:
                                self.state = "loaded"
                                reply(dbus.ObjectPath(f"{MODELS_PATH}/{name}"))
                        else:
                                error(dbus.exceptions.DBusException(
                                        "Not authorized.", name="org.freedesktop.DBus.Error.AccessDenied"))
                        say("finished Load", name)
                self.pending = []


class Models(dbus.service.FallbackObject):
        def __init__(self, bus, manager):
                super().__init__(bus, MODELS_PATH)
                self.manager = manager

        @dbus.service.method("org.freedesktop.DBus.Properties", in_signature="ss", out_signature="v")
        def Get(self, interface, prop):
                if prop == "State":
                        return dbus.String(self.manager.state)
                if prop == "MemoryBytes":
                        return dbus.UInt64(4096)
                raise dbus.exceptions.DBusException(f"No property {prop}.",
                                                    name="org.freedesktop.DBus.Error.UnknownProperty")


def on_command(fd, condition):
        line = sys.stdin.readline()
        if not line:
                loop.quit()
                return False
        command = line.strip()
        if command in ("answer-loads", "fail-loads"):
                manager.finish_loads(command == "answer-loads")
        return True


bus = dbus.bus.BusConnection(sys.argv[1], mainloop=DBusGMainLoop())
manager = Manager(bus)
models = Models(bus, manager)
name = dbus.service.BusName(BUS_NAME, bus, do_not_queue=True)
loop = GLib.MainLoop()
GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_command)
say("ready")
loop.run()
"""


class FakeManager:
        """FAKE_MANAGER on the private bus, in place of mpoold (none may run):
        it says every call it gets as a line ("Load NAME", "Unload NAME
        true|false"); a Load waits, as one waiting for polkit does, until
        answer_loads() or fail_loads(). Unload says whether the model was
        loaded."""

        def __init__(self, ctx):
                self.address = ctx.suite.address
                self.proc = ctx.spawn(["/usr/bin/python3", "-s", "-E", "-c", FAKE_MANAGER, self.address],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                self._lines = []
                self._lock = threading.Lock()
                threading.Thread(target=self._read, daemon=True).start()
                self.wait_line("ready")

        def _read(self):
                for line in self.proc.stdout:
                        with self._lock:
                                self._lines.append(line.strip())

        def lines(self):
                with self._lock:
                        return list(self._lines)

        def wait_line(self, line, count=1):
                wait_until(lambda: self.lines().count(line) >= count or self.proc.poll() is not None,
                           f"the stand-in for mpoold to say {line!r} ({count})")
                assert self.lines().count(line) >= count, \
                        f"the stand-in for mpoold exited with {self.proc.returncode}: {self.lines()}"

        def _command(self, command):
                self.proc.stdin.write(command + "\n")
                self.proc.stdin.flush()

        def answer_loads(self):
                self._command("answer-loads")

        def fail_loads(self):
                self._command("fail-loads")


def test_client_ctrl_c_before_the_load_took_effect(ctx):
        fake = FakeManager(ctx)

        # Our Load waits (for polkit, say) when Ctrl-C comes: Unload finds
        # nothing loaded. The client waits for the Load to finish, then
        # unloads what it loaded.
        proc = start_client(ctx, fake, "load", "alpha")
        fake.wait_line("Load alpha")
        proc.send_signal(signal.SIGINT)
        fake.wait_line("Unload alpha false")
        fake.answer_loads()
        fake.wait_line("Unload alpha true")
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, out, err)
        assert "Cancelled loading alpha." in err and out == "", (out, err)

        # If that Load fails instead, there is nothing to undo.
        proc = start_client(ctx, fake, "load", "alpha")
        fake.wait_line("Load alpha", count=2)
        proc.send_signal(signal.SIGTERM)
        fake.wait_line("Unload alpha false", count=2)
        fake.fail_loads()
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, out, err)
        assert "Cancelled loading alpha." in err and out == "", (out, err)
        assert fake.lines().count("Unload alpha true") == 1, fake.lines()


def test_client_polkit_agent_on_a_terminal(ctx):
        assert os.access(POLKIT_AGENT, os.X_OK), f"{POLKIT_AGENT} is missing (Debian package polkitd)"
        ctx.suite.ensure_polkitd()      # the agent registers with it, or it would exit at once
        fake = FakeManager(ctx)
        env = client_env(DBUS_SYSTEM_BUS_ADDRESS=ctx.suite.address, LC_ALL="C")
        loads = [0]

        def agents_during_load(start):
                """Starts a load with start(), and returns the polkit agents
                the client runs while the Load waits; then lets it finish."""
                client = start()
                loads[0] += 1
                fake.wait_line("Load alpha", count=loads[0])
                agents = [(pid, state) for pid, comm, state in process_children(client.pid) if comm == "pkttyagent"]
                fake.answer_loads()
                return client, agents

        # As nobody on a terminal: pkttyagent runs, registered with polkit
        # (it would have exited otherwise) before the Load was sent; it is
        # gone once the client is.
        term, agents = agents_during_load(lambda: PtyRun(setpriv_nobody(*client_argv(ctx, fake, "load", "alpha")), env))
        try:
                assert term.wait() == 0, term.output
        finally:
                term.kill()
        assert len(agents) == 1 and agents[0][1] not in ("Z", "X"), agents
        assert process_gone(agents[0][0]), "the polkit agent outlived mpool-client"

        # No agent without a terminal, with --no-ask-password, or for root
        # (polkit never asks root); the calls work all the same.
        proc, agents = agents_during_load(lambda: ctx.spawn(setpriv_nobody(*client_argv(ctx, fake, "load", "alpha")),
                                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                            stderr=subprocess.PIPE, env=env))
        assert proc.wait(timeout=DEADLINE) == 0 and agents == [], (proc.stderr.read(), agents)
        for argv in (setpriv_nobody(*client_argv(ctx, fake, "--no-ask-password", "load", "alpha")),
                     client_argv(ctx, fake, "load", "alpha")):
                term, agents = agents_during_load(lambda: PtyRun(argv, env))
                try:
                        assert term.wait() == 0 and agents == [], (argv, term.output, agents)
                finally:
                        term.kill()

        # Killed, the client takes its agent along.
        term = PtyRun(setpriv_nobody(*client_argv(ctx, fake, "load", "alpha")), env)
        try:
                fake.wait_line("Load alpha", count=loads[0] + 1)
                agents = [pid for pid, comm, _ in process_children(term.pid) if comm == "pkttyagent"]
                assert len(agents) == 1, agents
                term.kill()
                wait_until(lambda: process_gone(agents[0]), "the polkit agent to exit with mpool-client")
        finally:
                term.kill()
