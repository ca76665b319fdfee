# SPDX-License-Identifier: MIT
"""Start-up (Preload, configuration errors), shutdown, cancelled loads."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading

import dbus

from harness import (BUS_NAME, DEADLINE, ERROR_CANCELLED, ERROR_INSUFFICIENT_MEMORY, ERROR_MODEL_NOT_FOUND,
                     ERROR_MODEL_PINNED, MANAGER_IFACE, MANAGER_PATH, GiB, MiB, PyClient,
                     expect_dbus_error, wait_until, write_sparse_model)


def test_preload_pins_at_start(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("demo/beta", size="4M")
        ctx.model("gamma", size="1M")
        d = ctx.daemon(Preload="alpha demo/beta", IdleTimeoutSec="1")
        for name in ("alpha", "demo/beta"):
                ctx.monitor.wait_signal("ModelLoaded", name)
                m = d.wait_model(name, lambda m: m["state"] == "loaded", "preloaded")
                assert m["pinned"] is True and m["expires_at_usec"] == 0, m
        pool, models = d.status()
        assert pool["models_loaded"] == 2 and models["gamma"]["state"] == "available", (pool, models)
        expect_dbus_error(ERROR_MODEL_PINNED, d.py.unload, "alpha")
        assert d.unload_all() == []


BAD_CONFIG_VALUES = [
        ("MemoryLimit", "lots"),
        ("MemoryLimit", "150%"),
        ("MemoryLimit", "-1M"),
        ("IdleTimeoutSec", "-5"),
        ("IdleTimeoutSec", "0"),
        ("IdlePolicy", "sometimes"),
        ("MaxLoadedModels", "many"),
        ("MemoryAvailableMin", "abc"),
        ("MaxConcurrentLoads", "x"),
]


def test_bad_config_exits_nonzero_naming_file_line_key(ctx):
        failures = []
        for i, (key, value) in enumerate(BAD_CONFIG_VALUES):
                lines = ["# integration test: one bad value", "[Store]", f"ModelDir={ctx.store}", "",
                         "[Pool]", "MemoryLimit=64M", "IdleTimeoutSec=300"]
                lines = [line for line in lines if not line.startswith(key + "=")]
                lines.append(f"{key}={value}")
                bad_line = len(lines)
                lines.append("MaxLoadedModels=0" if key != "MaxLoadedModels" else "IdlePolicy=per-model")
                config = ctx.write_config(filename=f"bad-{i}.conf", raw="\n".join(lines) + "\n")
                d = ctx.daemon(config=config, start=False)
                d.spawn()
                what = f"{key}={value}"
                try:
                        wait_until(lambda: d.proc.poll() is not None or d.owns_name(), "mpoold to exit")
                        assert d.proc.poll() is not None, "mpoold started anyway and took the bus name"
                        code = d.wait_exit()
                        d.stopped = True
                        assert code != 0, "mpoold exited 0"
                        log = d.log()
                        assert config in log or os.path.basename(config) in log, f"no file name in: {log!r}"
                        assert re.search(rf"(?<!\d){bad_line}(?!\d)", log), f"no line {bad_line} in: {log!r}"
                        assert key in log, f"no key {key} in: {log!r}"
                except AssertionError as e:
                        failures.append(f"{what}: {e}")
                        d.kill()
        assert not failures, "\n".join(failures)


def test_sigterm_unloads_with_reason_shutdown(ctx):
        ctx.model("alpha", size="8M")
        ctx.model("beta", size="4M")
        d = ctx.daemon()
        d.load("alpha")
        d.load("beta", pin=True)
        assert d.stop() == 0
        for name in ("alpha", "beta"):
                s = ctx.monitor.wait_signal("ModelUnloaded", name)
                assert s.args[1] == "shutdown", s


def load_starts(ctx, name):
        return [s for s in ctx.monitor.signals("LoadProgress", name) if s.args[1] == 0]


def load_in_thread(d, name, outcome):
        """Loads name from a client of its own in a thread; outcome gets
        "path" or "error" (name, message)."""
        def load():
                client = PyClient(d.address)
                try:
                        outcome["path"] = client.load(name)
                except dbus.exceptions.DBusException as e:
                        outcome["error"] = (e.get_dbus_name(), e.get_dbus_message())
                finally:
                        client.close()
        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        return thread


def attempt_cancel(ctx, d, name, mid_load=False, cancel=None):
        """Starts a Load of name in a thread and cancels it with Unload (or
        cancel(client)) as soon as that load's first LoadProgress is seen
        (with mid_load, its first one past 0: the loader is then in the
        middle of its work). Returns (load outcome, Unload's reply)."""
        outcome = {}
        starts_before = len(load_starts(ctx, name))

        def started():
                if outcome:
                        return True
                if not mid_load:
                        return len(load_starts(ctx, name)) > starts_before
                return len(load_starts(ctx, name)) > starts_before and \
                        ctx.monitor.signals("LoadProgress", name)[-1].args[1] > 0
        unloader = PyClient(d.address)

        thread = load_in_thread(d, name, outcome)
        try:
                wait_until(started, f"LoadProgress of {name}", interval=0.002)
                unloaded = cancel(unloader) if cancel else unloader.unload(name)
                # Unload replies once the memory is given back, so the
                # cancelled load must be over by now.
                outcome["after_unload"] = unloader.status()[1].get(name)
        finally:
                unloader.close()
        thread.join(DEADLINE * 4)
        assert not thread.is_alive(), "Load did not return after Unload"
        return outcome, unloaded


def check_cancelled(ctx, d, name, outcome, failures_seen):
        assert outcome["error"][0] == ERROR_CANCELLED, f"the waiting Load got {outcome['error']}"
        m = outcome["after_unload"]
        assert m["state"] in ("available", "error") and m["memory_bytes"] == 0, \
                f"Unload replied before the cancelled load had stopped; Status right after it: {m}"
        failed = wait_until(lambda: len(ctx.monitor.signals("LoadFailed", name)) > failures_seen
                            and ctx.monitor.signals("LoadFailed", name)[-1], f"LoadFailed for {name}")
        assert failed.args[1] == ERROR_CANCELLED, failed
        m = d.wait_model(name, lambda m: m["state"] in ("available", "error"),
                         "back to not loaded after the cancelled load")
        assert m["memory_bytes"] == 0, m
        pool, _ = d.status()
        assert pool["models_loaded"] == 0 and pool["memory_used"] == 0, pool
        ctx.sync()
        assert ctx.monitor.signals("ModelLoaded", name) == [], "the cancelled load completed"


def test_unload_cancels_load_under_way(ctx):
        d = ctx.daemon(MemoryLimit="12G")
        for size in (1 * GiB, 4 * GiB):
                name = f"huge-{size // GiB}g"
                write_sparse_model(os.path.join(ctx.store, name), size)
                try:
                        outcome, unloaded = attempt_cancel(ctx, d, name)
                        if "path" in outcome:
                                # The load finished before the Unload arrived:
                                # then it was an ordinary unload; try bigger.
                                s = ctx.monitor.wait_signal("ModelUnloaded", name)
                                assert unloaded is True and s.args[1] == "request", (unloaded, s)
                                continue
                        check_cancelled(ctx, d, name, outcome, 0)

                        # The model can be loaded again, and cancelled again,
                        # this time while the loader is in the middle of it.
                        outcome, unloaded = attempt_cancel(ctx, d, name, mid_load=True)
                        if "error" in outcome:
                                check_cancelled(ctx, d, name, outcome, 1)
                        else:
                                assert unloaded is True, "Unload of the loaded model replied false"

                        # Nothing of a cancelled load may show after its
                        # LoadFailed (Unload replied after it had stopped, and
                        # we synced since): the next LoadProgress, if any, is
                        # a new load's 0.
                        ctx.sync()
                        sigs = ctx.monitor.signals(name=name)
                        for i, failed in enumerate(sigs):
                                if failed.member != "LoadFailed":
                                        continue
                                after = [s for s in sigs[i + 1:] if s.member == "LoadProgress"]
                                assert not after or after[0].args[1] == 0, \
                                        f"LoadProgress of the cancelled load after its LoadFailed: {after[0]}"
                        return
                finally:
                        shutil.rmtree(os.path.join(ctx.store, name), ignore_errors=True)
        raise AssertionError("both loads (1 GiB, 4 GiB) completed before Unload arrived: cancellation untested")


def test_unload_all_cancels_load_under_way(ctx):
        ctx.model("small", size="1M")
        d = ctx.daemon(MemoryLimit="12G")
        d.load("small")
        for size in (1 * GiB, 4 * GiB):
                name = f"huge-{size // GiB}g"
                write_sparse_model(os.path.join(ctx.store, name), size)
                try:
                        outcome, unloaded = attempt_cancel(ctx, d, name, cancel=lambda c: c.unload_all())
                        if "path" in outcome:
                                assert name in unloaded, \
                                        f"UnloadAll during the load of {name} returned {unloaded}: it neither " \
                                        f"cancelled the load nor unloaded the model, which then finished loading"
                                # The load finished before UnloadAll arrived.
                                d.load("small")
                                continue
                        assert "small" in unloaded, f"UnloadAll during a load returned {unloaded}"
                        check_cancelled(ctx, d, name, outcome, 0)
                        return
                finally:
                        shutil.rmtree(os.path.join(ctx.store, name), ignore_errors=True)
        raise AssertionError("both loads (1 GiB, 4 GiB) completed before UnloadAll arrived: cancellation untested")


def test_sigterm_during_load_cancels_it(ctx):
        d = ctx.daemon(MemoryLimit="12G")
        name = "huge-4g"
        write_sparse_model(os.path.join(ctx.store, name), 4 * GiB)
        outcome = {}

        thread = load_in_thread(d, name, outcome)
        ctx.monitor.wait(lambda sigs: outcome or load_starts(ctx, name), f"LoadProgress of {name}")
        assert d.stop() == 0
        thread.join(DEADLINE)
        assert not thread.is_alive(), "Load did not return after the daemon stopped"
        if "path" in outcome:
                raise AssertionError("a 4 GiB load completed before SIGTERM arrived: cancellation untested")
        assert outcome["error"][0] == ERROR_CANCELLED, f"the waiting Load got {outcome['error']}"
        failed = ctx.monitor.wait_signal("LoadFailed", name)
        assert failed.args[1] == ERROR_CANCELLED, failed


def test_preload_waits_for_free_load_slots(ctx):
        """More Preload= models than MaxConcurrentLoads: the rest start as
        slots free up instead of being refused as Busy."""
        names = ["alpha", "beta", "gamma"]
        for name in names:
                ctx.model(name, size="4M")
        d = ctx.daemon(Preload=" ".join(names), MaxConcurrentLoads="1")
        for name in names:
                m = d.wait_model(name, lambda m: m["state"] == "loaded", "preloaded")
                assert m["pinned"] is True, m


def test_failed_pinned_load_leaves_no_pin(ctx):
        ctx.model("big", size="32M")
        d = ctx.daemon(MemoryLimit="24M")
        expect_dbus_error(ERROR_INSUFFICIENT_MEMORY, d.py.load, "big", pin=True, keep_alive_sec=-1)
        m = d.model("big")
        assert m["pinned"] is False, f"a refused Load(pin) left the model pinned: {m}"
        assert d.py.unload("big") is False

        d.ctl.run("set-property", BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "MemoryLimit", "t", str(64 * MiB))
        d.load("big")
        m = d.model("big")
        assert m["pinned"] is False and m["expires_at_usec"] > 0, \
                f"the refused Load's pin or keep-alive came back on a later load: {m}"


def test_names_that_do_not_exist_are_not_kept(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        for i in range(20):
                expect_dbus_error(ERROR_MODEL_NOT_FOUND, d.py.load, f"ghost-{i}")
        pool, models = d.status()
        assert sorted(models) == ["alpha"], f"names that failed to load are still known: {sorted(models)}"


def test_daemon_stops_with_failure_when_the_bus_goes_away(ctx):
        """Unreachable, the daemon would hold memory for nobody: it unloads,
        and exits non-zero so that systemd's Restart=on-failure applies."""
        ctx.model("alpha", size="4M")
        # A socket path must fit in 108 bytes: the test's own directory is too deep.
        bus_dir = tempfile.mkdtemp(prefix="mpool-bus-")
        address = subprocess.run([ctx.suite.private_bus, "start", bus_dir], check=True, capture_output=True,
                                 text=True).stdout.strip()
        config = ctx.write_config()
        log_path = os.path.join(ctx.dir, "lost-bus.log")
        with open(log_path, "wb") as log:
                proc = ctx.spawn(ctx.daemon_command() + [f"--address={address}", f"--config={config}", "--no-polkit"],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
                wait_until(lambda: subprocess.run(["busctl", f"--address={address}", "status", BUS_NAME],
                                                  capture_output=True).returncode == 0, "mpoold on its own bus")
                subprocess.run(["busctl", f"--address={address}", "call", BUS_NAME, MANAGER_PATH, MANAGER_IFACE,
                                "Load", "sa{sv}", "alpha", "0"], check=True, capture_output=True)
        finally:
                subprocess.run([ctx.suite.private_bus, "stop", bus_dir], check=False, capture_output=True)
                shutil.rmtree(bus_dir, ignore_errors=True)
        code = proc.wait(DEADLINE)
        with open(log_path) as f:
                log = f.read()
        assert code != 0, f"mpoold exited {code} after losing its bus:\n{log}"
        assert "Unloaded alpha (shutdown)" in log, log


def test_sd_notify_ready_status_and_stopping(ctx):
        """systemd learns readiness only once the name is owned, a one-line
        status, and STOPPING=1 on SIGTERM."""
        ctx.model("alpha", size="4M")
        sock_dir = tempfile.mkdtemp(prefix="mpool-notify-")  # socket paths must stay short
        sock_path = os.path.join(sock_dir, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(DEADLINE)
        config = ctx.write_config()
        env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        log_path = os.path.join(ctx.dir, "notify.log")
        try:
                with open(log_path, "wb") as log:
                        proc = ctx.spawn(ctx.daemon_command() + [f"--address={ctx.suite.address}", f"--config={config}",
                                          "--no-polkit"], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)

                def receive_until(key):
                        while True:
                                fields = dict(line.split("=", 1) for line in
                                              sock.recv(4096).decode().splitlines() if "=" in line)
                                if key in fields:
                                        return fields

                ready = receive_until("READY")
                assert ready["READY"] == "1", ready
                owner = subprocess.run(["busctl", f"--address={ctx.suite.address}", "status", BUS_NAME],
                                       capture_output=True, text=True)
                assert owner.returncode == 0 and f"PID={proc.pid}" in owner.stdout, \
                        f"READY=1 came before mpoold owned {BUS_NAME}: {owner.stdout}{owner.stderr}"
                status = receive_until("STATUS")
                assert "model" in status["STATUS"] and "MiB" in status["STATUS"], status

                proc.send_signal(signal.SIGTERM)
                stopping = receive_until("STOPPING")
                assert stopping["STOPPING"] == "1", stopping
                assert proc.wait(DEADLINE) == 0
        finally:
                sock.close()
                shutil.rmtree(sock_dir, ignore_errors=True)


# The same cancellations, held at a gate of the test build rather than
# raced against the disk: they cannot pass by the load being quick.

def test_unload_cancels_held_load(ctx):
        ctx.model("held", size="4M")
        gate = ctx.gate("held")
        d = ctx.daemon(gates=True)
        outcome, unloaded = attempt_cancel(ctx, d, "held")
        assert unloaded is False, "Unload of a load it cancelled replied that the model was loaded"
        check_cancelled(ctx, d, "held", outcome, 0)
        # A fresh load passes the gate once it is opened.
        thread = load_in_thread(d, "held", outcome := {})
        ctx.monitor.wait(lambda sigs: len(load_starts(ctx, "held")) >= 2, "the second load to start")
        gate.release()
        thread.join(DEADLINE)
        assert "path" in outcome, outcome


def test_unload_all_cancels_held_load(ctx):
        ctx.model("small", size="1M")
        ctx.model("held", size="4M")
        ctx.gate("held")
        d = ctx.daemon(gates=True)
        d.load("small")
        outcome, unloaded = attempt_cancel(ctx, d, "held", cancel=lambda c: c.unload_all())
        assert sorted(unloaded) == ["small"], unloaded
        check_cancelled(ctx, d, "held", outcome, 0)


def test_unload_cancels_queued_load(ctx):
        """A load still waiting for a worker is taken off the queue: its
        callers are told at once, and the load under way goes on."""
        ctx.model("running", size="1M")
        ctx.model("queued", size="1M")
        gate = ctx.gate("running")
        d = ctx.daemon(MaxConcurrentLoads="1", gates=True)
        running, queued = {}, {}
        t1 = load_in_thread(d, "running", running)
        ctx.monitor.wait(lambda sigs: load_starts(ctx, "running"), "the load of running to start")
        t2 = load_in_thread(d, "queued", queued)
        wait_until(lambda: d.model("queued")["state"] == "loading", "queued to be queued")
        assert d.unload("queued") is False
        t2.join(DEADLINE)
        assert queued["error"][0] == ERROR_CANCELLED, queued
        assert d.model("queued")["state"] == "available"
        gate.release()
        t1.join(DEADLINE)
        assert "path" in running, running


def test_sigterm_during_held_load_cancels_it(ctx):
        ctx.model("held", size="4M")
        ctx.gate("held")
        d = ctx.daemon(gates=True)
        outcome = {}
        thread = load_in_thread(d, "held", outcome)
        ctx.monitor.wait(lambda sigs: load_starts(ctx, "held"), "LoadProgress of held")
        assert d.stop() == 0
        thread.join(DEADLINE)
        assert outcome["error"][0] == ERROR_CANCELLED, outcome
