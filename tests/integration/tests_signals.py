# SPDX-License-Identifier: MIT
"""Signals sent to the daemon and a stderr that goes away: SIGHUP reloads the
configuration, SIGUSR1 logs the state, SIGUSR2 and SIGPIPE are ignored, and
none of them, nor a closed or broken stderr, ends the daemon or drops a
model, a pin or a hold."""

import os
import re
import select
import signal
import socket
import subprocess
import time

import dbus

from harness import DEADLINE, MANAGER_IFACE, MANAGER_PATH, MiB, PROPERTIES_IFACE, python_child_client, \
        wait_until


class NotifySocket:
        """Stands in for systemd's notification socket (NOTIFY_SOCKET), in the
        abstract namespace, and collects what the daemon sends there."""

        _counter = 0

        def __init__(self):
                NotifySocket._counter += 1
                self.name = f"mpool-integration-notify-{os.getpid()}-{NotifySocket._counter}"
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self.sock.bind("\0" + self.name)
                self.messages = []

        @property
        def address(self):
                return "@" + self.name

        def _receive(self, timeout):
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if ready:
                        self.messages.append(self.sock.recv(65536).decode())

        def wait(self, tag, after=0, proc=None):
                """Waits for a message with the line tag among those from index
                after on; returns its index. Gives up early if proc exits."""
                deadline = time.monotonic() + DEADLINE
                while True:
                        if proc is not None and proc.poll() is not None:
                                raise AssertionError(f"mpoold exited with {proc.returncode} while waiting for {tag}")
                        for i in range(after, len(self.messages)):
                                if tag in self.messages[i].split("\n"):
                                        return i
                        left = deadline - time.monotonic()
                        if left <= 0:
                                raise AssertionError(f"no {tag} from mpoold within {DEADLINE:.0f} s; got "
                                                     f"{self.messages[after:]!r}")
                        self._receive(min(left, 0.5))

        def close(self):
                self.sock.close()


def start_daemon(ctx, notify=None, stderr=subprocess.STDOUT, preexec_fn=None, config=None, **pool):
        """Like ctx.daemon(), with NOTIFY_SOCKET and stderr of our choosing."""
        d = ctx.daemon(config=config, start=False, **pool)
        env = dict(os.environ)
        if notify:
                env["NOTIFY_SOCKET"] = notify.address
        with open(d.log_path, "wb") as log:
                argv = d.command()
                d.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=stderr, env=env,
                                          preexec_fn=preexec_fn)
        ctx.note_valgrind_process(argv, d.proc)
        d.wait_ready()
        return d


def log_count(d, text):
        return d.log().count(text)


def wait_log(d, text, count=1):
        """Waits until the daemon's log holds text count times."""
        def check():
                assert d.proc.poll() is None, f"mpoold exited with {d.proc.returncode}"
                return log_count(d, text) >= count
        wait_until(check, f"{count} × {text!r} in mpoold's log")


def assert_alive(d):
        assert d.proc.poll() is None, f"mpoold exited with {d.proc.returncode}"
        d.status()
        assert d.proc.poll() is None, f"mpoold exited with {d.proc.returncode}"


def check_kept(d):
        """alpha loaded and pinned, beta loaded with the child's hold."""
        assert_alive(d)
        _, models = d.status()
        assert models["alpha"]["state"] == "loaded" and models["alpha"]["pinned"], models["alpha"]
        assert models["beta"]["state"] == "loaded" and models["beta"]["holds"] == 1, models["beta"]


def manager_property(d, prop):
        return d.ctl.get_property(MANAGER_PATH, MANAGER_IFACE, prop)


def wait_property_changed(ctx, prop, value):
        return ctx.monitor.wait_signal("PropertiesChanged", iface=PROPERTIES_IFACE,
                                       where=lambda a: a[0] == MANAGER_IFACE and a[1].get(prop) == value)


