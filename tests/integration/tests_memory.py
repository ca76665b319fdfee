# SPDX-License-Identifier: MIT
"""The memory limit: eviction in LRU order, InsufficientMemory, pinning,
UnloadAll."""

import re

from harness import ERROR_INSUFFICIENT_MEMORY, ERROR_MODEL_PINNED, MiB, expect_dbus_error, model_path, \
        python_child_client


def loaded_names(d):
        return sorted(name for name, m in d.status()[1].items() if m["state"] == "loaded")


def test_eviction_makes_room(ctx):
        ctx.model("alpha", size="16M")
        ctx.model("beta", size="16M")
        d = ctx.daemon(MemoryLimit="24M")
        d.load("alpha")
        d.load("beta")
        evicted = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert evicted.args[1] == "memory-limit", evicted
        ctx.monitor.wait_signal("ModelLoaded", "beta")
        order = [(s.member, s.args[0]) for s in ctx.monitor.signals()
                 if s.member in ("ModelUnloaded", "ModelLoaded")]
        assert order == [("ModelLoaded", "alpha"), ("ModelUnloaded", "alpha"), ("ModelLoaded", "beta")], \
                f"alpha must be evicted before beta is loaded: {order}"
        pool, models = d.status()
        assert loaded_names(d) == ["beta"], models
        assert models["alpha"]["memory_bytes"] == 0, models["alpha"]
        assert pool["memory_used"] <= pool["memory_limit"] == 24 * MiB, pool


def test_eviction_is_least_recently_used_first(ctx):
        for name in ("alpha", "beta", "gamma"):
                ctx.model(name, size="16M")
        d = ctx.daemon(MemoryLimit="40M")
        d.load("alpha")
        d.load("beta")
        assert loaded_names(d) == ["alpha", "beta"], "two 16 MiB models should fit in 40 MiB"
        d.load("alpha")  # a use: beta is now the least recently used
        d.load("gamma")
        evicted = ctx.monitor.wait_signal("ModelUnloaded", "beta")
        assert evicted.args[1] == "memory-limit", evicted
        assert loaded_names(d) == ["alpha", "gamma"]
        ctx.sync()
        assert [s.args[0] for s in ctx.monitor.signals("ModelUnloaded")] == ["beta"]


def test_insufficient_memory_when_model_alone_exceeds_limit(ctx):
        ctx.model("alpha", size="8M")
        ctx.model("huge", size="32M")
        d = ctx.daemon(MemoryLimit="24M")
        d.load("alpha")
        message = expect_dbus_error(ERROR_INSUFFICIENT_MEMORY, d.py.load, "huge")
        numbers = [int(n) for n in re.findall(r"\d+", message)]
        assert len(numbers) >= 2, f"the message gives no needed and available bytes: {message!r}"
        assert any(n >= 32 * MiB for n in numbers), f"no needed size ≥ 32 MiB in {message!r}"
        ctx.sync()
        assert ctx.monitor.signals("ModelUnloaded") == [], "something was unloaded for a model that cannot fit"
        assert loaded_names(d) == ["alpha"]
        m = d.model("huge")
        assert m is None or (m["state"] != "loaded" and m["memory_bytes"] == 0), m


def test_pinned_model_refuses_unload_without_force(ctx):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(IdleTimeoutSec="1")
        assert d.load("alpha", pin=True) == model_path("alpha")
        m = d.model("alpha")
        assert m["pinned"] is True and m["expires_at_usec"] == 0, m

        message = expect_dbus_error(ERROR_MODEL_PINNED, d.py.unload, "alpha")
        assert message, "ModelPinned without a message"
        message = expect_dbus_error(ERROR_MODEL_PINNED, d.py.unload, "alpha", force=False)
        assert d.model("alpha")["state"] == "loaded"

        assert d.py.unload("alpha", force=True) is True
        s = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert s.args[1] == "request", s
        assert d.model("alpha")["state"] == "available"


def test_pinned_model_is_not_evicted(ctx):
        ctx.model("alpha", size="16M")
        ctx.model("beta", size="16M")
        d = ctx.daemon(MemoryLimit="24M")
        d.load("alpha", pin=True)
        expect_dbus_error(ERROR_INSUFFICIENT_MEMORY, d.py.load, "beta")
        ctx.sync()
        assert ctx.monitor.signals("ModelUnloaded") == [], "the pinned model was unloaded"
        assert loaded_names(d) == ["alpha"]


def test_unload_all_skips_pinned_unless_forced(ctx):
        for name in ("alpha", "beta", "demo/gamma"):
                ctx.model(name, size="2M")
        d = ctx.daemon()
        d.load("alpha", pin=True)
        d.load("beta")
        d.load("demo/gamma")
        assert sorted(d.unload_all()) == ["beta", "demo/gamma"]
        assert loaded_names(d) == ["alpha"]
        assert d.py.unload_all() == []
        assert d.py.unload_all(force=True) == ["alpha"]
        pool, _ = d.status()
        assert pool["models_loaded"] == 0 and pool["memory_used"] == 0, pool
        ctx.sync()
        reasons = {s.args[0]: s.args[1] for s in ctx.monitor.signals("ModelUnloaded")}
        assert reasons == {"alpha": "request", "beta": "request", "demo/gamma": "request"}, reasons


def test_memory_pressure_unloads_idle_models_only(ctx):
        """MemoryAvailableMin=100% puts the host permanently "short": the
        periodic check must unload every idle unpinned model, least recently
        used first, and spare pinned and held ones."""
        for name in ("alpha", "beta", "pinned", "held"):
                ctx.model(name, size="4M")
        d = ctx.daemon(MemoryAvailableMin="100%")
        child = python_child_client(d.address, ctx)
        child.acquire("held")
        d.load("pinned", pin=True)
        d.load("alpha")
        d.load("beta")
        for name in ("alpha", "beta"):
                unloaded = ctx.monitor.wait_signal("ModelUnloaded", name)
                assert unloaded.args[1] == "memory-pressure", unloaded
        ctx.sync()
        gone = [s.args[0] for s in ctx.monitor.signals("ModelUnloaded")]
        assert gone.index("alpha") < gone.index("beta"), f"not least recently used first: {gone}"
        assert "pinned" not in gone and "held" not in gone, f"a pinned or held model was unloaded: {gone}"
        assert d.model("pinned")["state"] == "loaded" and d.model("held")["state"] == "loaded"
        child.exit()


def test_max_loaded_models_evicts_least_recently_used(ctx):
        for name in ("alpha", "beta", "gamma"):
                ctx.model(name, size="1M")
        d = ctx.daemon(MaxLoadedModels="2")
        d.load("alpha")
        d.load("beta")
        d.load("gamma")
        evicted = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert evicted.args[1] == "memory-limit", evicted
        assert loaded_names(d) == ["beta", "gamma"]
