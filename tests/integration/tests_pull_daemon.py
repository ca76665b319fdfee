# SPDX-License-Identifier: MIT
"""Pull and Cancel through the daemon: mpoold starts mpool-pull (from the
build, through MPOOL_PULL_PATH) against tests/tools/fake-hub.py on loopback
and moves a verified model into its store. Every wait is on an event (a
signal, a reply, a file reaching a size); the fake hub's stall stops a
transfer at a byte count, never at a time."""

import json
import os
import subprocess
import threading
import time

import dbus

from harness import BUS_NAME, DEADLINE, MANAGER_IFACE, MANAGER_PATH, MiB, expect_dbus_error, model_path, wait_until
from tests_pull import FakeHub, make_repo, read, weights_requests
from tests_lifecycle import attempt_cancel
from tests_watch import wait_added

ERROR_DOWNLOAD_FAILED = "org.mpool.Error.DownloadFailed"
ERROR_NOTHING_TO_CANCEL = "org.mpool.Error.NothingToCancel"
STAGING = ".staging"


def hub_daemon(ctx, hub, pool="", **kwargs):
        raw = (f"[Store]\nModelDir={ctx.store}\n\n[Pool]\nMemoryLimit=512M\n{pool}\n"
               f"[Hub]\nEndpoint={hub.endpoint}\n")
        return ctx.daemon(config=ctx.write_config(raw=raw), **kwargs)


def pull(d, repo, **options):
        return d.py.call("Pull", "sa{sv}", (repo, {k: dbus.String(v) for k, v in options.items()}))


def cancel(d, name):
        return d.py.call("Cancel", "s", (name,))


def finished(ctx, name):
        return [tuple(s.args) for s in ctx.monitor.signals("DownloadFinished", name)]


def wait_finished(ctx, name, count=1):
        return wait_until(lambda: finished(ctx, name)[count - 1] if len(finished(ctx, name)) >= count else None,
                          f"DownloadFinished #{count} for {name}")


def store_files(ctx):
        out = []
        for dirpath, _, filenames in os.walk(ctx.store):
                for name in filenames:
                        out.append(os.path.relpath(os.path.join(dirpath, name), ctx.store))
        return sorted(out)


def info_requests(hub, repo="org/tiny"):
        return [r for r in hub.requests() if r["path"].startswith(f"/api/models/{repo}/")]


def test_pull_daemon_end_to_end(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="2M")
        d = hub_daemon(ctx, hub)

        assert pull(d, "org/tiny") == model_path("org/tiny")
        assert wait_finished(ctx, "org/tiny") == ("org/tiny", "done", "")
        wait_added(ctx, "org/tiny")
        progress = [tuple(s.args) for s in ctx.monitor.signals("DownloadProgress", "org/tiny")]
        assert progress and progress[-1][1] == progress[-1][2] > 2 * MiB, progress

        model = os.path.join(ctx.store, "org", "tiny")
        assert read(os.path.join(model, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))
        with open(os.path.join(model, ".mpool-pull.json")) as f:
                meta = json.load(f)
        assert meta["repo"] == "org/tiny" and meta["revision"] == "main" and meta["commit"] == hub.commit("org/tiny")
        assert "model.safetensors" in {f["name"] for f in meta["files"]}, meta
        assert not os.listdir(os.path.join(ctx.store, STAGING)), os.listdir(os.path.join(ctx.store, STAGING))
        assert d.load("org/tiny") == model_path("org/tiny")
        assert d.model("org/tiny")["state"] == "loaded"
        d.unload("org/tiny")

        # Complete at that commit already: a reply, and nothing fetched.
        hub.clear_log()
        assert pull(d, "org/tiny") == model_path("org/tiny")
        assert not weights_requests(hub), hub.requests()
        # Every Pull that replied is followed by its DownloadFinished.
        assert wait_finished(ctx, "org/tiny", 2) == ("org/tiny", "done", "")
        assert len(info_requests(hub)) == 1, hub.requests()


