# SPDX-License-Identifier: MIT
"""What a Pull looks like from the bus while it runs and after it ends: a
model pulled for the first time is an object in state "downloading" with
its progress, goes if the pull fails or is cancelled, and becomes an
ordinary model when it completes; a model in the store that is pulled
again stays usable. Also the store on a small tmpfs (InsufficientStorage),
the cleaning of staging folders when a pull starts, and the environment
the download helper gets. Against tests/tools/fake-hub.py on loopback;
every wait is on an event."""

import json
import os
import re
import subprocess
import time

import dbus

from harness import (MANAGER_IFACE, MODEL_IFACE, MiB, PROPERTIES_IFACE, Skip, expect_dbus_error, model_path,
                     wait_until)
from tests_client import MonitorRun, run
from tests_pull import FakeHub, make_repo, weights_requests
from tests_pull_daemon import STAGING, cancel, hub_daemon, part_path, pull, stall, wait_finished
from tests_watch import added, marker, removed, wait_added, wait_removed

ERROR_BUSY = "org.mpool.Error.Busy"
ERROR_INSUFFICIENT_STORAGE = "org.mpool.Error.InsufficientStorage"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"


def index_of(signals, predicate, what):
        for i, s in enumerate(signals):
                if predicate(s):
                        return i
        raise AssertionError(f"no {what} among {signals!r}")


def state_changed_to(name, state):
        def match(s):
                return (s.interface == PROPERTIES_IFACE and s.member == "PropertiesChanged"
                        and s.path == model_path(name) and s.args[1].get("State") == state)
        return match


def finished_signal(name, result):
        def match(s):
                return (s.interface == MANAGER_IFACE and s.member == "DownloadFinished" and s.args[0] == name
                        and s.args[1] == result)
        return match


def wait_progress(d, name, at_least):
        """The model's Status entry once its download_done reached at_least."""
        def check():
                m = d.model(name)
                return m if m and m["download_done"] >= at_least else None
        return wait_until(check, f"Status to show {at_least} bytes of {name} downloaded")


def weights_size(source):
        return os.path.getsize(os.path.join(source, "model.safetensors"))


