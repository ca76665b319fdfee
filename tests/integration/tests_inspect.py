# SPDX-License-Identifier: MIT
"""Inspect through the daemon: mpoold runs mpool-pull --inspect (from the
build) against tests/tools/fake-hub.py on loopback and answers what a pull
would fetch and what the model will take in memory. A hub that never
answers is made with the fake hub's stall (at byte 0 of the weights'
first Range request), so every wait is on an event, never a time."""

import json
import os
import subprocess

import dbus

from harness import BUS_NAME, DEADLINE, MANAGER_IFACE, MANAGER_PATH, expect_dbus_error, model_path, wait_until
from tests_pull import FakeHub, USED_FILES, make_repo, page_align, safetensors_summary, weights_requests
from tests_pull_daemon import ERROR_DOWNLOAD_FAILED, STAGING, hub_daemon, pull, store_files, wait_finished

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ERROR_BUSY = "org.mpool.Error.Busy"
INSPECTIONS_MAX = 4
INFO_KEYS = {"commit", "files", "file_sizes", "download_bytes", "tensors", "parameters", "dtypes", "memory_bytes",
             "memory_limit", "memory_pinned", "fits"}


def inspect(d, repo, **options):
        return d.py.call("Inspect", "sa{sv}", (repo, {k: dbus.String(v) for k, v in options.items()}))


def expected_weights(source):
        """tensors, parameters, dtypes and memory of the weights in source, as
        the daemon will count them once loaded."""
        shards = sorted(f for f in os.listdir(source) if f.endswith(".safetensors"))
        if "model.safetensors" in shards:
                shards = ["model.safetensors"]
        tensors = parameters = memory = 0
        dtypes = {}
        for shard in shards:
                t, n, kinds = safetensors_summary(os.path.join(source, shard))
                tensors += t
                parameters += n
                for k, v in kinds.items():
                        dtypes[k] = dtypes.get(k, 0) + v
                memory += page_align(os.path.getsize(os.path.join(source, shard)))
        return tensors, parameters, dtypes, memory


def helpers(d):
        """The mpool-pull processes the daemon runs."""
        found = []
        for pid in os.listdir("/proc"):
                if not pid.isdigit():
                        continue
                try:
                        with open(f"/proc/{pid}/stat") as f:
                                stat = f.read()
                except OSError:
                        continue
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                if ppid == d.pid and comm == "mpool-pull":
                        found.append(int(pid))
        return found


def stall_weights(hub):
        """The hub sends the headers of the weights' first Range request,
        then nothing, for ever."""
        hub.control(stall=[{"file": "model.safetensors", "after": 0, "times": -1}])


def stalled_requests(hub):
        return [r for r in weights_requests(hub) if r["range"] == "bytes=0-7"]


