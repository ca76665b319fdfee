# SPDX-License-Identifier: MIT
"""Loading: replies, signals, Status, memory actually held, joined loads."""

import os
import time

from harness import (ERROR_INVALID_MODEL, MODEL_STATUS_DEFAULTS, MiB, PyClient, expect_dbus_error, model_files,
                     model_path, now_usec, read_rss_bytes, run_in_threads, safetensors_data_bytes, directory_bytes,
                     write_config_json)


def data_bytes(directory):
        return sum(safetensors_data_bytes(f) for f in model_files(directory))


def check_memory_bytes(m, directory, what=""):
        data = data_bytes(directory)
        assert m["memory_bytes"] >= data, \
                f"{what}memory_bytes {m['memory_bytes']} < the model's data {data}"
        bound = m["size_bytes"] * 1.10 + MiB
        assert m["memory_bytes"] <= bound, \
                f"{what}memory_bytes {m['memory_bytes']} > size_bytes {m['size_bytes']} + 10% + 1 MiB"


def check_size_bytes(m, directory):
        weights = sum(os.stat(f).st_size for f in model_files(directory))
        everything = directory_bytes(directory)
        assert weights <= m["size_bytes"] <= everything, \
                f"size_bytes {m['size_bytes']} not within [{weights} (weights), {everything} (all files)]"


def test_load_emits_progress_and_model_loaded(ctx):
        directory = ctx.model("alpha", size="64M")
        d = ctx.daemon()
        sent = time.monotonic()
        path = d.load("alpha")
        replied = time.monotonic()
        assert path == model_path("alpha") == "/org/mpool/Manager/models/alpha", path

        ctx.monitor.wait_signal("ModelLoaded", "alpha")
        ctx.sync()
        sigs = [s for s in ctx.monitor.signals(name="alpha") if s.member in ("LoadProgress", "ModelLoaded")]
        assert [s.member for s in sigs].count("ModelLoaded") == 1, sigs
        assert sigs[-1].member == "ModelLoaded", f"LoadProgress after ModelLoaded: {sigs}"
        loaded = sigs[-1]
        progress = sigs[:-1]
        assert progress, "no LoadProgress signal before ModelLoaded"
        done = [p.args[1] for p in progress]
        totals = {p.args[2] for p in progress}
        assert done[0] == 0, f"first LoadProgress at {done[0]}, not 0"
        assert len(totals) == 1, f"bytes_total changed during the load: {sorted(totals)}"
        total = totals.pop()
        assert done[-1] == total, f"last LoadProgress at {done[-1]}, not bytes_total {total}"
        assert done == sorted(done), f"LoadProgress decreased: {done}"
        assert total >= data_bytes(directory), f"bytes_total {total} < the model's data {data_bytes(directory)}"
        # The load took at most as long as our call did.
        duration = replied - sent
        assert len(progress) <= 20 * duration + 2, \
                f"{len(progress)} LoadProgress signals within {duration:.2f} s: more than 20 per second"

        m = d.model("alpha")
        assert m["state"] == "loaded", m
        assert loaded.args[1] == m["memory_bytes"], \
                f"ModelLoaded says {loaded.args[1]} bytes, Status {m['memory_bytes']}"
        check_memory_bytes(m, directory)
        assert ctx.monitor.signals("LoadFailed") == []


