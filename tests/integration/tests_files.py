# SPDX-License-Identifier: MIT
"""Model files as the store holds them: symlinks that lead out of the store
are refused without a word of what they point to, and messages never quote
a model file."""

import json
import os
import re
import signal

from harness import (DEADLINE, ERROR_INVALID_MODEL, MANAGER_IFACE, MANAGER_PATH, MODEL_IFACE, PROPERTIES_IFACE,
                     BusctlError, GiB, MiB, expect_dbus_error, model_files, model_path, safetensors_header,
                     wait_until, write_safetensors_raw, write_sparse_model)
from tests_lifecycle import load_in_thread

PAGE = os.sysconf("SC_PAGESIZE")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def page_align(n):
        return (n + PAGE - 1) // PAGE * PAGE


def write_unknown_dtype_file(path, tensor_name):
        """A safetensors file whose one tensor has an unknown dtype: the
        validator's message about it names the tensor."""
        header = json.dumps({tensor_name: {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}).encode()
        header += b" " * ((8 - len(header) % 8) % 8)
        write_safetensors_raw(path, header, b"\0" * 16)


def write_valid_file(path, size=64 * 1024):
        header, length = safetensors_header([("w", "F32", [size // 4], size)])
        write_safetensors_raw(path, header, b"\0" * length)


def check_failure_does_not_quote(ctx, d, name, names_file, avoid, listed=True):
        """Load of name fails with InvalidModel for both clients, whose
        messages, LoadFailed's and Status's name names_file (its place in
        the store) and contain none of avoid. A name the daemon did not list
        at start-up is forgotten once its load failed."""
        def check(what, message):
                assert message and names_file in message, f"{what} does not name {names_file}: {message!r}"
                for s in avoid:
                        assert s not in message, f"{what} quotes {s!r}: {message!r}"

        check("InvalidModel", expect_dbus_error(ERROR_INVALID_MODEL, d.py.load, name))
        failed = ctx.monitor.wait_signal("LoadFailed", name)
        assert failed.args[1] == ERROR_INVALID_MODEL, failed
        check("LoadFailed", failed.args[2])
        try:
                d.load(name)
                raise AssertionError(f"busctl's Load of {name} succeeded")
        except BusctlError as e:
                check("busctl's error", e.message)
        m = d.model(name)
        if m is None and not listed:
                return
        assert m is not None and m["state"] == "error" and m["memory_bytes"] == 0, m
        check("Status's error", m["error"])


def test_symlinks_out_of_the_store_are_refused(ctx):
        secret = "mpool-secret-" + os.urandom(6).hex()
        outside = os.path.join(ctx.dir, "outside")
        target = os.path.join(outside, "weights.safetensors")
        # Followed, the old daemon quoted the tensor's name, the index's
        # strings, in messages every local user reads.
        write_unknown_dtype_file(target, secret)
        with open(os.path.join(outside, "index.json"), "w") as f:
                json.dump({"weight_map": {secret: secret + "/x.safetensors"}}, f)
        os.makedirs(os.path.join(outside, "dir"))
        os.symlink(target, os.path.join(outside, "dir", "model.safetensors"))

        def store_path(*parts):
                return os.path.join(ctx.store, *parts)

        os.makedirs(store_path("absolute"))
        os.symlink(target, store_path("absolute", "model.safetensors"))
        os.makedirs(store_path("relative"))
        os.symlink("../../outside/weights.safetensors", store_path("relative", "model.safetensors"))
        os.makedirs(store_path("index"))
        os.symlink("../../outside/index.json", store_path("index", "model.safetensors.index.json"))
        os.makedirs(store_path("shard"))
        with open(store_path("shard", "model.safetensors.index.json"), "w") as f:
                json.dump({"weight_map": {"a": "one.safetensors", "b": "two.safetensors"}}, f)
        write_valid_file(store_path("shard", "one.safetensors"))
        os.symlink(target, store_path("shard", "two.safetensors"))
        os.symlink("../outside/dir", store_path("dirlink"))

        snapshot = os.path.join(ctx.hub, "models--acme--leak", "snapshots", COMMIT)
        os.makedirs(snapshot)
        os.makedirs(os.path.join(ctx.hub, "models--acme--leak", "refs"))
        with open(os.path.join(ctx.hub, "models--acme--leak", "refs", "main"), "w") as f:
                f.write(COMMIT + "\n")
        os.symlink("../../../../outside/weights.safetensors", os.path.join(snapshot, "model.safetensors"))

        d = ctx.daemon(hub=ctx.hub)
        avoid = [secret, outside]
        # A directory that leads out is not even listed.
        cases = [
                ("absolute", store_path("absolute", "model.safetensors"), True),
                ("relative", store_path("relative", "model.safetensors"), True),
                ("index", store_path("index", "model.safetensors.index.json"), True),
                ("shard", store_path("shard", "two.safetensors"), True),
                ("dirlink", store_path("dirlink"), False),
                ("acme/leak", os.path.join(snapshot, "model.safetensors"), True),
        ]
        failures = []
        for name, names_file, listed in cases:
                try:
                        check_failure_does_not_quote(ctx, d, name, names_file, avoid, listed)
                except AssertionError as e:
                        failures.append(f"{name}: {e}")
        assert not failures, "\n".join(failures)

        # Nothing outside was even read: the log cannot have it either.
        assert secret not in d.log(), "mpoold read the file outside the store"
        pool, models = d.status()
        assert pool["models_loaded"] == 0 and pool["memory_used"] == 0, pool
        for m in models.values():
                assert secret not in m["error"] and outside not in m["error"], m


def test_symlinks_inside_the_store_load(ctx):
        """Relative symlinks that stay in the store are followed: between
        models of ModelDir, and the Hugging Face cache's own links from
        snapshots/REV/FILE to ../../blobs/HASH."""
        alpha = ctx.model("alpha", size="2M")
        os.makedirs(os.path.join(ctx.store, "acme", "copy"))
        os.symlink("../../alpha/model.safetensors", os.path.join(ctx.store, "acme", "copy", "model.safetensors"))
        os.symlink("alpha", os.path.join(ctx.store, "alias"))
        snapshot = ctx.hf_model("hf/sharded", size="3M", shards=3)
        links = [f for f in os.listdir(snapshot) if f.endswith(".safetensors")]
        assert len(links) == 3 and all(os.readlink(os.path.join(snapshot, f)).startswith("../../blobs/")
                                       for f in links), f"not the cache's layout: {os.listdir(snapshot)}"

        d = ctx.daemon(hub=ctx.hub)
        for name in ("acme/copy", "alias", "hf/sharded"):
                assert d.load(name) == model_path(name)
                m = d.model(name)
                assert m["state"] == "loaded" and m["memory_bytes"] > 0, m
        size = os.path.getsize(model_files(alpha)[0])
        assert d.model("alias")["memory_bytes"] == page_align(size), d.model("alias")


def test_invalid_header_message_does_not_quote_the_file(ctx):
        """The validator's words (tensor names, JSON around an error) are for
        the log, not for messages every local user reads."""
        secret = "mpool-secret-" + os.urandom(6).hex()
        write_unknown_dtype_file(os.path.join(ctx.store, "quoted", "model.safetensors"), secret)
        broken = ('{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "' + secret).encode()
        broken += b" " * ((8 - len(broken) % 8) % 8)
        write_safetensors_raw(os.path.join(ctx.store, "broken", "model.safetensors"), broken, b"\0" * 16)

        d = ctx.daemon()
        for name in ("quoted", "broken"):
                path = os.path.join(ctx.store, name, "model.safetensors")
                check_failure_does_not_quote(ctx, d, name, path, [secret])
        # The administrator still learns why.
        assert secret in d.log(), "the validator's reason is not in the log"