def test_pull_daemon_not_found(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        d = hub_daemon(ctx, hub)

        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, pull, d, "org/missing")
        assert "not-found" in message and "org/missing" in message, message
        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, pull, d, "org/tiny", revision="no-such-branch")
        assert "not-found" in message, message
        assert finished(ctx, "org/missing")[0][1] == "failed"
        assert not os.path.exists(os.path.join(ctx.store, "org", "missing"))
        assert d.model("org/missing") is None


def test_pull_daemon_bad_arguments(ctx):
        hub = FakeHub(ctx)
        d = hub_daemon(ctx, hub)
        for repo, options in (("../etc", {}), ("a/b/c", {}), ("org/tiny", {"revision": "../x"}),
                              ("org/tiny", {"revision": ""}), ("org/tiny", {"revision": "a b"}),
                              ("org/tiny", {"token": "x" * 4097}), ("org/tiny", {"colour": "red"})):
                expect_dbus_error("org.freedesktop.DBus.Error.InvalidArgs", pull, d, repo, **options)
        assert not hub.requests(), hub.requests()
        expect_dbus_error(ERROR_NOTHING_TO_CANCEL, cancel, d, "org/tiny")


def test_pull_daemon_hash_mismatch_leaves_no_model(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        hub.control(corrupt=["model.safetensors"])
        d = hub_daemon(ctx, hub)

        assert pull(d, "org/tiny") == model_path("org/tiny")
        name, result, message = wait_finished(ctx, "org/tiny")
        assert result == "failed" and "hash-mismatch" in message, message
        assert not os.path.exists(os.path.join(ctx.store, "org")), store_files(ctx)
        assert d.model("org/tiny") is None


def stall(hub, cut):
        hub.control(stall=[{"file": "model.safetensors", "after": cut, "times": 1}])


def part_path(ctx):
        return os.path.join(ctx.store, STAGING, "org--tiny", "model.safetensors.part")


def test_pull_daemon_cancel_and_join(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="4M", extras=False)
        cut = 1 * MiB + 4321
        stall(hub, cut)
        d = hub_daemon(ctx, hub)

        first = pull(d, "org/tiny")
        part = part_path(ctx)
        wait_until(lambda: os.path.exists(part) and os.path.getsize(part) == cut, "the .part to reach the stall")
        # A second Pull joins the download under way.
        assert pull(d, "org/tiny") == first == model_path("org/tiny")
        assert len(info_requests(hub)) == 1, hub.requests()

        cancel(d, "org/tiny")
        assert wait_finished(ctx, "org/tiny")[1] == "cancelled"
        assert not os.path.exists(os.path.join(ctx.store, "org")), store_files(ctx)
        assert d.model("org/tiny") is None
        # The .part stays as what a later pull resumes from.
        assert os.path.getsize(part) == cut
        expect_dbus_error(ERROR_NOTHING_TO_CANCEL, cancel, d, "org/tiny")


def test_pull_daemon_queue_and_cancel_before_the_reply(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, name="org/big", size="4M", extras=False)
        make_repo(ctx, hub, size="1M", extras=False)
        hub.control(stall=[{"file": "model.safetensors", "after": 4096, "times": 1}])
        d = hub_daemon(ctx, hub, pool="MaxConcurrentDownloads=1\n")

        pull(d, "org/big")
        outcome = {}

        def second():
                # busctl, a connection of its own: the call blocks until the
                # reply.
                proc = d.ctl.run("call", BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "Pull", "sa{sv}", "org/tiny", "0",
                                 check=False)
                outcome["rc"], outcome["error"] = proc.returncode, proc.stderr
        t = threading.Thread(target=second)
        t.start()

        def cancelled():
                try:
                        cancel(d, "org/tiny")
                        return True
                except dbus.exceptions.DBusException as e:
                        if e.get_dbus_name() != ERROR_NOTHING_TO_CANCEL:
                                raise
                        return False
        # Cancel succeeds once the second Pull is queued behind the first.
        wait_until(cancelled, "the queued pull to be cancelled", interval=0.05)
        t.join(timeout=DEADLINE)
        # busctl prints the error's message, not its name.
        assert outcome["rc"] != 0 and "org/tiny was cancelled" in outcome["error"], outcome
        assert not info_requests(hub, "org/tiny"), hub.requests()
        assert wait_finished(ctx, "org/tiny")[1] == "cancelled"
        cancel(d, "org/big")
        assert wait_finished(ctx, "org/big")[1] == "cancelled"
        assert not os.path.exists(os.path.join(ctx.store, "org")), store_files(ctx)


def test_pull_daemon_resumes_after_kill(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="4M", extras=False)
        cut = 2 * MiB + 777
        stall(hub, cut)
        d = hub_daemon(ctx, hub)

        pull(d, "org/tiny")
        part = part_path(ctx)
        wait_until(lambda: os.path.exists(part) and os.path.getsize(part) == cut, "the .part to reach the stall")
        d.kill()
        ctx.daemons.remove(d)

        hub.control()
        hub.clear_log()
        d = hub_daemon(ctx, hub)
        pull(d, "org/tiny")
        assert wait_finished(ctx, "org/tiny")[1] == "done"
        requests = weights_requests(hub)
        assert len(requests) == 1 and requests[0]["range"] == f"bytes={cut}-", requests
        model = os.path.join(ctx.store, "org", "tiny", "model.safetensors")
        assert read(model) == read(os.path.join(source, "model.safetensors"))


def test_pull_daemon_token_is_never_kept(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        token = "hf_secretTOKEN0123456789"
        hub.control(token=token)
        d = hub_daemon(ctx, hub)

        # The hub wants it: without, the pull fails.
        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, pull, d, "org/tiny")
        assert "unauthorized" in message, message
        pull(d, "org/tiny", token=token)
        assert wait_finished(ctx, "org/tiny", 2)[1] == "done"
        assert any(r["auth"] for r in hub.requests()), hub.requests()
        for name in store_files(ctx):
                with open(os.path.join(ctx.store, name), "rb") as f:
                        assert token.encode() not in f.read(), name
        assert token not in json.dumps(d.status(), default=str)
        d.stop()
        assert token not in d.log()
        assert "org/tiny" in d.log()


def test_pull_daemon_cancel_of_a_load(ctx):
        ctx.model("held", size="4M")
        ctx.gate("held")
        d = ctx.daemon(gates=True)
        outcome, _ = attempt_cancel(ctx, d, "held", cancel=lambda c: c.call("Cancel", "s", ("held",)))
        assert outcome["error"][0] == "org.mpool.Error.Cancelled", outcome
        failed = wait_until(lambda: ctx.monitor.signals("LoadFailed", "held"), "LoadFailed for held")
        assert failed[-1].args[1] == "org.mpool.Error.Cancelled", failed
        d.wait_model("held", lambda m: m["state"] in ("available", "error"), "not loaded after the cancel")


def test_pull_daemon_polkit_refuses_nobody(ctx):
        from tests_polkit import (ACCESS_DENIED, INTERACTIVE_REQUIRED, NobodyClient, assert_error, call_spec,
                                  variant_options)
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        d = hub_daemon(ctx, hub, polkit=True)
        nobody = NobodyClient(ctx)
        call = call_spec("Pull", ["s", "a{sv}"], ["org/tiny", variant_options({})])

        assert_error(nobody.call(call, interactive=False), INTERACTIVE_REQUIRED, "nobody's Pull",
                     "org.mpool.manage-models")
        assert_error(nobody.call(call, interactive=True), ACCESS_DENIED, "nobody's interactive Pull",
                     "org.mpool.manage-models")
        assert not hub.requests(), hub.requests()
        assert not os.path.exists(os.path.join(ctx.store, STAGING))
        ctx.sync()
        assert not ctx.monitor.signals("DownloadFinished"), ctx.monitor.signals("DownloadFinished")


def test_pull_daemon_client_pull_and_cancel(ctx):
        from tests_client import client_argv, client_env, run, run_json
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        make_repo(ctx, hub, name="org/big", size="4M", extras=False)
        d = hub_daemon(ctx, hub)

        proc = run(ctx, d, "pull", "org/tiny")
        assert "Pulled org/tiny" in proc.stdout, proc.stdout
        assert os.path.exists(os.path.join(ctx.store, "org", "tiny", ".mpool-pull.json"))
        assert run_json(ctx, d, "pull", "org/tiny") == {"name": "org/tiny", "path": model_path("org/tiny"),
                                                         "result": "done"}
        proc = run(ctx, d, "pull", "org/missing", expect=11)
        assert "not-found" in proc.stderr, proc.stderr
        run(ctx, d, "pull", "org/tiny", "--revision=../x", expect=2)
        run(ctx, d, "cancel", "org/tiny", expect=3)

        # Ctrl-C (SIGINT) of a pull cancels the download.
        hub.control(stall=[{"file": "model.safetensors", "after": 8192, "times": 1}])
        p = ctx.spawn(client_argv(ctx, d, "pull", "org/big"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True, env=client_env())
        part = os.path.join(ctx.store, STAGING, "org--big", "model.safetensors.part")
        wait_until(lambda: os.path.exists(part) and os.path.getsize(part) == 8192, "the .part to reach the stall")
        p.send_signal(2)
        out, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 130, (p.returncode, out, err)
        assert "Cancelled pulling org/big." in err, err
        assert wait_finished(ctx, "org/big")[1] == "cancelled"
        assert not os.path.exists(os.path.join(ctx.store, "org", "big"))

        # cancel NAME of a download under way: the pull exits "cancelled".
        cut = 2 * MiB
        hub.control(stall=[{"file": "model.safetensors", "after": cut, "times": 1}])
        p = ctx.spawn(client_argv(ctx, d, "pull", "org/big"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True, env=client_env())
        wait_until(lambda: os.path.exists(part) and cut <= os.path.getsize(part) <= cut + 8192,
                   "the resumed .part to reach the stall")
        assert run_json(ctx, d, "cancel", "org/big") == {"name": "org/big", "cancelled": True}
        out, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 9, (p.returncode, out, err)
        assert "Cancelled pulling org/big." in err, err


def test_pull_daemon_token_file(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        token = "hf_fromTheTokenFile42"
        hub.control(token=token)
        path = os.path.join(ctx.dir, "hub-token")
        with open(path, "w") as f:
                f.write(token + "\n")
        raw = (f"[Store]\nModelDir={ctx.store}\n\n[Pool]\nMemoryLimit=512M\n\n"
               f"[Hub]\nEndpoint={hub.endpoint}\nTokenFile={path}\n")
        d = ctx.daemon(config=ctx.write_config(raw=raw))

        assert pull(d, "org/tiny") == model_path("org/tiny")
        assert wait_finished(ctx, "org/tiny")[1] == "done"
        assert any(r["auth"] for r in hub.requests()), hub.requests()
        # Read at use: a token file that went away fails the next pull.
        os.unlink(path)
        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, pull, d, "org/tiny")
        assert "token file" in message and path in message, message
        d.stop()
        assert token not in d.log()


def test_pull_daemon_old_staging_is_removed_at_start(ctx):
        staging = os.path.join(ctx.store, STAGING)
        old = os.path.join(staging, "org--old")
        fresh = os.path.join(staging, "org--fresh")
        for folder in (old, fresh):
                os.makedirs(os.path.join(folder, "1_Pooling"))
                with open(os.path.join(folder, "model.safetensors.part"), "wb") as f:
                        f.write(b"x" * 4096)
                with open(os.path.join(folder, "1_Pooling", "config.json.part"), "wb") as f:
                        f.write(b"{}")
        eight_days_ago = time.time() - 8 * 24 * 3600
        os.utime(old, (eight_days_ago, eight_days_ago))
        hub = FakeHub(ctx)
        hub_daemon(ctx, hub)
        assert not os.path.exists(old), os.listdir(staging)
        assert os.path.exists(os.path.join(fresh, "model.safetensors.part")), os.listdir(fresh)
