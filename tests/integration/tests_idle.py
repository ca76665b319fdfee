# SPDX-License-Identifier: MIT
"""Idle unloading: keep_alive_sec, IdleTimeoutSec, the global policy.

These wait for real time to pass (a keep-alive of 1 or 2 s), always by waiting
for the ModelUnloaded signal with a generous deadline; they then check only
the ordering: the unload came no earlier than the keep-alive after the last
use."""

import time

from harness import now_usec

# The monitor stamps a signal when it receives it, so a signal's timestamp is
# never earlier than its emission; the daemon's own realtime values are
# derived from its monotonic clock. This covers the rounding in between.
SLACK_USEC = 100_000


def load_and_last_use(d, name, **options):
        """Loads; returns the earliest the model's idle countdown can have
        started: its last_used_usec if Status still shows it loaded (on a
        slow machine it may already have gone), else when we sent Load."""
        sent = now_usec()
        d.load(name, **options)
        m = d.model(name)
        if m["state"] == "loaded":
                assert m["last_used_usec"] >= sent - SLACK_USEC, (sent, m)
                return m["last_used_usec"], m
        return sent, m


def test_idle_unload_with_keep_alive_option(ctx):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(IdleTimeoutSec="300")
        last_use, m = load_and_last_use(d, "alpha", keep_alive_sec=1)
        if m["state"] == "loaded":
                expected = m["last_used_usec"] + 1_000_000
                assert abs(m["expires_at_usec"] - expected) <= SLACK_USEC, \
                        f"expires_at_usec {m['expires_at_usec']}, expected about {expected}"

        unloaded = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert unloaded.args[1] == "idle", unloaded
        assert unloaded.ts >= last_use + 1_000_000 - SLACK_USEC, \
                f"unloaded {(unloaded.ts - last_use) / 1e6:.3f} s after the last use, keep-alive 1 s"
        m = d.model("alpha")
        assert m["state"] == "available" and m["memory_bytes"] == 0 and m["expires_at_usec"] == 0, m


def test_idle_timeout_from_config(ctx):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(IdleTimeoutSec="2")
        pool, _ = d.status()
        assert pool["idle_timeout_sec"] == 2, pool
        assert d.ctl.get_property("/org/mpool/Manager", "org.mpool.Manager", "IdleTimeoutSec") == 2
        last_use, _ = load_and_last_use(d, "alpha")
        unloaded = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert unloaded.args[1] == "idle", unloaded
        assert unloaded.ts >= last_use + 2_000_000 - SLACK_USEC, \
                f"unloaded {(unloaded.ts - last_use) / 1e6:.3f} s after the last use, IdleTimeoutSec=2"


def test_keep_alive_forever_never_expires(ctx):
        ctx.model("forever", size="4M")
        ctx.model("mortal", size="4M")
        d = ctx.daemon(IdleTimeoutSec="1")
        d.load("forever", keep_alive_sec=-1)
        d.load("mortal")
        m = d.model("forever")
        assert m["state"] == "loaded" and m["expires_at_usec"] == 0, m

        # "forever" was loaded first: with the pool's 1 s it would go first.
        unloaded = ctx.monitor.wait_signal("ModelUnloaded", "mortal")
        assert unloaded.args[1] == "idle", unloaded
        m = d.model("forever")
        assert m["state"] == "loaded" and m["expires_at_usec"] == 0, m
        ctx.sync()
        assert ctx.monitor.signals("ModelUnloaded", "forever") == []


def test_global_idle_policy(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("beta", size="4M")
        d = ctx.daemon(IdlePolicy="global", IdleTimeoutSec="2")
        pool, _ = d.status()
        assert pool["idle_policy"] == "global", pool

        alpha_use, _ = load_and_last_use(d, "alpha")
        # Not a synchronisation: a gap between the two uses, so that alpha's
        # per-model deadline and the pool's global one differ measurably.
        time.sleep(0.5)
        beta_use, _ = load_and_last_use(d, "beta")

        _, models = d.status()
        alpha, beta = models["alpha"], models["beta"]
        if alpha["state"] == "loaded" and beta["state"] == "loaded":
                assert alpha["expires_at_usec"] >= beta["last_used_usec"] + 2_000_000 - SLACK_USEC, \
                        f"beta's use did not renew alpha's deadline: alpha expires {alpha['expires_at_usec']}, " \
                        f"beta last used {beta['last_used_usec']}"
                assert abs(alpha["expires_at_usec"] - beta["expires_at_usec"]) <= SLACK_USEC, (alpha, beta)

        alpha_unloaded = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        beta_unloaded = ctx.monitor.wait_signal("ModelUnloaded", "beta")
        assert alpha_unloaded.args[1] == "idle" and beta_unloaded.args[1] == "idle"
        assert alpha_unloaded.ts >= beta_use + 2_000_000 - SLACK_USEC, \
                f"alpha unloaded {(alpha_unloaded.ts - alpha_use) / 1e6:.3f} s after its last use and " \
                f"{(alpha_unloaded.ts - beta_use) / 1e6:.3f} s after beta's: not the pool's last use + 2 s"