def test_status_after_load(ctx):
        alpha = ctx.model("alpha", size="8M")
        beta = ctx.model("demo/beta", size="4M", tensors=3)
        ctx.model("gamma", size="2M")
        d = ctx.daemon(MemoryLimit="512M", IdleTimeoutSec="300")
        t0 = now_usec()
        assert d.load("alpha") == model_path("alpha")
        assert d.load("demo/beta") == "/org/mpool/Manager/models/demo_2fbeta"
        t1 = now_usec()

        pool, models = d.status()
        assert isinstance(pool["version"], str) and pool["version"], pool
        assert pool["memory_limit"] == 512 * MiB, pool
        assert pool["idle_timeout_sec"] == 300, pool
        assert pool["idle_policy"] == "per-model", pool
        assert pool["models_loaded"] == 2, pool
        with open("/proc/meminfo") as f:
                mem_total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
        assert 0 < pool["memory_total"] <= mem_total, pool
        assert 0 < pool["memory_available"], pool
        assert 0 < pool["uptime_usec"] < 3600 * 1_000_000, pool
        # OpenBLAS is installed here: its kernel set is named, as the log says.
        assert pool["blas_core"] and f"OpenBLAS: {pool['blas_core']} kernels" in d.log(), (pool, d.log())

        loaded = [m for m in models.values() if m["state"] == "loaded"]
        assert sorted(m["name"] for m in loaded) == ["alpha", "demo/beta"], models
        assert pool["memory_used"] == sum(m["memory_bytes"] for m in models.values()), (pool, models)

        for name, directory in (("alpha", alpha), ("demo/beta", beta)):
                m = models[name]
                check_memory_bytes(m, directory, f"{name}: ")
                check_size_bytes(m, directory)
                assert m["pinned"] is False and m["holds"] == 0, m
                assert t0 - 2_000_000 <= m["loaded_at_usec"] <= t1 + 2_000_000, (t0, t1, m)
                assert m["last_used_usec"] >= m["loaded_at_usec"], m
                expected_expiry = m["last_used_usec"] + 300 * 1_000_000
                assert abs(m["expires_at_usec"] - expected_expiry) <= 1_000_000, \
                        f"{name}: expires_at_usec {m['expires_at_usec']}, expected about {expected_expiry}"
                assert m["requests_total"] >= 1, m
                assert m["error"] == "", m
                expected = 100.0 * m["memory_bytes"] / pool["memory_total"]
                assert abs(m["memory_percent"] - expected) <= 0.01 + expected * 0.01, (m, expected)
                expected = 100.0 * m["memory_bytes"] / pool["memory_limit"]
                assert abs(m["memory_limit_percent"] - expected) <= 0.01 + expected * 0.01, (m, expected)

        gamma = models.get("gamma")
        assert gamma is not None, f"gamma (in the store, not loaded) missing from Status: {sorted(models)}"
        assert gamma["state"] == "available" and gamma["memory_bytes"] == 0, gamma
        assert gamma["expires_at_usec"] == 0 and gamma["loaded_at_usec"] == 0, gamma


def test_rss_follows_memory_bytes(ctx):
        ctx.model("alpha", size="64M")
        d = ctx.daemon()
        before = d.rss()
        d.load("alpha")
        m = d.model("alpha")
        after = read_rss_bytes(d.pid)
        rise = after - before
        tolerance = 0.05 * m["memory_bytes"] + 4 * MiB
        assert abs(rise - m["memory_bytes"]) <= tolerance, \
                f"VmRSS rose by {rise} bytes ({before} -> {after}), memory_bytes is {m['memory_bytes']}"

        assert d.unload("alpha") is True
        unloaded = d.rss()
        assert unloaded - before <= 4 * MiB, \
                f"VmRSS {unloaded} after Unload, {unloaded - before} bytes above {before} before the load"


def test_concurrent_loads_are_joined(ctx):
        ctx.model("big", size="128M")
        d = ctx.daemon()
        address = d.address

        def load():
                client = PyClient(address)
                try:
                        return client.load("big")
                finally:
                        client.close()

        results = run_in_threads([load] * 5)
        errors = [r for kind, r in results if kind != "ok"]
        assert not errors, f"concurrent Load failed: {errors}"
        paths = {r for _, r in results}
        assert paths == {model_path("big")}, paths

        ctx.monitor.wait_signal("ModelLoaded", "big")
        ctx.sync()
        assert len(ctx.monitor.signals("ModelLoaded", "big")) == 1, \
                f"expected one ModelLoaded, saw {ctx.monitor.signals('ModelLoaded', 'big')}"
        starts = [s for s in ctx.monitor.signals("LoadProgress", "big") if s.args[1] == 0]
        assert len(starts) == 1, f"the load started {len(starts)} times"
        pool, models = d.status()
        assert pool["models_loaded"] == 1 and models["big"]["state"] == "loaded", (pool, models)


def test_load_of_loaded_model_is_immediate_and_counts_as_use(ctx):
        ctx.model("alpha", size="16M")
        d = ctx.daemon()
        d.load("alpha")
        first = d.model("alpha")

        started = time.monotonic()
        assert d.py.load("alpha") == model_path("alpha")
        elapsed = time.monotonic() - started
        second = d.model("alpha")
        assert elapsed < 5, f"Load of a loaded model took {elapsed:.1f} s"
        assert second["requests_total"] == first["requests_total"] + 1, (first, second)
        assert second["last_used_usec"] >= first["last_used_usec"], (first, second)
        assert second["expires_at_usec"] >= first["expires_at_usec"], (first, second)
        assert second["loaded_at_usec"] == first["loaded_at_usec"], (first, second)

        ctx.sync()
        assert len(ctx.monitor.signals("ModelLoaded", "alpha")) == 1, "the second Load loaded again"
        assert len([s for s in ctx.monitor.signals("LoadProgress", "alpha") if s.args[1] == 0]) == 1


POOL_STATUS_KEYS = {"version", "memory_total", "memory_available", "memory_limit", "memory_used", "models_loaded",
                    "idle_timeout_sec", "idle_policy", "uptime_usec", "blas_core"}


