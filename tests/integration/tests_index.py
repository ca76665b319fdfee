# SPDX-License-Identifier: MIT
"""Sharded models' indexes: what reading model.safetensors.index.json costs
the daemon. Memory stays bounded for the largest index allowed, whatever it
holds, and goes back once the probe is done; a long probe of a model with a
large index stops when its load is cancelled; messages about an index never
quote it."""

import json
import os

from harness import MiB, write_config_json
from tests_probe import assert_failures_do_not_quote, assert_rss_back, cancel_probe, proc_status, write_huge_header

# The daemon's limit on an index (STORE_INDEX_SIZE_MAX), and the size of the
# indexes written here: close to it.
INDEX_MAX = 64 * MiB
INDEX_SIZE = 60 * MiB


def write_large_index(directory, weight_map):
        """Writes directory's model.safetensors.index.json: the weight_map
        given and, under a member of "metadata" that no reader looks at, an
        array of about 30 million zeros, padding the file to INDEX_SIZE
        bytes. A reader that builds a tree of the document takes gigabytes
        for it."""
        head = b'{"metadata": {"total_size": 1, "ignored": [0'
        tail = b']}, "weight_map": ' + json.dumps(weight_map).encode() + b"}"
        count = (INDEX_SIZE - len(head) - len(tail)) // 2
        text = head + b",0" * count + tail
        text += b" " * (INDEX_SIZE - len(text))
        with open(os.path.join(directory, "model.safetensors.index.json"), "wb") as f:
                f.write(text)


def pad_index(directory):
        """Pads the index mpool-mkmodel wrote in directory as write_large_index() does."""
        with open(os.path.join(directory, "model.safetensors.index.json")) as f:
                weight_map = json.load(f)["weight_map"]
        write_large_index(directory, weight_map)


def warm_up(ctx, d):
        """A first load and unload of a small sharded model, so that what any
        load sets up once (a loader thread's arena, bus buffers) is in the
        baseline. Returns the daemon's VmRSS after it."""
        d.load("warm")
        assert d.unload("warm") is True
        return d.rss()


def test_probe_of_large_index_gives_memory_back(ctx):
        directory = ctx.model("big", size="1M", shards=3)
        pad_index(directory)
        ctx.model("warm", size="1M", shards=2)
        d = ctx.daemon()
        before = warm_up(ctx, d)

        d.load("big")
        m = d.model("big")
        assert m["state"] == "loaded", m
        # The daemon's peak so far, start-up included (it reads every index
        # once then): the index has to be read, and nothing that grows with
        # its 30 million values may come on top of it.
        peak = proc_status(d.pid, "VmHWM")
        assert peak - before <= INDEX_MAX + 64 * MiB, \
                f"VmHWM rose by {(peak - before) // MiB} MiB while probing a {INDEX_SIZE // MiB} MiB index"

        assert d.unload("big") is True
        assert_rss_back(d, before, f"probing and unloading a model with a {INDEX_SIZE // MiB} MiB index")


def test_long_index_probe_is_cancelled(ctx):
        """A large index naming many shards, each with a header as large as
        allowed (hard links to one file): probing it all would take far
        longer than any call waits, so Unload can only come back if the probe
        stops, wherever it is: in the index or in the headers."""
        n_shards = 1000
        directory = os.path.join(ctx.store, "slow")
        first = os.path.join(directory, f"model-00001-of-{n_shards:05d}.safetensors")
        write_huge_header(first)
        weight_map = {"t1": os.path.basename(first)}
        for i in range(2, n_shards + 1):
                name = f"model-{i:05d}-of-{n_shards:05d}.safetensors"
                os.link(first, os.path.join(directory, name))
                weight_map[f"t{i}"] = name
        write_large_index(directory, weight_map)
        write_config_json(directory)
        ctx.model("warm", size="1M", shards=2)
        d = ctx.daemon()
        before = warm_up(ctx, d)

        cancel_probe(d, "slow")

        peak = proc_status(d.pid, "VmHWM")
        assert peak - before <= INDEX_MAX + 100 * MiB + 64 * MiB, \
                f"VmHWM rose by {(peak - before) // MiB} MiB while probing a {INDEX_SIZE // MiB} MiB index " \
                f"and headers of 100 MB"
        assert_rss_back(d, before, "a cancelled probe")


SECRET = "s3cr3t-Planted"


def test_invalid_index_messages_do_not_quote_it(ctx):
        """Status and LoadFailed are for every local user; the model's files
        may be for their owner only."""
        cases = {
                # Broken JSON, right at the secret.
                "syntax": f'{{"weight_map": {{"a": "s", "{SECRET}" {SECRET}}}}}'.encode(),
                # A shard that is not a plain file name, or not a string.
                "path": json.dumps({"weight_map": {SECRET: f"../{SECRET}"}}).encode(),
                "kind": json.dumps({"weight_map": {"a": "s", SECRET: {SECRET: SECRET}}}).encode(),
                # Bytes that are not UTF-8 in a member nobody reads.
                "utf8": b'{"metadata": {"x": "\xff' + SECRET.encode() + b'"}, "weight_map": {"a": "s"}}',
                # After the document.
                "trailing": json.dumps({"weight_map": {"a": "s"}}).encode() + b" " + SECRET.encode(),
        }
        for name, text in cases.items():
                directory = os.path.join(ctx.store, name)
                write_config_json(directory)
                with open(os.path.join(directory, "model.safetensors.index.json"), "wb") as f:
                        f.write(text)

        d = ctx.daemon()
        assert_failures_do_not_quote(ctx, d, cases, SECRET, must_name="model.safetensors.index.json")