def busctl_inspect(ctx, d, repo):
        """Inspect from a connection of its own, which ends with the process."""
        return ctx.spawn(["busctl", f"--address={d.address}", "--timeout=600", "call", BUS_NAME, MANAGER_PATH,
                          MANAGER_IFACE, "Inspect", "sa{sv}", repo, "0"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_info(ctx, hub, source, info, repo="org/tiny"):
        assert set(info) == INFO_KEYS, sorted(info)
        assert info["commit"] == hub.commit(repo), info
        names = [f for f in info["files"]]
        for name in names:
                assert info["file_sizes"][name] == os.path.getsize(os.path.join(source, name)), name
        assert list(info["file_sizes"]) == names, info
        assert info["download_bytes"] == sum(info["file_sizes"].values()), info
        tensors, parameters, dtypes, memory = expected_weights(source)
        assert (info["tensors"], info["parameters"], info["dtypes"], info["memory_bytes"]) == \
                (tensors, parameters, dtypes, memory), info


def test_inspect_then_pull_and_load_take_what_it_said(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="3M")
        d = hub_daemon(ctx, hub)

        info = inspect(d, "org/tiny")
        check_info(ctx, hub, source, info)
        assert sorted(info["files"]) == sorted(USED_FILES + ["model.safetensors"]), info["files"]
        pool, _ = d.status()
        assert info["memory_limit"] == pool["memory_limit"] and info["memory_pinned"] == 0, info
        assert info["fits"] is True, info
        # Only the header of the weights was read, and nothing was written.
        # (The hub logs a request once it has answered it: two in a row may
        # be logged in either order.)
        requests = weights_requests(hub)
        assert len(requests) == 2 and "bytes=0-7" in [r["range"] for r in requests], requests
        assert sum(r["bytes"] for r in requests) < 64 * 1024, requests
        assert store_files(ctx) == [], store_files(ctx)
        assert d.model("org/tiny") is None

        # The pull fetches exactly those files, and the loaded model takes
        # exactly what Inspect said, in Status and in ModelLoaded.
        assert pull(d, "org/tiny") == model_path("org/tiny")
        assert wait_finished(ctx, "org/tiny") == ("org/tiny", "done", "")
        model = os.path.join(ctx.store, "org", "tiny")
        assert sorted(f for f in store_files(ctx) if not f.endswith(".mpool-pull.json")) == \
                sorted(os.path.join("org", "tiny", f) for f in info["files"]), store_files(ctx)
        assert os.path.isdir(model)
        d.load("org/tiny")
        loaded = d.model("org/tiny")
        assert loaded["state"] == "loaded", loaded
        assert loaded["memory_bytes"] == info["memory_bytes"], (loaded, info)
        signal = ctx.monitor.wait(lambda sigs: [s for s in sigs if s.member == "ModelLoaded"
                                                and s.args[0] == "org/tiny"], "ModelLoaded for org/tiny")
        assert signal[-1].args[1] == info["memory_bytes"], (signal[-1].args, info)


def test_inspect_sharded_model(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, name="org/sharded", size="3M", shards=3, dtype="F16", extras=False)
        d = hub_daemon(ctx, hub)

        info = inspect(d, "org/sharded")
        check_info(ctx, hub, source, info, repo="org/sharded")
        with open(os.path.join(source, "model.safetensors.index.json")) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        assert info["files"][0] == "model.safetensors.index.json", info["files"]
        assert sorted(f for f in info["files"] if f.endswith(".safetensors")) == shards, info["files"]
        assert set(info["dtypes"]) == {"F16"}, info["dtypes"]

        pull(d, "org/sharded")
        assert wait_finished(ctx, "org/sharded")[1] == "done"
        d.load("org/sharded")
        assert d.model("org/sharded")["memory_bytes"] == info["memory_bytes"], info


def test_inspect_fits_against_the_limit_and_pinned_models(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="3M", extras=False)
        ctx.model("pinned", size="6M")
        ctx.model("other", size="2M")
        raw = (f"[Store]\nModelDir={ctx.store}\n\n[Pool]\nMemoryLimit=8M\n\n[Hub]\nEndpoint={hub.endpoint}\n")
        d = ctx.daemon(config=ctx.write_config(raw=raw))

        # An unpinned model would be unloaded to make room: it does not count.
        d.load("other")
        info = inspect(d, "org/tiny")
        assert info["memory_limit"] == 8 << 20 and info["memory_pinned"] == 0 and info["fits"] is True, info
        # A pinned one does: 3M beside 6M pinned is over 8M.
        d.py.load("pinned", pin=True)
        pinned = d.model("pinned")["memory_bytes"]
        info = inspect(d, "org/tiny")
        assert info["memory_pinned"] == pinned and info["fits"] is False, (info, pinned)
        d.py.unload("pinned", force=True)
        info = inspect(d, "org/tiny")
        assert info["memory_pinned"] == 0 and info["fits"] is True, info


def test_inspect_failures_say_which(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        d = hub_daemon(ctx, hub)

        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, inspect, d, "org/missing")
        assert "not-found" in message and "org/missing" in message, message
        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, inspect, d, "org/tiny", revision="no-such-branch")
        assert "not-found" in message, message

        # Unreachable: a hub that is gone.
        hub.proc.terminate()
        hub.proc.wait(timeout=DEADLINE)
        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, inspect, d, "org/tiny")
        assert "network" in message, message
        assert not helpers(d)
        assert store_files(ctx) == [], store_files(ctx)