def reload(d, notify):
        """SIGHUP, then waits until the daemon tells systemd the reload is over."""
        start = len(notify.messages)
        d.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING=1", start, d.proc)
        assert any(line.startswith("MONOTONIC_USEC=") for line in notify.messages[reloading].split("\n")), \
                notify.messages[reloading]
        notify.wait("READY=1", reloading, d.proc)


def test_signals_keep_models_pins_and_holds(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("beta", size="4M")
        d = ctx.daemon()
        d.load("alpha", pin=True)
        child = python_child_client(d.address, ctx)
        child.acquire("beta")
        check_kept(d)

        d.proc.send_signal(signal.SIGHUP)
        wait_log(d, "Configuration reloaded")
        check_kept(d)

        d.proc.send_signal(signal.SIGUSR1)
        wait_log(d, "State: 2 model(s) known, 2 loaded")
        assert re.search(r"Model alpha: loaded, \d+ bytes, pinned, 0 hold\(s\)", d.log()), d.log()
        assert re.search(r"Model beta: loaded, \d+ bytes, not pinned, 1 hold\(s\)", d.log()), d.log()
        check_kept(d)

        d.proc.send_signal(signal.SIGUSR2)
        wait_log(d, "SIGUSR2")
        check_kept(d)

        # Ignored outright, so nothing to wait for but a later signal's effect.
        d.proc.send_signal(signal.SIGPIPE)
        d.proc.send_signal(signal.SIGUSR1)
        wait_log(d, "State: 2 model(s) known, 2 loaded", 2)
        check_kept(d)

        child.release("beta")
        child.exit()


def test_sighup_applies_memory_limit_and_idle_timeout(ctx):
        ctx.model("alpha", size="4M")
        notify = NotifySocket()
        try:
                d = start_daemon(ctx, notify, MemoryLimit="512M", IdleTimeoutSec="300")
                notify.wait("READY=1")
                d.load("alpha")
                assert manager_property(d, "MemoryLimit") == 512 * MiB

                # MaxConcurrentLoads= is read at start-up only: the log says so.
                ctx.write_config(MemoryLimit="256M", IdleTimeoutSec="10min", MaxConcurrentLoads="2")
                reload(d, notify)
                wait_property_changed(ctx, "MemoryLimit", 256 * MiB)
                wait_property_changed(ctx, "IdleTimeoutSec", 600)
                assert manager_property(d, "MemoryLimit") == 256 * MiB
                assert manager_property(d, "IdleTimeoutSec") == 600
                assert "taking effect only when mpoold restarts: MaxConcurrentLoads=." in d.log(), d.log()
                assert d.model("alpha")["state"] == "loaded"

                # The file wins over a value written on the bus since.
                d.py.call("Set", "ssv", (MANAGER_IFACE, "MemoryLimit", dbus.UInt64(300 * MiB)),
                          iface=PROPERTIES_IFACE)
                wait_property_changed(ctx, "MemoryLimit", 300 * MiB)
                ctx.write_config(MemoryLimit="128M", IdleTimeoutSec="infinity", MaxConcurrentLoads="2")
                reload(d, notify)
                assert manager_property(d, "MemoryLimit") == 128 * MiB
                assert manager_property(d, "IdleTimeoutSec") == -1
                m = d.model("alpha")
                assert m["state"] == "loaded" and m["expires_at_usec"] == 0, m
        finally:
                notify.close()


def test_sighup_with_broken_config_keeps_settings(ctx):
        ctx.model("alpha", size="4M")
        notify = NotifySocket()
        try:
                d = start_daemon(ctx, notify, MemoryLimit="512M", IdleTimeoutSec="300")
                notify.wait("READY=1")
                d.load("alpha", pin=True)

                # A good line before the bad one changes nothing either.
                config = ctx.write_config(raw=f"[Store]\nModelDir={ctx.store}\n\n[Pool]\nIdleTimeoutSec=5\n"
                                              "MemoryLimit=lots\n")
                reload(d, notify)
                assert_alive(d)
                assert f"Cannot reload the configuration, keeping the settings in use: {config}:6: MemoryLimit=" \
                        in d.log(), d.log()
                assert manager_property(d, "MemoryLimit") == 512 * MiB
                assert manager_property(d, "IdleTimeoutSec") == 300
                m = d.model("alpha")
                assert m["state"] == "loaded" and m["pinned"], m

                # The file named by --config= is gone: the same.
                os.unlink(config)
                reload(d, notify)
                assert_alive(d)
                assert log_count(d, "Cannot reload the configuration") == 2, d.log()
                assert manager_property(d, "MemoryLimit") == 512 * MiB

                # Mended, it applies.
                ctx.write_config(MemoryLimit="64M", IdleTimeoutSec="300")
                reload(d, notify)
                wait_property_changed(ctx, "MemoryLimit", 64 * MiB)
                assert d.model("alpha")["pinned"]
        finally:
                notify.close()


def test_sighup_limit_below_pinned_models_keeps_limit(ctx):
        ctx.model("alpha", size="8M")
        notify = NotifySocket()
        try:
                d = start_daemon(ctx, notify, MemoryLimit="512M", IdleTimeoutSec="300")
                notify.wait("READY=1")
                d.load("alpha", pin=True)

                ctx.write_config(MemoryLimit="1M", IdleTimeoutSec="60")
                reload(d, notify)
                assert "Keeping the memory limit of 536870912 bytes: MemoryLimit= in" in d.log(), d.log()
                assert manager_property(d, "MemoryLimit") == 512 * MiB
                # What can change still does.
                assert manager_property(d, "IdleTimeoutSec") == 60
                m = d.model("alpha")
                assert m["state"] == "loaded" and m["pinned"], m
        finally:
                notify.close()


def test_stderr_reader_gone(ctx):
        """stderr is a FIFO: while nobody reads it, writes fail with EPIPE and
        the daemon carries on; once someone reads again, the log flows."""
        ctx.model("alpha", size="4M")
        fifo = os.path.join(ctx.dir, "stderr.fifo")
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        writer = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
        notify = NotifySocket()
        received = []

        def read_some():
                while select.select([reader], [], [], 0)[0]:
                        chunk = os.read(reader, 65536)
                        if not chunk:
                                break
                        received.append(chunk)
                return b"".join(received).decode(errors="replace")

        try:
                d = start_daemon(ctx, notify, stderr=writer)
                os.close(writer)
                writer = -1
                wait_until(lambda: "serving org.mpool.Manager" in read_some(), "mpoold's start-up line on stderr")

                os.close(reader)
                reader = -1
                d.load("alpha", pin=True)   # logs
                reload(d, notify)           # logs, and tells when it is done
                d.proc.send_signal(signal.SIGUSR2)
                assert_alive(d)
                assert d.model("alpha")["state"] == "loaded"

                received.clear()
                reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
                d.proc.send_signal(signal.SIGUSR1)
                wait_until(lambda: "Model alpha: loaded" in read_some(), "the SIGUSR1 summary on stderr")
                assert_alive(d)
        finally:
                notify.close()
                for fd in (reader, writer):
                        if fd >= 0:
                                os.close(fd)


def test_stderr_closed(ctx):
        """Started with no fd 2 at all: the daemon must not hand that number to
        a file or socket of its own and then write log lines into it."""
        ctx.model("alpha", size="4M")
        ctx.model("beta", size="4M")
        d = start_daemon(ctx, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))
        d.load("alpha", pin=True)
        d.load("beta")
        d.proc.send_signal(signal.SIGUSR1)
        d.proc.send_signal(signal.SIGHUP)
        assert d.unload("beta") is True
        d.load("beta")
        assert_alive(d)
        _, models = d.status()
        assert models["alpha"]["state"] == "loaded" and models["alpha"]["pinned"], models
        assert models["beta"]["state"] == "loaded", models