def test_pull_state_first_pull_is_a_downloading_object(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="4M", extras=False)
        cut = 1 * MiB + 4321
        stall(hub, cut)
        d = hub_daemon(ctx, hub)
        events = MonitorRun(ctx, d, "org/tiny")

        assert pull(d, "org/tiny") == model_path("org/tiny")
        assert wait_added(ctx, "org/tiny")["State"] == "downloading"
        wait_until(lambda: os.path.exists(part_path(ctx)) and os.path.getsize(part_path(ctx)) == cut,
                   "the .part to reach the stall")
        model = wait_progress(d, "org/tiny", cut)
        assert model["state"] == "downloading" and model["memory_bytes"] == 0, model
        assert model["source"] == "hub" and model["revision"] == "" and model["kind"] == "", model
        total = model["download_total"]
        assert total >= 4 * MiB and model["download_done"] <= total, model
        props = d.py.get_all(model_path("org/tiny"), MODEL_IFACE)
        assert props["State"] == "downloading" and props["DownloadTotal"] == total, props
        assert cut <= props["DownloadDone"] <= total, props
        pool, _ = d.status()
        assert pool["models_loaded"] == 0 and pool["memory_used"] == 0, pool
        assert not os.path.exists(os.path.join(ctx.store, "org", "tiny"))

        # Never a half model: loading it is refused with a word why.
        for member, sig, args in (("Load", "sa{sv}", ("org/tiny", dbus.Dictionary({}, signature="sv"))),
                                  ("Acquire", "s", ("org/tiny",))):
                message = expect_dbus_error(ERROR_BUSY, d.py.call, member, sig, args)
                assert "being downloaded" in message, message
        assert d.model("org/tiny")["state"] == "downloading"

        # The client shows it.
        text = run(ctx, d, "status").stdout
        assert re.search(r"Models: 0 loaded, 1 downloading, 1 known", text), text
        row = next(line for line in text.splitlines() if line.startswith("org/tiny "))
        assert re.search(r"downloading \d+%", row), row
        details = run(ctx, d, "status", "org/tiny").stdout
        assert re.search(r"Download: .* of .* \(\d+%\)", details), details

        # Its progress has a signal of its own: no PropertiesChanged for it.
        for s in ctx.monitor.signals("PropertiesChanged", iface=PROPERTIES_IFACE):
                assert not {"DownloadDone", "DownloadTotal"} & (set(s.args[1]) | set(s.args[2])), s

        # Cancelled: nothing is left, and the object goes before the news.
        cancel(d, "org/tiny")
        assert wait_finished(ctx, "org/tiny")[1] == "cancelled"
        wait_removed(ctx, "org/tiny")
        signals = ctx.monitor.signals(iface=None)
        assert index_of(signals, lambda s: s.member == "InterfacesRemoved" and s.args[0] == model_path("org/tiny"),
                        "InterfacesRemoved") < index_of(signals, finished_signal("org/tiny", "cancelled"),
                                                        "DownloadFinished")
        assert d.model("org/tiny") is None
        assert model_path("org/tiny") not in d.py.managed_objects()
        events.wait_line(lambda line: "org/tiny: download cancelled" in line, "the monitor's line")
        assert any(re.search(r"org/tiny: downloading, \d+% \(", line) for line in events.lines()), events.lines()

        # Pulled to the end: available before DownloadFinished says so,
        # announced once, by the Pull, never again by the store watch.
        hub.control()
        pull(d, "org/tiny")
        assert wait_finished(ctx, "org/tiny", 2)[1] == "done"
        model = d.model("org/tiny")
        assert model["state"] == "available" and model["size_bytes"] == weights_size(source), model
        assert model["download_done"] == model["download_total"] == 0, model
        assert model["source"] == "hub" and model["revision"] == hub.commit("org/tiny"), model
        # Its profile was read with its size, as for a model found in the store.
        assert model["kind"] == "weights", model
        signals = ctx.monitor.signals(iface=None)
        assert index_of(signals, state_changed_to("org/tiny", "available"), "State available") < \
                index_of(signals, finished_signal("org/tiny", "done"), "DownloadFinished done")
        marker(ctx, "late")
        assert len(added(ctx, "org/tiny")) == 2, added(ctx, "org/tiny")
        assert len(removed(ctx, "org/tiny")) == 1, removed(ctx, "org/tiny")
        assert d.load("org/tiny") == model_path("org/tiny")
        events.wait_line(lambda line: "org/tiny: pulled into the store" in line, "the monitor's pulled line")
        assert events.stop() == 0


