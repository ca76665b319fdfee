# SPDX-License-Identifier: MIT
"""Embed through the real daemon: lazy load and keep-alive, the workers
growing under parallel load and cooling down one at a time while the model
stays loaded, the queue's bound, unloads with requests in flight, callers
that leave, and input refused with a named error. Vectors are checked
against the torch reference of tests/fixtures/embed (embed_fixtures.py)."""

import os
import threading

import dbus

import embed_fixtures
from harness import DEADLINE, PyClient, expect_dbus_error, run_in_threads, wait_until

MODEL = "f32-mean-normalize"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"


def embed(client, name, texts, timeout=120, **options):
        reply = client.bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "Embed",
                                         "sasa{sv}", (name, dbus.Array(texts, signature="s"),
                                                     embed_fixtures.dbus_options(options)), timeout=timeout)
        return [[float(x) for x in row] for row in reply]


def default_case():
        return embed_fixtures.case(embed_fixtures.load(), f"{MODEL}/default")


class Caller:
        """One Embed in a thread of its own, on a connection of its own."""

        def __init__(self, address, texts, **options):
                self.client = PyClient(address)
                self.result = None
                self.error = None
                self.thread = threading.Thread(target=self._run, args=(texts, options), daemon=True)
                self.thread.start()

        def _run(self, texts, options):
                try:
                        self.result = embed(self.client, MODEL, texts, **options)
                except dbus.exceptions.DBusException as e:
                        self.error = e.get_dbus_name()

        def wait(self):
                self.thread.join(DEADLINE)
                assert not self.thread.is_alive(), "Embed did not return"
                return self.result, self.error


def counts(d):
        m = d.model(MODEL)
        return m["workers"], m["active_requests"], m["queued_requests"]


def test_embed_lazy_load_counts_and_keep_alive(ctx):
        embed_fixtures.install_model(ctx.store, MODEL)
        d = ctx.daemon()
        client = PyClient(d.address)
        c = default_case()

        m = d.model(MODEL)
        assert m["state"] == "available" and m["kind"] == "embedding", m
        vectors = embed(client, MODEL, c["texts"])
        embed_fixtures.check_vectors(c, vectors)
        ctx.monitor.wait_signal("ModelLoaded", MODEL)
        assert ctx.monitor.signals("LoadProgress", MODEL), "the lazy load showed no progress"

        m = d.model(MODEL)
        assert m["state"] == "loaded" and m["precision"] == "f32", m
        assert m["tokens_total"] > 0 and m["workers"] == 1, m
        first_expiry, tokens = m["expires_at_usec"], m["tokens_total"]

        # Use renews the keep-alive and counts; Status does neither.
        embed(client, MODEL, c["texts"][:1])
        m = d.model(MODEL)
        assert m["expires_at_usec"] > first_expiry and m["tokens_total"] > tokens, m
        assert d.model(MODEL)["expires_at_usec"] == m["expires_at_usec"]
        client.close()


def test_embed_workers_grow_then_cool_down_one_at_a_time(ctx):
        embed_fixtures.install_model(ctx.store, MODEL)
        d = ctx.daemon(gates=True, start=False, IdleTimeoutSec="300",
                       workers={"MaxWorkers": 3, "MaxQueuedRequests": 8, "CooldownSec": 1})
        d.env["MPOOL_LOG_LEVEL"] = "debug"
        d.start()
        client = PyClient(d.address)
        c = default_case()
        client.load(MODEL)
        loaded_memory = d.model(MODEL)["memory_bytes"]

        gate = ctx.compute_gate(MODEL)
        callers = [Caller(d.address, c["texts"]) for _ in range(5)]
        # Three workers run three requests; two wait for them.
        wait_until(lambda: counts(d) == (3, 3, 2), "three workers busy and two requests queued", timeout=DEADLINE)
        # Each worker's scratch is the model's memory.
        assert d.model(MODEL)["memory_bytes"] > loaded_memory

        gate.open_wide(3)
        for caller in callers:
                vectors, error = caller.wait()
                assert error is None, error
                embed_fixtures.check_vectors(c, vectors)
                caller.client.close()

        # Cooldown: 3 → 2 → 1 → 0, one at a time, the model still loaded.
        wait_until(lambda: counts(d)[0] == 0, "the workers to cool down", timeout=DEADLINE)
        log = d.log()
        steps = [log.find(f"cooled down to {n} worker(s)") for n in (2, 1, 0)]
        assert all(s >= 0 for s in steps) and steps == sorted(steps), log
        m = d.model(MODEL)
        assert m["state"] == "loaded" and m["memory_bytes"] == loaded_memory, m

        # And a request starts one again.
        embed_fixtures.check_vectors(c, embed(client, MODEL, c["texts"]))
        assert counts(d)[0] == 1
        client.close()


