# SPDX-License-Identifier: MIT
"""Model files as the store holds them: symlinks that lead out of the store
are refused without a word of what they point to, messages never quote a
model file, and files that change size while or after they load."""

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
        """The validator says what is wrong by position, never by quoting the
        file: neither the messages every local user reads nor the log hold
        what the header says."""
        secret = "mpool-secret-" + os.urandom(6).hex()
        write_unknown_dtype_file(os.path.join(ctx.store, "quoted", "model.safetensors"), secret)
        broken = ('{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "' + secret).encode()
        broken += b" " * ((8 - len(broken) % 8) % 8)
        write_safetensors_raw(os.path.join(ctx.store, "broken", "model.safetensors"), broken, b"\0" * 16)

        d = ctx.daemon()
        for name in ("quoted", "broken"):
                path = os.path.join(ctx.store, name, "model.safetensors")
                check_failure_does_not_quote(ctx, d, name, path, [secret])
        assert secret not in d.log(), "the log quotes the header"
        # The caller still learns why.
        _, models = d.status()
        assert "dtype" in models["quoted"]["error"], models["quoted"]
        assert "JSON" in models["broken"]["error"], models["broken"]


# -- files that change while or after they load --

def mapping_of(pid, path):
        """(address range, Rss in bytes) of pid's mapping of path, or None."""
        found = None
        with open(f"/proc/{pid}/smaps") as f:
                for line in f:
                        fields = line.split(None, 5)
                        if re.match(r"^[0-9a-f]+-[0-9a-f]+$", fields[0]):
                                found = fields[0] if len(fields) == 6 and fields[5].rstrip("\n") == path else None
                        elif found and fields[0] == "Rss:":
                                return found, int(fields[1]) * 1024
        return None


def is_mapped(pid, path):
        with open(f"/proc/{pid}/maps") as f:
                return any(line.rstrip("\n").endswith(" " + path) for line in f)


def all_threads_stopped(pid):
        for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                        with open(f"/proc/{pid}/task/{tid}/stat") as f:
                                state = f.read().rsplit(")", 1)[1].split()[0]
                except FileNotFoundError:
                        continue
                if state not in ("T", "t"):
                        return False
        return True


def truncate_mid_load(d, name, path, size, new_size):
        """Loads name and truncates path to new_size while the loader is
        between mapping it and having read all of it in. To know that, the
        daemon is stopped (every thread) as soon as the file is mapped, its
        mapping's Rss read, the file truncated only if the mapping is not
        complete, then it resumes. Returns (load outcome, truncated)."""
        outcome = {}
        truncated = False
        thread = load_in_thread(d, name, outcome)
        wait_until(lambda: outcome or is_mapped(d.pid, path), f"{path} mapped", interval=0.001)
        if not outcome:
                os.kill(d.pid, signal.SIGSTOP)
                try:
                        wait_until(lambda: all_threads_stopped(d.pid), "mpoold stopped", interval=0.001)
                        mapping = mapping_of(d.pid, path)
                        if mapping is not None and mapping[1] < size:
                                os.truncate(path, new_size)
                                truncated = True
                finally:
                        os.kill(d.pid, signal.SIGCONT)
        thread.join(DEADLINE * 4)
        assert not thread.is_alive(), "Load did not return"
        return outcome, truncated


def test_file_truncated_while_loading_is_invalid_model(ctx):
        d = ctx.daemon(MemoryLimit="12G")
        for size in (2 * GiB, 8 * GiB):
                name = f"shrinking-{size // GiB}g"
                directory = os.path.join(ctx.store, name)
                write_sparse_model(directory, size)
                path = model_files(directory)[0]
                outcome, truncated = truncate_mid_load(d, name, path, os.path.getsize(path), MiB)
                if not truncated:
                        # Read in completely before mpoold could be stopped:
                        # try a bigger one.
                        assert "path" in outcome, outcome
                        d.py.unload(name)
                        os.unlink(path)
                        continue

                assert "error" in outcome, f"the load of a file truncated under it succeeded: {outcome}"
                error, message = outcome["error"]
                assert error == ERROR_INVALID_MODEL, f"expected InvalidModel, got {error}: {message}"
                assert path in message and "changed size" in message, message
                failed = ctx.monitor.wait_signal("LoadFailed", name)
                assert failed.args[1] == ERROR_INVALID_MODEL and "changed size" in failed.args[2], failed
                m = d.model(name)
                assert m["state"] == "error" and m["memory_bytes"] == 0 and "changed size" in m["error"], m
                pool, _ = d.status()
                assert pool["models_loaded"] == 0 and pool["memory_used"] == 0, pool
                return
        raise AssertionError("both loads (2 GiB, 8 GiB) completed before mpoold was stopped: truncation untested")


def test_file_truncated_after_loading_gives_memory_back(ctx):
        alpha = ctx.model("alpha", size="64M")
        ctx.model("beta", size="8M")
        d = ctx.daemon()
        d.load("alpha")
        d.load("beta")
        path = model_files(alpha)[0]
        beta = d.model("beta")["memory_bytes"]
        assert d.model("alpha")["memory_bytes"] == page_align(os.path.getsize(path)), d.model("alpha")

        def consistent(expected):
                """alpha holds expected, beta what it did, the pool the sum."""
                def check():
                        pool, models = d.status()
                        if models["alpha"]["memory_bytes"] != expected:
                                return None
                        assert models["alpha"]["state"] == "loaded", models["alpha"]
                        assert models["beta"]["memory_bytes"] == beta, models["beta"]
                        assert pool["memory_used"] == sum(m["memory_bytes"] for m in models.values()), \
                                (pool, models)
                        return pool
                return check

        # The pages past the new end are gone, locked as they were.
        new_size = 10 * MiB + 123
        os.truncate(path, new_size)
        pool = wait_until(consistent(page_align(new_size)), "alpha's memory_bytes to follow the truncation")
        assert pool["memory_used"] == page_align(new_size) + beta, pool
        used = d.py.call("Get", "ss", (MANAGER_IFACE, "MemoryUsed"), path=MANAGER_PATH, iface=PROPERTIES_IFACE)
        assert used == pool["memory_used"], (used, pool)
        ctx.monitor.wait(lambda sigs: any(s.member == "PropertiesChanged" and s.path == model_path("alpha")
                                          and s.args[0] == MODEL_IFACE
                                          and s.args[1].get("MemoryBytes") == page_align(new_size)
                                          for s in sigs), "PropertiesChanged of alpha's MemoryBytes")
        assert re.search(r"files of model alpha changed", d.log()), "no warning names the model"

        # Cut and extended back to the same size: the pages past the cut are
        # gone all the same, and the size alone would not tell.
        os.truncate(path, MiB)
        os.truncate(path, new_size)
        wait_until(consistent(MiB), "alpha's memory_bytes to follow the truncation to 1 MiB")

        os.truncate(path, 0)
        wait_until(consistent(0), "alpha's memory_bytes to reach 0")

        assert d.py.unload("alpha") is True
        pool, _ = d.status()
        assert pool["memory_used"] == beta, pool