def test_pull_state_failed_first_pull_leaves_no_object(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        hub.control(corrupt=["model.safetensors"])
        d = hub_daemon(ctx, hub)

        pull(d, "org/tiny")
        name, result, message = wait_finished(ctx, "org/tiny")
        assert result == "failed" and "hash-mismatch" in message, message
        assert wait_added(ctx, "org/tiny")["State"] == "downloading"
        wait_removed(ctx, "org/tiny")
        assert d.model("org/tiny") is None
        # Failed before the reply (no such repository): the same.
        expect_dbus_error("org.mpool.Error.DownloadFailed", pull, d, "org/missing")
        wait_removed(ctx, "org/missing")
        assert d.model("org/missing") is None
        assert not os.path.exists(os.path.join(ctx.store, "org"))


def test_pull_state_pulled_again_stays_usable(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="4M", extras=False)
        d = hub_daemon(ctx, hub)
        pull(d, "org/tiny")
        assert wait_finished(ctx, "org/tiny")[1] == "done"

        # As if the hub had a newer commit than the one in the store.
        folder = os.path.join(ctx.store, "org", "tiny")
        metadata = os.path.join(folder, ".mpool-pull.json")
        with open(metadata) as f:
                meta = json.load(f)
        meta["commit"] = "0" * 40
        with open(metadata, "w") as f:
                json.dump(meta, f)
        before = os.stat(folder).st_ino
        cut = 2 * MiB + 99
        stall(hub, cut)

        pull(d, "org/tiny")
        model = wait_progress(d, "org/tiny", cut)
        assert model["state"] == "available" and model["size_bytes"] > 0, model
        assert d.load("org/tiny") == model_path("org/tiny")
        model = d.model("org/tiny")
        assert model["state"] == "loaded" and model["download_total"] > 0, model
        row = next(line for line in run(ctx, d, "status").stdout.splitlines() if line.startswith("org/tiny "))
        assert re.search(r"loaded, pulling \d+%", row), row
        d.unload("org/tiny")

        # Cancelled: the model stays as it was.
        cancel(d, "org/tiny")
        assert wait_finished(ctx, "org/tiny", 2)[1] == "cancelled"
        model = d.model("org/tiny")
        assert model["state"] == "available" and model["download_total"] == 0, model
        assert not removed(ctx, "org/tiny")
        assert os.stat(folder).st_ino == before

        # Pulled to the end: the new folder replaces the old, whose files
        # go on the worker.
        hub.control()
        pull(d, "org/tiny")
        assert wait_finished(ctx, "org/tiny", 3)[1] == "done"
        assert os.stat(folder).st_ino != before
        with open(metadata) as f:
                assert json.load(f)["commit"] == hub.commit("org/tiny")
        staging = os.path.join(ctx.store, STAGING)
        wait_until(lambda: not os.path.exists(staging) or not os.listdir(staging),
                   "the replaced model's files to be removed")
        assert d.model("org/tiny")["state"] == "available"
        assert not removed(ctx, "org/tiny") and len(added(ctx, "org/tiny")) == 1
        assert d.load("org/tiny") == model_path("org/tiny")


class Tmpfs:
        """A tmpfs of the given size mounted on a fresh folder (as root);
        Skip when the machine does not let us mount one."""

        def __init__(self, ctx, name, size):
                self.path = os.path.join(ctx.dir, name)
                os.makedirs(self.path)
                proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "mpool-test",
                                       self.path], stdin=subprocess.DEVNULL, capture_output=True, text=True)
                if proc.returncode != 0:
                        raise Skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")

        def unmount(self):
                # Lazily: a daemon that failed the test may still watch it.
                subprocess.run(["umount", "--lazy", self.path], stdin=subprocess.DEVNULL, check=True)


def store_config(ctx, store, hub):
        raw = (f"[Store]\nModelDir={store}\n\n[Pool]\nMemoryLimit=512M\n\n[Hub]\nEndpoint={hub.endpoint}\n")
        return ctx.write_config(raw=raw)


def test_pull_state_insufficient_storage_leaves_nothing(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="8M", extras=False)
        store = Tmpfs(ctx, "small-store", "4m")
        try:
                d = ctx.daemon(config=store_config(ctx, store.path, hub))
                message = expect_dbus_error(ERROR_INSUFFICIENT_STORAGE, pull, d, "org/tiny")
                assert "org/tiny" in message and "free" in message, message
                assert wait_finished(ctx, "org/tiny")[1] == "failed"
                wait_removed(ctx, "org/tiny")
                assert d.model("org/tiny") is None
                # No model, no staging folder: nothing at all.
                assert os.listdir(store.path) == [], os.listdir(store.path)
                assert not weights_requests(hub), hub.requests()
                d.stop()
        finally:
                store.unmount()


def make_staging_folder(store, name, size, age_days):
        folder = os.path.join(store, STAGING, name)
        os.makedirs(folder)
        with open(os.path.join(folder, "model.safetensors.part"), "wb") as f:
                f.write(os.urandom(size))
        when = time.time() - age_days * 24 * 3600
        os.utime(folder, (when, when))
        return folder