def test_embed_queue_full_is_busy(ctx):
        embed_fixtures.install_model(ctx.store, MODEL)
        d = ctx.daemon(gates=True, workers={"MaxWorkers": 1, "MaxQueuedRequests": 1})
        client = PyClient(d.address)
        c = default_case()
        client.load(MODEL)

        gate = ctx.compute_gate(MODEL)
        running, queued = Caller(d.address, c["texts"]), None
        wait_until(lambda: counts(d) == (1, 1, 0), "one request running")
        queued = Caller(d.address, c["texts"])
        wait_until(lambda: counts(d) == (1, 1, 1), "one request queued")
        expect_dbus_error("org.mpool.Error.Busy", embed, client, MODEL, c["texts"])

        gate.open_wide(1)
        for caller in (running, queued):
                vectors, error = caller.wait()
                assert error is None, error
                embed_fixtures.check_vectors(c, vectors)
                caller.client.close()
        client.close()


def test_embed_unload_lets_running_finish_and_cancels_queued(ctx):
        embed_fixtures.install_model(ctx.store, MODEL)
        d = ctx.daemon(gates=True, workers={"MaxWorkers": 1})
        client = PyClient(d.address)
        c = default_case()
        client.load(MODEL)

        gate = ctx.compute_gate(MODEL)
        running = Caller(d.address, c["texts"])
        wait_until(lambda: counts(d) == (1, 1, 0), "one request running")
        queued = Caller(d.address, c["texts"])
        wait_until(lambda: counts(d) == (1, 1, 1), "one request queued")

        results = {}
        unloader = threading.Thread(target=lambda: results.update(r=PyClient(d.address).unload(MODEL)), daemon=True)
        unloader.start()
        _, error = queued.wait()
        assert error == "org.mpool.Error.Cancelled", error
        assert d.model(MODEL)["state"] == "unloading"

        gate.open_wide(1)
        vectors, error = running.wait()
        assert error is None, error
        embed_fixtures.check_vectors(c, vectors)
        unloader.join(DEADLINE)
        assert results.get("r") is True, results
        m = d.model(MODEL)
        assert m["state"] == "available" and m["memory_bytes"] == 0 and m["workers"] == 0, m
        client.close()


def test_embed_caller_that_leaves(ctx):
        embed_fixtures.install_model(ctx.store, MODEL)
        d = ctx.daemon(gates=True)
        client = PyClient(d.address)
        c = default_case()
        client.load(MODEL)

        gate = ctx.compute_gate(MODEL)
        leaving = Caller(d.address, c["texts"])
        wait_until(lambda: counts(d)[1] == 1, "the request running")
        leaving.client.close()
        gate.open_wide(1)
        wait_until(lambda: counts(d)[1] == 0, "the request of the caller that left to end")
        # Nothing lost: the daemon serves on, and the model unloads.
        embed_fixtures.check_vectors(c, embed(client, MODEL, c["texts"]))
        assert client.unload(MODEL) is True
        client.close()


