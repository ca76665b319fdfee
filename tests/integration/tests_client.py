# SPDX-License-Identifier: MIT
"""mpool-client against the real daemon: every verb, its JSON parsed and
checked, the exit status of each class of error, holds released when the
client exits or is killed, the progress bar on a pseudo-terminal and none of
it through a pipe, Ctrl-C cancelling a load, monitor --json, and top on a
real terminal (tmux).

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
import termios
import threading
import time

import dbus

from harness import (DEADLINE, ERROR_CANCELLED, GiB, MiB, PyClient, model_path, now_usec, wait_until,
                     write_config_json, write_safetensors_raw, safetensors_header, write_sparse_model)

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

POOL_KEYS = {"version": str, "memory_total": int, "memory_available": int, "memory_limit": int,
             "memory_used": int, "models_loaded": int, "idle_timeout_sec": int, "idle_policy": str,
             "uptime_usec": int}
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


class PtyRun:
        """mpool-client on a pseudo-terminal of a given size: its output is
        collected as it comes; keys can be typed into it."""

        def __init__(self, argv, env, rows=40, columns=120):
                self.output = b""
                self.pid, self.fd = pty.fork()
                if self.pid == 0:
                        try:
                                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
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
        assert lines[0].split() == ["NAME", "STATE", "SIZE"], lines
        assert re.match(r"^alpha\s+loaded\s+4\.0M$", lines[1]), lines
        assert re.match(r"^demo/beta\s+available\s+2\.0M$", lines[2]), lines
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
        d = ctx.daemon(MemoryLimit="12G")
        for name in fresh_huge_models(ctx):
                proc = start_client(ctx, d, "load", name)
                ctx.monitor.wait(lambda sigs: load_started(ctx, name) or proc.poll() is not None,
                                 f"the load of {name} to start")
                d.unload(name)
                out, err = proc.communicate(timeout=DEADLINE)
                if proc.returncode == 0:
                        continue        # loaded before Unload came
                assert proc.returncode == EXIT_CANCELLED, (proc.returncode, out, err)
                assert name in err and "cancelled" in err, err
                assert out == "", out
                return
        raise AssertionError("both loads (1 GiB, 4 GiB) completed before Unload: cancellation untested")


def test_client_exit_status_busy(ctx):
        ctx.model("small", size="1M")
        d = ctx.daemon(MemoryLimit="12G", MaxConcurrentLoads="1")
        for name in fresh_huge_models(ctx):
                outcome = {}

                def load():
                        client = PyClient(d.address)
                        try:
                                outcome["path"] = client.load(name)
                        except dbus.exceptions.DBusException as e:
                                outcome["error"] = e.get_dbus_name()
                        finally:
                                client.close()
                thread = threading.Thread(target=load, daemon=True)
                thread.start()
                ctx.monitor.wait(lambda sigs: load_started(ctx, name) or outcome, f"the load of {name} to start")
                proc = run(ctx, d, "load", "small", expect=None)
                d.unload(name)
                thread.join(DEADLINE)
                if proc.returncode == 0:
                        assert "path" in outcome, "small loaded while another load was under way"
                        d.unload("small")
                        continue
                assert proc.returncode == EXIT_BUSY, (proc.returncode, proc.stdout, proc.stderr)
                check_error(proc, "small", "busy")
                return
        raise AssertionError("both loads (1 GiB, 4 GiB) completed too soon: Busy untested")


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


# ---------------------------------------------------------------------------
# monitor


class MonitorRun:
        def __init__(self, ctx, d, *args):
                self.out_path = os.path.join(ctx.dir, f"client-monitor-{len(ctx.children)}.out")
                self.err_path = self.out_path + ".err"
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

        def stop(self):
                self.proc.send_signal(signal.SIGINT)
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