def test_pull_state_staging_is_cleaned_when_a_pull_starts(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="1M", extras=False)
        # 10% of 16 MiB may hold what failed downloads keep.
        store = Tmpfs(ctx, "store16", "16m")
        try:
                d = ctx.daemon(config=store_config(ctx, store.path, hub))
                older = make_staging_folder(store.path, "org--older", 1 * MiB, 2)
                newer = make_staging_folder(store.path, "org--newer", 1 * MiB, 1)
                stale = make_staging_folder(store.path, "org--stale", 4096, 8)
                replaced = make_staging_folder(store.path, ".replaced-org--gone-7", 4096, 0)
                # The pulled repository's own folder stays, however old: the
                # pull resumes from it.
                own = os.path.join(store.path, STAGING, "org--tiny")
                os.makedirs(own)
                with open(os.path.join(source, "model.safetensors"), "rb") as f:
                        head = f.read(300 * 1024)
                with open(os.path.join(own, "model.safetensors.part"), "wb") as f:
                        f.write(head)
                old = time.time() - 30 * 24 * 3600
                os.utime(own, (old, old))

                pull(d, "org/tiny")
                assert wait_finished(ctx, "org/tiny")[1] == "done"
                requests = weights_requests(hub)
                assert len(requests) == 1 and requests[0]["range"] == f"bytes={len(head)}-", requests
                for gone in (older, stale, replaced):
                        assert not os.path.exists(gone), (gone, os.listdir(os.path.join(store.path, STAGING)))
                assert os.path.exists(os.path.join(newer, "model.safetensors.part"))
                log = d.log()
                assert "beyond 10% of the file system" in log and "unused for 7 days" in log, log
                d.stop()
        finally:
                store.unmount()


def helper_pid(d):
        """The download helper the daemon runs (its one child), or None."""
        for entry in os.listdir("/proc"):
                if not entry.isdigit():
                        continue
                try:
                        with open(f"/proc/{entry}/stat") as f:
                                stat = f.read()
                except OSError:
                        continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == d.pid:
                        return int(entry)
        return None


def read_nul_list(path):
        with open(path, "rb") as f:
                return [item.decode() for item in f.read().split(b"\0") if item]


def test_pull_state_helper_gets_a_cleared_environment(ctx):
        hub = FakeHub(ctx)
        expected = {"https_proxy": "http://127.0.0.1:9", "no_proxy": "127.0.0.1,127.0.0.2",
                    "MPOOL_LOG_LEVEL": "debug"}
        for repo, cut, gates, helper, argument in (
                        ("org/plain", 8192, False, "mpool-pull", None),
                        ("org/test", 16384, True, "mpool-pull-test", "--test-backoff-msec=20")):
                make_repo(ctx, hub, name=repo, size="2M", extras=False)
                # Each fault is used once: another cut for each.
                stall(hub, cut)
                d = hub_daemon(ctx, hub, start=False, gates=gates)
                d.env.update(expected, MPOOL_TEST_SECRET="must-not-pass", HTTP_PROXY="http://127.0.0.1:9")
                d.start()
                pull(d, repo)
                part = os.path.join(ctx.store, STAGING, repo.replace("/", "--"), "model.safetensors.part")
                wait_until(lambda: os.path.exists(part) and os.path.getsize(part) == cut,
                           "the .part to reach the stall")
                pid = wait_until(lambda: helper_pid(d), "the download helper")
                environment = dict(entry.split("=", 1) for entry in read_nul_list(f"/proc/{pid}/environ"))
                sanitizers = {k for k in environment if k in ("ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS")}
                assert {k: environment[k] for k in set(environment) - sanitizers} == expected, environment
                argv = read_nul_list(f"/proc/{pid}/cmdline")
                assert os.path.basename(argv[0]) == helper, argv
                assert [a for a in argv if a.startswith("--test-")] == ([argument] if argument else []), argv
                cancel(d, repo)
                assert wait_finished(ctx, repo)[1] == "cancelled"
                d.stop()
