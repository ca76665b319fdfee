# SPDX-License-Identifier: MIT
"""Holds (Acquire/Release): per bus peer, dropped when the peer goes away."""

from harness import now_usec, python_child_client


def check_held(d, name, holds):
        m = d.model(name)
        assert m["state"] == "loaded", m
        assert m["holds"] == holds, m
        assert m["expires_at_usec"] == 0, f"{name} is held but an idle unload is pending: {m}"
        return m


def hold_dropped_when_peer_goes(ctx, how):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(IdleTimeoutSec="1")
        child = python_child_client(d.address, ctx)
        child.acquire("alpha")
        check_held(d, "alpha", 1)
        assert d.ctl.get_property("/org/mpool/Manager/models/alpha", "org.mpool.Model", "Holds") == 1

        gone = now_usec()
        if how == "kill":
                child.kill()
        else:
                child.exit()
        d.wait_model("alpha", lambda m: m["holds"] == 0, "holds back to 0 after the holder went away")

        unloaded = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert unloaded.args[1] == "idle", unloaded
        assert unloaded.ts >= gone, "alpha was unloaded while it was still held"


def test_hold_dropped_when_holder_is_killed(ctx):
        hold_dropped_when_peer_goes(ctx, "kill")


def test_hold_dropped_when_holder_exits(ctx):
        hold_dropped_when_peer_goes(ctx, "exit")


def test_hold_prevents_idle_unload(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("beta", size="4M")
        d = ctx.daemon(IdleTimeoutSec="1")
        child = python_child_client(d.address, ctx)
        child.acquire("alpha")
        d.load("beta")
        # beta, used after alpha, goes idle after 1 s: alpha's own 1 s has
        # passed by then.
        unloaded = ctx.monitor.wait_signal("ModelUnloaded", "beta")
        assert unloaded.args[1] == "idle", unloaded
        check_held(d, "alpha", 1)
        ctx.sync()
        assert ctx.monitor.signals("ModelUnloaded", "alpha") == [], "alpha was unloaded while held"

        released = now_usec()
        child.release("alpha")
        m = d.model("alpha")
        assert m["holds"] == 0, m
        unloaded = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert unloaded.args[1] == "idle", unloaded
        assert unloaded.ts >= released, "alpha was unloaded before its hold was released"
        child.exit()


def test_holds_are_counted_per_peer(ctx):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(IdleTimeoutSec="300")
        first = python_child_client(d.address, ctx)
        second = python_child_client(d.address, ctx)
        first.acquire("alpha")
        second.acquire("alpha")
        second.acquire("alpha")
        check_held(d, "alpha", 3)
        first.release("alpha")
        check_held(d, "alpha", 2)
        # The second peer's two holds go with it.
        second.kill()
        d.wait_model("alpha", lambda m: m["holds"] == 0, "holds 0 after the second holder was killed")
        m = d.model("alpha")
        assert m["state"] == "loaded" and m["expires_at_usec"] > 0, m
        first.exit()
