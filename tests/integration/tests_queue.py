#!/usr/bin/python3
"""The load queue under pressure: callers that flood it, callers that leave
while their loads wait, and what the daemon keeps afterwards."""

import threading

import dbus

from harness import (DEADLINE, ERROR_CANCELLED, PyClient, run_in_threads, wait_until)

ERROR_BUSY = "org.mpool.Error.Busy"
ERROR_LIMITS = "org.mpool.Error.LimitsExceeded"
ERROR_NOT_FOUND = "org.mpool.Error.ModelNotFound"


def load_starts(ctx, name):
        return [s for s in ctx.monitor.signals("LoadProgress", name) if s.args[1] == 0]


def outcome_of(fn):
        try:
                return ("ok", fn())
        except dbus.exceptions.DBusException as e:
                return ("error", e.get_dbus_name())


def test_flood_of_loads_gets_an_answer_each(ctx):
        """With the only worker held and its queue full, a flood of 150
        callers at once is answered at once: Busy for names not loading,
        a place among the waiters for names already queued. Refused names
        leave nothing behind, and every queued load completes when the
        worker is free. (One connection per call: dbus-python's blocking
        calls on a shared connection go one at a time.)"""
        ctx.model("held", size="1M")
        for i in range(8):
                ctx.model(f"m{i}", size="1M")
        gate = ctx.gate("held")
        d = ctx.daemon(MaxConcurrentLoads="1", MaxQueuedLoads="8", gates=True)

        def start(names):
                """Loads each name on a connection of its own, all at once;
                answers[i] is filled in as the i-th call returns."""
                clients = [PyClient(d.address) for _ in names]
                answers = [None] * len(names)

                def call(i):
                        answers[i] = outcome_of(lambda: clients[i].load(names[i]))
                        return answers[i]
                thread = threading.Thread(target=lambda: run_in_threads([lambda i=i: call(i)
                                                                         for i in range(len(names))]),
                                          daemon=True)
                thread.start()
                return clients, answers, thread

        first = start(["held"])
        ctx.monitor.wait(lambda sigs: load_starts(ctx, "held"), "the held load to start")
        queued = start([f"m{i}" for i in range(8)])
        wait_until(lambda: all(d.model(f"m{i}")["state"] == "loading" for i in range(8)), "the queue to fill")

        flood_names = [f"m{i % 8}" for i in range(30)] + [f"missing-{i}" for i in range(120)]
        flood = start(flood_names)
        # Every refusal comes while the worker is still held.
        wait_until(lambda: all(a is not None for n, a in zip(flood_names, flood[1]) if n.startswith("missing-")),
                   "the refusals")
        assert d.py.status()[0]["models_loaded"] == 0
        gate.release()
        for clients, answers, thread in (first, queued, flood):
                thread.join(DEADLINE * 4)
                assert not thread.is_alive(), "a call got no answer"
                for c in clients:
                        c.close()

        assert first[1] == [("ok", "/org/mpool/Manager/models/held")], first[1]
        assert all(a[0] == "ok" for a in queued[1]), queued[1]
        for name, value in zip(flood_names, flood[1]):
                if name.startswith("missing-"):
                        assert value == ("error", ERROR_BUSY), (name, value)
                else:
                        assert value[0] == "ok", (name, value)

        pool, models = d.status()
        assert not any(n.startswith("missing-") for n in models), sorted(models)
        assert pool["models_loaded"] == 9, pool


def test_caller_leaving_while_its_load_waits(ctx):
        """A caller that leaves while its load waits in the queue gets no
        hold and keeps nothing: the load goes on for the others, and a new
        caller can take its place in full."""
        ctx.model("held", size="1M")
        ctx.model("queued", size="1M")
        gate = ctx.gate("held")
        d = ctx.daemon(MaxConcurrentLoads="1", gates=True)
        holder = PyClient(d.address)
        results = {}
        t1 = threading.Thread(target=lambda: results.update(held=outcome_of(lambda: holder.load("held"))),
                              daemon=True)
        t1.start()
        ctx.monitor.wait(lambda sigs: load_starts(ctx, "held"), "the held load to start")

        # Acquire from a caller that then leaves: the queued Acquire must not
        # take a hold for a peer that is gone.
        leaver = PyClient(d.address)
        msg = dbus.lowlevel.MethodCallMessage("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager",
                                              "Acquire")
        msg.append(dbus.String("queued"), signature="s")
        leaver.bus.send_message(msg)
        leaver.bus.flush()
        wait_until(lambda: d.model("queued")["state"] == "loading", "queued to be queued")
        leaver.close()

        # Another caller waits for the same model and stays.
        stayer = PyClient(d.address)
        t2 = threading.Thread(target=lambda: results.update(queued=outcome_of(lambda: stayer.load("queued"))),
                              daemon=True)
        t2.start()
        gate.release()
        t1.join(DEADLINE)
        t2.join(DEADLINE)
        assert results["held"][0] == "ok" and results["queued"][0] == "ok", results
        m = d.model("queued")
        assert m["state"] == "loaded" and m["holds"] == 0, m
        d.unload("queued")
        assert d.model("queued")["state"] == "available"
        holder.close()
        stayer.close()


def test_unload_all_cancels_queued_loads(ctx):
        ctx.model("held", size="1M")
        ctx.model("queued", size="1M")
        ctx.gate("held")
        d = ctx.daemon(MaxConcurrentLoads="1", gates=True)
        clients = [PyClient(d.address) for _ in range(2)]
        results = {}
        threads = [threading.Thread(target=lambda c=c, n=n: results.update({n: outcome_of(lambda: c.load(n))}),
                                    daemon=True) for c, n in zip(clients, ("held", "queued"))]
        threads[0].start()
        ctx.monitor.wait(lambda sigs: load_starts(ctx, "held"), "the held load to start")
        threads[1].start()
        wait_until(lambda: d.model("queued")["state"] == "loading", "queued to be queued")

        assert d.unload_all() == []
        for t in threads:
                t.join(DEADLINE)
        assert results == {"held": ("error", ERROR_CANCELLED), "queued": ("error", ERROR_CANCELLED)}, results
        pool, models = d.status()
        assert pool["memory_used"] == 0 and all(m["state"] == "available" for m in models.values()), models
        for c in clients:
                c.close()