def test_embed_refusals(ctx):
        embed_fixtures.install_model(ctx.store, MODEL)
        ctx.model("weights-only", size="1M")
        d = ctx.daemon()
        client = PyClient(d.address)
        c = default_case()

        expect_dbus_error(INVALID_ARGS, embed, client, MODEL, [])
        expect_dbus_error(INVALID_ARGS, embed, client, MODEL, ["x"] * 1025)
        expect_dbus_error(INVALID_ARGS, embed, client, MODEL, ["x" * (64 * 1024 + 1)])
        expect_dbus_error(INVALID_ARGS, embed, client, MODEL, ["x" * (60 * 1024)] * 70)
        expect_dbus_error(INVALID_ARGS, embed, client, "../x", ["x"])
        expect_dbus_error(INVALID_ARGS, embed, client, MODEL, ["x"], truncation_direction="up")
        expect_dbus_error(INVALID_ARGS, embed, client, MODEL, ["x"], dimensions=0)
        expect_dbus_error(INVALID_ARGS, embed, client, MODEL, ["x"], dimensions=100000)
        expect_dbus_error(INVALID_ARGS, embed, client, MODEL, ["x"], prompt_name="no-such-prompt")
        message = expect_dbus_error(INVALID_ARGS, embed, client, MODEL, ["short", "word " * 400], truncate=False)
        assert "1" in message, message
        reply = None
        try:
                reply = client.bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager",
                                                 "Embed", "sasa{sv}",
                                                 (MODEL, ["x"], {"colour": dbus.String("red", variant_level=1)}),
                                                 timeout=30)
        except dbus.exceptions.DBusException as e:
                assert e.get_dbus_name() == INVALID_ARGS and "colour" in e.get_dbus_message(), e
        assert reply is None
        expect_dbus_error("org.mpool.Error.ModelNotFound", embed, client, "nothing-here", ["x"])
        expect_dbus_error("org.mpool.Error.NotSupported", embed, client, "weights-only", ["x"])

        # The daemon serves on, and each of the calls above left nothing.
        embed_fixtures.check_vectors(c, embed(client, MODEL, c["texts"]))
        m = d.model(MODEL)
        assert m["active_requests"] == 0 and m["queued_requests"] == 0, m
        client.close()


def test_embed_from_several_callers_at_once(ctx):
        embed_fixtures.install_model(ctx.store, MODEL)
        d = ctx.daemon(workers={"MaxWorkers": 2})
        c = default_case()
        results = run_in_threads([lambda: embed(PyClient(d.address), MODEL, c["texts"]) for _ in range(8)])
        for status, value in results:
                assert status == "ok", value
                embed_fixtures.check_vectors(c, value)
        m = d.model(MODEL)
        assert m["state"] == "loaded" and 1 <= m["workers"] <= 2, m


def test_embed_weights_truncated_while_computing(ctx):
        """A weights file that shrinks under a model computing in f32 from its
        mapping: the call fails InvalidModel, the model is unloaded, and the
        daemon serves on (it died of SIGBUS before)."""
        directory = embed_fixtures.install_model(ctx.store, MODEL)
        d = ctx.daemon(gates=True)
        client = PyClient(d.address)
        c = default_case()
        client.load(MODEL, precision="f32")

        gate = ctx.compute_gate(MODEL)
        caller = Caller(d.address, c["texts"])
        wait_until(lambda: counts(d)[1] == 1, "the request running")
        os.truncate(os.path.join(directory, "model.safetensors"), 1000)
        gate.open_wide(1)
        _, error = caller.wait()
        assert error == "org.mpool.Error.InvalidModel", error
        unloaded = ctx.monitor.wait_signal("ModelUnloaded", MODEL)
        assert unloaded.args[1] == "files-changed", unloaded
        assert d.proc.poll() is None, "mpoold died"
        # The file is invalid now: loading it again says so; the daemon lives.
        expect_dbus_error("org.mpool.Error.InvalidModel", embed, client, MODEL, c["texts"])
        assert d.model(MODEL)["state"] != "loaded"
        client.close()
        caller.client.close()