def test_inspect_bad_arguments(ctx):
        hub = FakeHub(ctx)
        d = hub_daemon(ctx, hub)
        for repo, options in (("../etc", {}), ("a/b/c", {}), ("", {}), ("org/tiny", {"revision": "../x"}),
                              ("org/tiny", {"revision": ""}), ("org/tiny", {"revision": "a b"}),
                              ("org/tiny", {"revision": "x" * 256}), ("org/tiny", {"token": ""}),
                              ("org/tiny", {"token": "a\nb"}), ("org/tiny", {"token": "x" * 4097}),
                              ("org/tiny", {"colour": "red"})):
                expect_dbus_error(INVALID_ARGS, inspect, d, repo, **options)
        # A revision of the wrong type.
        expect_dbus_error(INVALID_ARGS, d.py.call, "Inspect", "sa{sv}", ("org/tiny", {"revision": dbus.UInt32(1)}))
        assert not hub.requests(), hub.requests()
        assert not helpers(d)


def test_inspect_token_is_used_and_never_kept(ctx):
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="1M", extras=False)
        token = "hf_inspectTOKEN0123456789"
        hub.control(token=token)
        d = hub_daemon(ctx, hub)

        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, inspect, d, "org/tiny")
        assert "unauthorized" in message, message
        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, inspect, d, "org/tiny", token="hf_wrong")
        assert "unauthorized" in message, message
        info = inspect(d, "org/tiny", token=token)
        check_info(ctx, hub, source, info)
        assert any(r["auth"] for r in hub.requests(server="main")), hub.requests()
        # The CDN never sees it.
        assert not any(r["auth"] for r in hub.requests(server="lfs")), hub.requests()
        assert token not in json.dumps(d.status(), default=str)
        assert store_files(ctx) == [], store_files(ctx)
        d.stop()
        assert token not in d.log()
        assert "org/tiny" in d.log()


def test_inspect_uses_the_token_file(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        token = "hf_fromTheTokenFileForInspect"
        hub.control(token=token)
        path = os.path.join(ctx.dir, "hub-token")
        with open(path, "w") as f:
                f.write(token + "\n")
        raw = (f"[Store]\nModelDir={ctx.store}\n\n[Pool]\nMemoryLimit=512M\n\n"
               f"[Hub]\nEndpoint={hub.endpoint}\nTokenFile={path}\n")
        d = ctx.daemon(config=ctx.write_config(raw=raw))

        assert inspect(d, "org/tiny")["commit"] == hub.commit("org/tiny")
        os.unlink(path)
        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, inspect, d, "org/tiny")
        assert "token file" in message, message
        d.stop()
        assert token not in d.log()


