# SPDX-License-Identifier: MIT
"""Errors: invalid model files, missing models, malformed names and options.
After each failure the daemon must still answer."""

import json
import os

import dbus

from harness import (ERROR_INVALID_ARGS, ERROR_INVALID_MODEL, ERROR_MODEL_NOT_FOUND, KiB, MiB, BusctlError,
                     expect_dbus_error, safetensors_header, write_config_json, write_safetensors_raw)


def write_invalid_models(store):
        """Model directories whose model.safetensors is broken in one way each."""
        cases = {}

        def weights(name):
                directory = os.path.join(store, name)
                write_config_json(directory)
                cases[name] = directory
                return os.path.join(directory, "model.safetensors")

        # The header promises 1 MiB of data, the file has half of it.
        header, length = safetensors_header([("w", "F32", [256 * KiB], MiB)])
        write_safetensors_raw(weights("truncated"), header, b"\0" * (length // 2))

        # The header is not JSON.
        broken = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]'
        broken += b" " * ((8 - len(broken) % 8) % 8)
        write_safetensors_raw(weights("bad-json"), broken, b"\0" * 16)

        # The shape says 4096 bytes, the offsets 2048.
        header = json.dumps({"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 2048]}}).encode()
        header += b" " * ((8 - len(header) % 8) % 8)
        write_safetensors_raw(weights("size-mismatch"), header, b"\0" * 2048)

        # The header length points far beyond the end of the file.
        header, length = safetensors_header([("w", "F32", [16], 64)])
        write_safetensors_raw(weights("header-beyond-eof"), header, b"\0" * length, declared_header_len=1 << 40)

        # Two tensors claim the same bytes.
        header = json.dumps({"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                             "b": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}).encode()
        header += b" " * ((8 - len(header) % 8) % 8)
        write_safetensors_raw(weights("overlapping"), header, b"\0" * 128)

        # An empty file.
        open(weights("empty"), "wb").close()
        return cases


def test_invalid_model_files(ctx):
        cases = write_invalid_models(ctx.store)
        d = ctx.daemon()
        failures = []
        for name in cases:
                try:
                        message = expect_dbus_error(ERROR_INVALID_MODEL, d.py.load, name)
                        assert message.strip(), "InvalidModel without a message"
                        failed = ctx.monitor.wait_signal("LoadFailed", name)
                        assert failed.args[1] == ERROR_INVALID_MODEL, failed
                        assert failed.args[2].strip(), f"LoadFailed without a message: {failed}"
                        # The other client sees the same failure.
                        try:
                                d.load(name)
                                raise AssertionError("busctl's Load succeeded")
                        except BusctlError as e:
                                assert e.message, "busctl got no error message"
                        pool, models = d.status()
                        m = models.get(name)
                        assert m is not None, f"{name} missing from Status"
                        assert m["state"] in ("error", "available"), m
                        assert m["memory_bytes"] == 0 and m["error"], m
                        assert pool["models_loaded"] == 0, pool
                except AssertionError as e:
                        failures.append(f"{name}: {e}")
        assert not failures, "\n".join(failures)


def test_missing_model(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        for name in ("nosuch", "org/nosuch", "alpha/nosuch", "x" * 96, "x" * 96 + "/" + "y" * 96):
                message = expect_dbus_error(ERROR_MODEL_NOT_FOUND, d.py.load, name)
                assert message, f"ModelNotFound for {name!r} without a message"
        expect_dbus_error(ERROR_MODEL_NOT_FOUND, d.py.call, "Acquire", "s", ("nosuch",))
        pool, models = d.status()
        assert pool["models_loaded"] == 0, pool
        assert "alpha" in models


BAD_NAMES = [
        "../etc",
        "a/b/c",
        ".hidden",
        "org/.hidden",
        "",
        "x" * 97,
        "org/" + "y" * 97,
        "a b",
        "a/",
        "/a",
        "a//b",
        "org/..",
        "..",
        "-dash",
        "a\nb",
        "caf\u00e9",
        "a..b",
        "org/a--b",
        "a-",
        "org/b.",
]


def test_malformed_names_are_invalid_args(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        failures = []
        calls = {
                "Load": lambda n: d.py.load(n),
                "Unload": lambda n: d.py.unload(n),
                "Acquire": lambda n: d.py.call("Acquire", "s", (n,)),
                "Release": lambda n: d.py.call("Release", "s", (n,)),
        }
        for name in BAD_NAMES:
                for method, call in calls.items():
                        try:
                                expect_dbus_error(ERROR_INVALID_ARGS, call, name)
                        except AssertionError as e:
                                failures.append(f"{method}({name!r}): {e}")
        d.status()
        assert not failures, "\n".join(failures)
        assert d.status()[0]["models_loaded"] == 0


def test_bad_options_are_invalid_args(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        cases = [
                ("Load", {"bogus": dbus.Int64(1)}, "bogus"),
                ("Load", {"keep_alive_sec": dbus.String("10")}, "keep_alive_sec"),
                ("Load", {"keep_alive_sec": dbus.Double(10.0)}, "keep_alive_sec"),
                ("Load", {"keep_alive_sec": dbus.UInt64(2**64 - 1)}, "keep_alive_sec"),
                ("Load", {"keep_alive_sec": dbus.Int64(0)}, "keep_alive_sec"),
                ("Load", {"keep_alive_sec": dbus.Int64(-2)}, "keep_alive_sec"),
                ("Load", {"pin": dbus.String("yes")}, "pin"),
                ("Load", {"force": dbus.Boolean(True)}, "force"),
                ("Unload", {"bogus": dbus.Boolean(True)}, "bogus"),
                ("Unload", {"force": dbus.String("yes")}, "force"),
                ("UnloadAll", {"bogus": dbus.Boolean(True)}, "bogus"),
                ("UnloadAll", {"force": dbus.Int64(1)}, "force"),
        ]
        failures = []
        for method, options, named in cases:
                what = f"{method}({options})"
                try:
                        if method == "UnloadAll":
                                message = expect_dbus_error(ERROR_INVALID_ARGS, d.py.unload_all, **options)
                        elif method == "Unload":
                                message = expect_dbus_error(ERROR_INVALID_ARGS, d.py.unload, "alpha", **options)
                        else:
                                message = expect_dbus_error(ERROR_INVALID_ARGS, d.py.load, "alpha", **options)
                        assert named in message, f"the message {message!r} does not name {named!r}"
                except AssertionError as e:
                        failures.append(f"{what}: {e}")
                d.status()
        assert not failures, "\n".join(failures)
        pool, models = d.status()
        assert pool["models_loaded"] == 0 and models["alpha"]["state"] == "available", (pool, models)

        # The same options, well-formed, work.
        d.py.load("alpha", keep_alive_sec=5, pin=False)
        assert d.py.unload("alpha", force=False) is True
