# SPDX-License-Identifier: MIT
"""Probing: what reading a model's headers costs the daemon. Memory stays
bounded for the largest header allowed and goes back once the probe is done;
a long probe stops when its load is cancelled; messages about a file never
quote it."""

import json
import os
import threading

import dbus

from harness import (ERROR_CANCELLED, ERROR_INVALID_MODEL, KiB, MiB, PyClient, expect_dbus_error,
                     safetensors_header, wait_until, write_config_json, write_safetensors_raw)

# The reference reader's limit on a header, and the daemon's.
HEADER_MAX = 100_000_000
# What probing and unloading may leave behind in the daemon: allocator
# bookkeeping, a thread stack kept for reuse, pages of the bus connection.
RSS_SLACK = 4 * MiB


def proc_status(pid, key):
        with open(f"/proc/{pid}/status") as f:
                for line in f:
                        if line.startswith(key + ":"):
                                return int(line.split()[1]) * KiB
        raise AssertionError(f"no {key} for pid {pid}")


def write_huge_header(path):
        """A valid one-tensor file whose header is HEADER_MAX bytes, nearly
        all of them one array of 50 million zeros under a member the reader
        ignores."""
        head = b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"ignored":['
        tail = b"0]}}"
        count = (HEADER_MAX - len(head) - len(tail)) // 2
        header = head + b"0," * count + tail
        header += b" " * (HEADER_MAX - len(header))
        write_safetensors_raw(path, header, b"\x01")


def assert_rss_back(d, before, after_what):
        """The daemon's RSS is back within RSS_SLACK of before."""
        after = d.rss()
        assert after - before <= RSS_SLACK, \
                f"VmRSS {after // KiB} KiB after {after_what}, {(after - before) // KiB} KiB above the " \
                f"{before // KiB} KiB before"


def assert_failures_do_not_quote(ctx, d, names, secret, must_name=None):
        """Loading each name fails as InvalidModel, and neither the reply,
        LoadFailed nor Status quotes secret (and each names must_name)."""
        failures = []
        for name in names:
                message = expect_dbus_error(ERROR_INVALID_MODEL, d.py.load, name)
                failed = ctx.monitor.wait_signal("LoadFailed", name)
                shown = {"the error reply": message, "LoadFailed": failed.args[2],
                         "Status": d.model(name)["error"]}
                for where, text in shown.items():
                        if not text:
                                failures.append(f"{name}: {where} has no message")
                        elif must_name and must_name not in text:
                                failures.append(f"{name}: {where} does not name {must_name}: {text!r}")
                        elif secret in text or "s3cr3t" in text:
                                failures.append(f"{name}: {where} quotes the file: {text!r}")
        assert not failures, "\n".join(failures)


def cancel_probe(d, name):
        """Loads name in a thread, cancels it with Unload while it is being
        probed, and checks that the Load ended Cancelled and the model is
        available again once Unload replied (after the probe let go)."""
        outcome = {}

        def load():
                client = PyClient(d.address)
                try:
                        outcome["message"] = expect_dbus_error(ERROR_CANCELLED, client.load, name)
                except Exception as e:  # noqa: BLE001 - reported below
                        outcome["error"] = e
                finally:
                        client.close()

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        d.wait_model(name, lambda m: m["state"] == "loading", "loading")

        d.unload(name)
        loader.join(60)
        assert not loader.is_alive(), "Load did not return after Unload"
        assert "error" not in outcome, outcome["error"]
        m = d.model(name)
        assert m is not None and m["state"] == "available", m
        return outcome


def test_probe_of_many_tensors_gives_memory_back(ctx):
        ctx.model("warm", size="1M")
        ctx.model("many", size="1M", tensors=100000)
        d = ctx.daemon()
        # A first load and unload, so that what any load sets up once
        # (a loader thread's arena, bus buffers) is in the baseline.
        d.load("warm")
        assert d.unload("warm") is True
        before = d.rss()

        d.load("many")
        assert d.model("many")["state"] == "loaded"
        assert d.unload("many") is True
        assert_rss_back(d, before, "probing and unloading 100,000 tensors")


def test_probe_of_largest_header_is_bounded(ctx):
        directory = os.path.join(ctx.store, "huge")
        write_huge_header(os.path.join(directory, "model.safetensors"))
        write_config_json(directory)
        ctx.model("warm", size="1M")
        d = ctx.daemon()
        d.load("warm")
        assert d.unload("warm") is True
        before = d.rss()

        d.load("huge")
        peak = proc_status(d.pid, "VmHWM")
        m = d.model("huge")
        assert m["state"] == "loaded", m
        # The header has to be read; nothing that grows with its 50 million
        # values may come on top of it.
        assert peak - before <= HEADER_MAX + 64 * MiB, \
                f"VmHWM rose by {(peak - before) // MiB} MiB while probing a {HEADER_MAX // MiB} MiB header"

        assert d.unload("huge") is True
        assert_rss_back(d, before, f"probing and unloading a {HEADER_MAX // MiB} MiB header")


def test_long_probe_is_cancelled(ctx):
        """A model of many shards, each with a header as large as allowed
        (hard links to one file): probing it all would take far longer than
        any call waits, so Unload can only come back if the probe stops."""
        n_shards = 1000
        directory = os.path.join(ctx.store, "slow")
        first = os.path.join(directory, f"model-00001-of-{n_shards:05d}.safetensors")
        write_huge_header(first)
        weight_map = {"t1": os.path.basename(first)}
        for i in range(2, n_shards + 1):
                name = f"model-{i:05d}-of-{n_shards:05d}.safetensors"
                os.link(first, os.path.join(directory, name))
                weight_map[f"t{i}"] = name
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": weight_map}, f)
        write_config_json(directory)
        ctx.model("warm", size="1M")
        d = ctx.daemon()
        d.load("warm")
        assert d.unload("warm") is True
        before = d.rss()

        cancel_probe(d, "slow")

        assert_rss_back(d, before, "a cancelled probe")


SECRET = "s3cr3t-Planted"


def test_invalid_model_messages_do_not_quote_the_file(ctx):
        """Status and LoadFailed are for every local user; the model's files
        may be for their owner only."""
        cases = {}

        def weights(name):
                directory = os.path.join(ctx.store, name)
                write_config_json(directory)
                cases[name] = directory
                return os.path.join(directory, "model.safetensors")

        # A tensor whose size does not match its shape.
        header = json.dumps({SECRET: {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
        write_safetensors_raw(weights("named"), header, b"\0" * 8)
        # A dtype nobody knows.
        header = json.dumps({"w": {"dtype": SECRET, "shape": [4], "data_offsets": [0, 8]}}).encode()
        write_safetensors_raw(weights("dtype"), header, b"\0" * 8)
        # Metadata that is not a string map.
        header, length = safetensors_header([("w", "U8", [1], 1)], {SECRET: {"nested": SECRET}})
        write_safetensors_raw(weights("metadata"), header, b"\0" * length)
        # Broken JSON.
        write_safetensors_raw(weights("syntax"), f'{{"w": {SECRET}}}'.encode())

        d = ctx.daemon()
        assert_failures_do_not_quote(ctx, d, cases, SECRET)