def raw_status(d):
        """Status as the wire has it, from both clients (busctl and
        python-dbus), without the harness's defaults."""
        for reader in (d.ctl.call, d.py.call):
                pool, models = reader("Status")
                yield pool, {m["name"]: m for m in models}


def test_status_leaves_out_defaults(ctx):
        """A model's keys other than name and state are on the wire only when
        they differ from their default; the pool's are all there."""
        ctx.model("alpha", size="4M")
        ctx.model("beta", size="4M")
        d = ctx.daemon()
        d.load("beta")
        for pool, models in raw_status(d):
                assert set(pool) == POOL_STATUS_KEYS, pool
                assert set(models) == {"alpha", "beta"}, models
                for name, m in models.items():
                        assert isinstance(m.get("name"), str) and isinstance(m.get("state"), str), m
                        for key, value in m.items():
                                if key in ("name", "state"):
                                        continue
                                # A key the harness does not know would reach tests without its default.
                                assert key in MODEL_STATUS_DEFAULTS, f"{name}: {key} unknown to the harness: {m}"
                                assert value != MODEL_STATUS_DEFAULTS[key], f"{name}: {key} sent at its default: {m}"
                alpha = models["alpha"]
                assert alpha["state"] == "available" and alpha["size_bytes"] > 0, alpha
                left_out = {"memory_bytes", "memory_percent", "memory_limit_percent", "pinned", "holds",
                            "loaded_at_usec", "requests_total", "error", "workers", "download_total"}
                assert not left_out & set(alpha), alpha
                assert models["beta"]["state"] == "loaded" and "pinned" not in models["beta"], models["beta"]

        # What tests read has every key.
        _, models = d.status()
        assert set(models["alpha"]) == {"name", "state"} | set(MODEL_STATUS_DEFAULTS), models["alpha"]
        assert models["alpha"]["error"] == "" and models["alpha"]["holds"] == 0, models["alpha"]
        assert models["alpha"]["pinned"] is False and models["alpha"]["memory_by_precision"] == {}, models["alpha"]


def test_status_shows_values_off_default(ctx):
        ctx.model("beta", size="4M")
        broken = os.path.join(ctx.store, "broken")
        write_config_json(broken)
        open(os.path.join(broken, "model.safetensors"), "wb").close()
        d = ctx.daemon()
        d.load("beta", pin=True)
        d.py.call("Acquire", "s", ("beta",))
        expect_dbus_error(ERROR_INVALID_MODEL, d.py.load, "broken")
        for _, models in raw_status(d):
                beta = models["beta"]
                assert beta["state"] == "loaded" and beta["pinned"] is True and beta["holds"] == 1, beta
                assert beta["memory_bytes"] >= 4 * MiB and beta["size_bytes"] > 0, beta
                assert beta["memory_percent"] > 0 and beta["memory_limit_percent"] > 0, beta
                assert beta["loaded_at_usec"] > 0 and beta["last_used_usec"] > 0, beta
                assert beta["requests_total"] >= 1 and beta["source"] == "store", beta
                m = models["broken"]
                assert m["state"] == "error" and m["error"].strip(), m
                assert "memory_bytes" not in m and "holds" not in m, m


def test_status_is_not_use(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("beta", size="4M")
        d = ctx.daemon()
        d.load("alpha")
        first = d.model("alpha")
        for _ in range(3):
                d.status()
                d.py.status()
        d.py.get_all(model_path("alpha"), "org.mpool.Model")
        pool, models = d.status()
        second = models["alpha"]
        for key in ("last_used_usec", "expires_at_usec", "requests_total", "loaded_at_usec"):
                assert second[key] == first[key], f"{key} changed by Status: {first[key]} -> {second[key]}"
        assert pool["models_loaded"] == 1, pool
        assert models["beta"]["state"] == "available" and models["beta"]["memory_bytes"] == 0, models["beta"]


def test_unload(ctx):
        ctx.model("alpha", size="8M")
        ctx.model("beta", size="1M")
        d = ctx.daemon()
        d.load("alpha")
        assert d.unload("alpha") is True
        s = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert s.args[1] == "request", s
        pool, models = d.status()
        assert models["alpha"]["state"] == "available", models["alpha"]
        assert models["alpha"]["memory_bytes"] == 0, models["alpha"]
        assert pool["memory_used"] == 0 and pool["models_loaded"] == 0, pool

        assert d.unload("alpha") is False
        assert d.py.unload("alpha") is False
        assert d.py.unload("beta") is False, "Unload of a model never loaded"
        ctx.sync()
        assert len(ctx.monitor.signals("ModelUnloaded")) == 1, ctx.monitor.signals("ModelUnloaded")

        # And it loads again.
        assert d.load("alpha") == model_path("alpha")
        assert d.model("alpha")["state"] == "loaded"