def test_inspect_of_a_hub_that_hangs_times_out(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        stall_weights(hub)
        # The test build, whose inspection timeout the environment shortens:
        # the hub never answers, so only the timeout can end the call.
        d = hub_daemon(ctx, hub, gates=True, start=False)
        d.env["MPOOL_TEST_INSPECTION_TIMEOUT_SEC"] = "2"
        d.start()

        message = expect_dbus_error(ERROR_DOWNLOAD_FAILED, inspect, d, "org/tiny")
        assert "did not answer within 2 s" in message, message
        assert stalled_requests(hub), hub.requests()
        wait_until(lambda: not helpers(d), "no mpool-pull left")
        assert "took longer than 2 s" in d.log(), d.log()


def test_inspect_stops_when_the_caller_leaves(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        stall_weights(hub)
        d = hub_daemon(ctx, hub)

        caller = busctl_inspect(ctx, d, "org/tiny")
        wait_until(lambda: stalled_requests(hub) and helpers(d), "the helper to wait on the stalled hub")
        caller.kill()
        caller.wait(timeout=DEADLINE)
        wait_until(lambda: not helpers(d), "the helper to be stopped")
        wait_until(lambda: "left the bus; stopping its inspection of org/tiny" in d.log(), "the log line")
        # The daemon is none the worse for it.
        hub.control()
        assert inspect(d, "org/tiny")["commit"] == hub.commit("org/tiny")


def test_inspect_is_bounded(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        stall_weights(hub)
        d = hub_daemon(ctx, hub)

        callers = [busctl_inspect(ctx, d, "org/tiny") for _ in range(INSPECTIONS_MAX)]
        wait_until(lambda: len(helpers(d)) == INSPECTIONS_MAX, f"{INSPECTIONS_MAX} helpers")
        message = expect_dbus_error(ERROR_BUSY, inspect, d, "org/tiny")
        assert f"{INSPECTIONS_MAX} inspections" in message, message
        # Other calls go on meanwhile.
        assert d.status()[0]["memory_limit"] > 0
        for caller in callers:
                caller.kill()
                caller.wait(timeout=DEADLINE)
        wait_until(lambda: not helpers(d), "every helper to be stopped")
        hub.control()
        assert inspect(d, "org/tiny")["commit"] == hub.commit("org/tiny")


def test_inspect_shutdown_stops_helpers(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        stall_weights(hub)
        d = hub_daemon(ctx, hub)

        caller = busctl_inspect(ctx, d, "org/tiny")
        wait_until(lambda: stalled_requests(hub) and helpers(d), "the helper to wait on the stalled hub")
        pids = helpers(d)
        assert d.stop() == 0
        out, err = caller.communicate(timeout=DEADLINE)
        assert caller.returncode != 0, (out, err)
        for pid in pids:
                wait_until(lambda: not os.path.exists(f"/proc/{pid}"), f"mpool-pull {pid} to be gone")


def test_inspect_is_open_to_every_local_user(ctx):
        from tests_polkit import NobodyClient, assert_ok, call_spec, variant_options
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M", extras=False)
        d = hub_daemon(ctx, hub, polkit=True)
        nobody = NobodyClient(ctx)

        (info,) = assert_ok(nobody.call(call_spec("Inspect", ["s", "a{sv}"], ["org/tiny", variant_options({})]),
                                        interactive=False), "nobody's Inspect")
        assert info["commit"] == hub.commit("org/tiny"), info
        assert not os.path.exists(os.path.join(ctx.store, STAGING))


def test_inspect_client(ctx):
        from tests_client import check_error, run, run_json
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="3M")
        d = hub_daemon(ctx, hub)

        info = run_json(ctx, d, "inspect", "org/tiny")
        assert info["repo"] == "org/tiny" and info["revision"] == "main", info
        check_info(ctx, hub, source, {k: v for k, v in info.items() if k not in ("repo", "revision")})
        assert info == dict(inspect(d, "org/tiny"), repo="org/tiny", revision="main"), info

        proc = run(ctx, d, "inspect", "org/tiny", f"--revision={hub.commit('org/tiny')}")
        out = proc.stdout
        assert "\x1b" not in out, out
        assert out.startswith(f"org/tiny ({hub.commit('org/tiny')})\n"), out
        assert f"Commit: {hub.commit('org/tiny')}" in out, out
        assert "Files: model.safetensors" in out or "model.safetensors" in out, out
        for name in info["files"]:
                assert name in out, (name, out)
        assert f"Download: {format_bytes(info['download_bytes'])} in {len(info['files'])} files" in out, out
        assert f"Tensors: {info['tensors']}\n" in out, out
        assert f"({info['parameters']})" in out, out
        for dtype in info["dtypes"]:
                assert dtype in out, out
        assert f"Memory: {format_bytes(info['memory_bytes'])} once loaded" in out, out
        assert "Fits: yes, within the limit of 512.0M" in out, out

        # Failures: the exit statuses of pull, one line in words.
        check_error(run(ctx, d, "inspect", "org/missing", expect=11), "org/missing", "not-found")
        check_error(run(ctx, d, "inspect", "org/tiny", "--revision=../x", expect=2), "revision")
        check_error(run(ctx, d, "inspect", "../x", expect=2))
        run(ctx, d, "inspect", expect=2)
        check_error(run(ctx, d, "load", "org/tiny", "--revision=main", expect=2), "--revision")

        # The limit below the model: it does not fit, and says what is left.
        d.ctl.run("set-property", BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "MemoryLimit", "t", str(1 << 20))
        out = run(ctx, d, "inspect", "org/tiny").stdout
        assert "Fits: no, the limit of 1.0M leaves 1.0M" in out, out
        assert run_json(ctx, d, "inspect", "org/tiny")["fits"] is False


def format_bytes(n):
        """As the client writes sizes (client/format.c)."""
        if n < 1024:
                return f"{n}B"
        factor = 1024
        for i, suffix in enumerate("KMGTPE"):
                if i + 1 < 6 and n // factor >= 1024:
                        factor *= 1024
                        continue
                return f"{n // factor}.{(n % factor) * 10 // factor}{suffix}"


def pull_helpers_for(endpoint):
        """mpool-pull processes of this test's hub, whoever their parent."""
        found = []
        for pid in os.listdir("/proc"):
                if not pid.isdigit():
                        continue
                try:
                        with open(f"/proc/{pid}/comm") as f:
                                comm = f.read().strip()
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                                cmdline = f.read().decode(errors="replace")
                except OSError:
                        continue
                if comm == "mpool-pull" and f"--endpoint={endpoint}" in cmdline:
                        found.append(int(pid))
        return found


def test_done_when_inspect_pull_interrupt_pull_load_with_the_client(ctx):
        """The issue's Done-when, as a user would go through it with the
        client: inspect, pull while the network breaks and the daemon is
        killed, pull again, load; and a pull that cannot end well ends with a
        clear error and a clean store."""
        from tests_client import client_argv, client_env, run, run_json
        from tests_pull import MiB, read
        hub = FakeHub(ctx)
        source = make_repo(ctx, hub, size="4M")
        d = hub_daemon(ctx, hub)

        info = run_json(ctx, d, "inspect", "org/tiny")
        assert info["fits"] is True, info
        assert "Memory:" in run(ctx, d, "inspect", "org/tiny").stdout
        hub.clear_log()

        # The network breaks once mid-file (the helper resumes where it
        # broke), then stalls: the daemon is killed meanwhile.
        first_cut = 1 * MiB + 123
        second_cut = 1 * MiB
        hub.control(drop=[{"file": "model.safetensors", "after": first_cut, "times": 1}],
                    stall=[{"file": "model.safetensors", "after": second_cut, "times": 1}])
        p = ctx.spawn(client_argv(ctx, d, "pull", "org/tiny"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True, env=client_env())
        part = os.path.join(ctx.store, STAGING, "org--tiny", "model.safetensors.part")
        wait_until(lambda: os.path.exists(part) and os.path.getsize(part) == first_cut + second_cut,
                   "the .part to reach the stall after a resume")
        ranges = [r["range"] for r in weights_requests(hub)]
        assert ranges == [None, f"bytes={first_cut}-"], ranges
        d.kill()
        ctx.daemons.remove(d)
        out, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 7 and "mpoold stopped while pulling org/tiny" in err, (p.returncode, out, err)
        # The helper went with the daemon, and no model is half there.
        wait_until(lambda: not pull_helpers_for(hub.endpoint), "the helper to die with the daemon")
        assert not os.path.exists(os.path.join(ctx.store, "org")), store_files(ctx)

        # Pull again: it resumes from what is staged, verifies, and the
        # model loads taking what inspect said.
        hub.control()
        hub.clear_log()
        d = hub_daemon(ctx, hub)
        proc = run(ctx, d, "pull", "org/tiny")
        assert "Pulled org/tiny" in proc.stdout, proc.stdout
        ranges = [r["range"] for r in weights_requests(hub)]
        assert ranges == [f"bytes={first_cut + second_cut}-"], ranges
        model = os.path.join(ctx.store, "org", "tiny")
        assert read(os.path.join(model, "model.safetensors")) == read(os.path.join(source, "model.safetensors"))
        run(ctx, d, "load", "org/tiny")
        (status,) = run_json(ctx, d, "status", "org/tiny")["models"]
        assert status["state"] == "loaded" and status["memory_bytes"] == info["memory_bytes"], (status, info)

        # A pull that cannot succeed: a clear error and a clean store.
        make_repo(ctx, hub, name="org/bad", size="1M", extras=False)
        hub.control(corrupt=["model.safetensors"])
        info = run_json(ctx, d, "inspect", "org/bad")
        assert info["memory_bytes"] > 0, info
        proc = run(ctx, d, "pull", "org/bad", expect=11)
        assert "hash-mismatch" in proc.stderr and "org/bad" in proc.stderr, proc.stderr
        assert not os.path.exists(os.path.join(ctx.store, "org", "bad")), store_files(ctx)
        assert d.model("org/bad") is None
        run(ctx, d, "load", "org/bad", expect=3)
