# SPDX-License-Identifier: MIT
"""Models made runnable at load: kind and the memory of each precision
before loading, the Load option "precision", the files let go of once
converted (a q8 load takes about a quarter of f32's memory), OpenFiles
still answering then, and InsufficientMemory when the conversion does not
fit. The models are tests/fixtures/bert's, or a larger random BERT written
here, each with a tokenizer.json whose ids stay within its vocabulary."""

import json
import mmap
import os
import shutil
import struct
import threading

import dbus

from harness import (DEADLINE, ERROR_INSUFFICIENT_MEMORY, ERROR_INVALID_ARGS, ERROR_INVALID_MODEL, MODEL_IFACE, KiB,
                     MiB, PyClient, expect_dbus_error, model_path)

ERROR_NOT_SUPPORTED = "org.freedesktop.DBus.Error.NotSupported"
ERROR_BUSY = "org.mpool.Error.Busy"

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "bert")
PRECISIONS = ("f32", "f16", "q8", "q4")
PAGE = os.sysconf("SC_PAGE_SIZE")


def id_tokenizer(vocab_size):
        """A WordPiece tokenizer.json whose words "t0" … are the model's ids
        (the last id is [UNK]): every id it gives is within the vocabulary."""
        vocab = {f"t{i}": i for i in range(vocab_size - 1)}
        vocab["[UNK]"] = vocab_size - 1
        return {
                "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
                "normalizer": None, "pre_tokenizer": {"type": "BertPreTokenizer"},
                "post_processor": None, "decoder": None,
                "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                          "max_input_chars_per_word": 100, "vocab": vocab},
        }


def write_tokenizer(directory, vocab_size):
        with open(os.path.join(directory, "tokenizer.json"), "w") as f:
                json.dump(id_tokenizer(vocab_size), f)


def copy_fixture(ctx, fixture, name, tokenizer=True):
        """tests/fixtures/bert/FIXTURE as model NAME of the store."""
        directory = os.path.join(ctx.store, name)
        shutil.copytree(os.path.join(FIXTURES, fixture), directory)
        os.unlink(os.path.join(directory, "expected.json"))
        if tokenizer:
                with open(os.path.join(directory, "config.json")) as f:
                        write_tokenizer(directory, json.load(f)["vocab_size"])
        return directory


def random_floats(n):
        """n little-endian F32 values of magnitude 2^-7 to 2^-6, random signs
        and mantissas: no infinities or NaNs, whatever the bytes."""
        data = bytearray(os.urandom(4 * n))
        data[3::4] = bytes((b & 0x80) | 0x3C for b in data[3::4])
        return bytes(data)


def write_bert(directory, vocab=8000, hidden=256, layers=4, intermediate=1024, positions=128):
        """A random BERT of about 5 million F32 weights (21 MB), large enough
        that pages and the tokenizer do not blur the ratio between
        precisions."""
        os.makedirs(directory)
        config = {
                "model_type": "bert", "architectures": ["BertModel"], "hidden_act": "gelu",
                "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
                "num_attention_heads": 4, "intermediate_size": intermediate,
                "max_position_embeddings": positions, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
                "position_embedding_type": "absolute",
        }
        with open(os.path.join(directory, "config.json"), "w") as f:
                json.dump(config, f)
        tensors = [("embeddings.word_embeddings.weight", [vocab, hidden]),
                   ("embeddings.position_embeddings.weight", [positions, hidden]),
                   ("embeddings.token_type_embeddings.weight", [2, hidden]),
                   ("embeddings.LayerNorm.weight", [hidden]), ("embeddings.LayerNorm.bias", [hidden])]
        for i in range(layers):
                p = f"encoder.layer.{i}."
                for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense"):
                        tensors += [(p + m + ".weight", [hidden, hidden]), (p + m + ".bias", [hidden])]
                tensors += [(p + "attention.output.LayerNorm.weight", [hidden]),
                            (p + "attention.output.LayerNorm.bias", [hidden]),
                            (p + "intermediate.dense.weight", [intermediate, hidden]),
                            (p + "intermediate.dense.bias", [intermediate]),
                            (p + "output.dense.weight", [hidden, intermediate]),
                            (p + "output.dense.bias", [hidden]),
                            (p + "output.LayerNorm.weight", [hidden]), (p + "output.LayerNorm.bias", [hidden])]
        header, offset = {}, 0
        for name, shape in tensors:
                size = 4
                for d in shape:
                        size *= d
                header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
                offset += size
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(os.path.join(directory, "model.safetensors"), "wb") as f:
                f.write(struct.pack("<Q", len(text)) + text)
                f.write(random_floats(offset // 4))
        write_tokenizer(directory, vocab)
        return directory


def file_pages(path):
        return -(-os.path.getsize(path) // PAGE) * PAGE


def test_runnable_kind_and_memory_before_load(ctx):
        copy_fixture(ctx, "f32-bare", "bert/bare")
        copy_fixture(ctx, "f32-bare", "bert/no-tokenizer", tokenizer=False)
        ctx.model("plain", size="1M")
        d = ctx.daemon()
        _, models = d.status()

        bare = models["bert/bare"]
        assert bare["kind"] == "embedding" and bare["precision"] == "" and bare["state"] == "available", bare
        memory = bare["memory_by_precision"]
        assert sorted(memory) == sorted(PRECISIONS), memory
        # In place, f32 holds the file; the others hold less, in order.
        pages = file_pages(os.path.join(ctx.store, "bert/bare/model.safetensors"))
        assert memory["f32"] >= pages, (memory, pages)
        assert memory["f32"] > memory["f16"] > memory["q8"] > memory["q4"] > 0, memory

        for name in ("bert/no-tokenizer", "plain"):
                m = models[name]
                assert m["kind"] == "weights" and m["precision"] == "" and m["memory_by_precision"] == {}, m

        # The object says the same.
        props = d.py.get_all(model_path("bert/bare"), MODEL_IFACE)
        assert props["Kind"] == "embedding" and props["Precision"] == "", props
        assert props["MemoryByPrecision"] == memory, props


def test_runnable_load_in_each_precision(ctx):
        directory = write_bert(os.path.join(ctx.store, "big"))
        pages = file_pages(os.path.join(directory, "model.safetensors"))
        d = ctx.daemon()
        before = d.model("big")["memory_by_precision"]

        held = {}
        for precision in PRECISIONS:
                d.load("big", precision=precision)
                m = d.model("big")
                assert m["state"] == "loaded" and m["kind"] == "embedding" and m["precision"] == precision, m
                held[precision] = m["memory_bytes"]
                # As announced before the load, within the tokenizer's estimate.
                assert abs(m["memory_bytes"] - before[precision]) <= 256 * KiB, (precision, m, before)
                pool, _ = d.status()
                assert pool["memory_used"] == m["memory_bytes"], (pool, m)
                assert d.unload("big") is True
                m = d.model("big")
                assert m["memory_bytes"] == 0 and m["precision"] == "" and m["kind"] == "embedding", m

        # f32 is the file itself, mapped; the others are the conversion alone.
        assert pages <= held["f32"] <= pages + 2 * MiB, (held, pages)
        assert held["f16"] <= 0.52 * held["f32"], held
        assert held["q8"] <= 0.30 * held["f32"], held
        assert held["q4"] <= 0.20 * held["f32"], held

        # Without the option: f32.
        d.load("big")
        assert d.model("big")["precision"] == "f32"


def test_runnable_converted_gives_back_its_pages(ctx):
        write_bert(os.path.join(ctx.store, "big"))
        d = ctx.daemon()
        before = d.rss()
        d.load("big", precision="q8")
        m = d.model("big")
        rise = d.rss() - before
        # The file's pages were let go: the daemon holds about what it reports.
        assert abs(rise - m["memory_bytes"]) <= 0.05 * m["memory_bytes"] + 4 * MiB, (rise, m)
        assert d.unload("big") is True
        assert d.rss() - before <= 4 * MiB


def test_runnable_open_files_after_conversion(ctx):
        directory = copy_fixture(ctx, "f16-prefix-cls-normalize", "bert/f16")
        d = ctx.daemon()
        client = PyClient(d.address)
        d.load("bert/f16", precision="q8")
        reply = client.bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager",
                                         "OpenFiles", "s", ("bert/f16",), timeout=120)
        files = [(str(n), fd.take()) for n, fd in reply]
        try:
                assert [n for n, _ in files] == ["model.safetensors"], files
                with mmap.mmap(files[0][1], 0, prot=mmap.PROT_READ) as m, \
                                open(os.path.join(directory, "model.safetensors"), "rb") as f:
                        assert bytes(m) == f.read(), "the descriptor maps other bytes"
        finally:
                for _, fd in files:
                        os.close(fd)
        m = d.model("bert/f16")
        assert m["holds"] == 1 and m["precision"] == "q8", m
        client.close()


def test_runnable_conversion_that_does_not_fit(ctx):
        write_bert(os.path.join(ctx.store, "big"))
        ctx.model("other", size="5M")
        d = ctx.daemon(MemoryLimit="25M")
        memory = d.model("big")["memory_by_precision"]
        # f32 fits (the file), q8 would at the end, but not while it is
        # being converted: the file and its conversion at once.
        assert memory["f32"] < 25 * MiB < memory["f32"] + memory["q8"], memory
        d.load("other")
        message = expect_dbus_error(ERROR_INSUFFICIENT_MEMORY, d.py.load, "big", precision="q8")
        assert "to load in q8" in message, message
        m = d.model("big")
        assert m["state"] == "error" and m["memory_bytes"] == 0, m
        # Nothing was unloaded for a load that could not fit.
        assert d.model("other")["state"] == "loaded"
        ctx.monitor.wait_signal("LoadFailed", "big")

        # f32 fits, once the other model makes room.
        d.load("big")
        assert d.model("big")["precision"] == "f32"
        assert d.model("other")["state"] == "available"


def test_runnable_precision_refused(ctx):
        copy_fixture(ctx, "f32-bare", "bert/bare")
        copy_fixture(ctx, "f32-bare", "bert/no-tokenizer", tokenizer=False)
        ctx.model("plain", size="1M")
        d = ctx.daemon()

        message = expect_dbus_error(ERROR_INVALID_ARGS, d.py.load, "bert/bare", precision="q3")
        assert "f32, f16, q8 and q4" in message, message
        expect_dbus_error(ERROR_INVALID_ARGS, d.py.load, "bert/bare", precision=dbus.Int32(8))

        # A model that cannot be run has no precision to choose.
        message = expect_dbus_error(ERROR_NOT_SUPPORTED, d.py.load, "plain", precision="q8")
        assert "plain cannot be run" in message and "only BERT encoders can be run" in message, message
        assert d.model("plain")["state"] == "error", d.model("plain")
        message = expect_dbus_error(ERROR_NOT_SUPPORTED, d.py.load, "bert/no-tokenizer", precision="f32")
        assert "no tokenizer.json" in message, message
        # Loaded without the option, it is held as weights.
        d.load("plain")
        message = expect_dbus_error(ERROR_NOT_SUPPORTED, d.py.load, "plain", precision="f16")
        assert "cannot be run" in message, message
        assert d.model("plain")["state"] == "loaded"

        # Loaded in one precision, asked in another: unload it first.
        d.load("bert/bare", precision="f16")
        message = expect_dbus_error(ERROR_BUSY, d.py.load, "bert/bare", precision="q8")
        assert "loaded in f16" in message, message
        assert d.load("bert/bare", precision="f16") == model_path("bert/bare")
        assert d.load("bert/bare") == model_path("bert/bare")
        assert d.model("bert/bare")["precision"] == "f16"


def test_runnable_that_turns_out_not_to_be(ctx):
        # A tokenizer with more ids than the model's vocabulary: it looks
        # runnable, and its load finds that it is not.
        directory = copy_fixture(ctx, "f32-bare", "bert/wide")
        write_tokenizer(directory, 400)
        d = ctx.daemon()
        assert d.model("bert/wide")["kind"] == "embedding"

        message = expect_dbus_error(ERROR_INVALID_MODEL, d.py.load, "bert/wide", precision="q8")
        assert "bert/wide" in message and "beyond the 300 of the model's vocabulary" in message, message
        m = d.model("bert/wide")
        assert m["state"] == "error" and m["kind"] == "weights" and m["memory_by_precision"] == {}, m
        # Each load reads the files afresh (they may have been mended).
        message = expect_dbus_error(ERROR_INVALID_MODEL, d.py.load, "bert/wide", precision="q8")
        assert "beyond the 300" in message, message

        # Without the option it loads, as weights only.
        d.load("bert/wide")
        m = d.model("bert/wide")
        assert m["state"] == "loaded" and m["kind"] == "weights" and m["precision"] == "", m
        assert m["memory_by_precision"] == {}, m
        assert "cannot be run" in d.log() and "beyond the 300" in d.log()


def test_runnable_precision_of_a_load_under_way(ctx):
        """A load under way has its precision: another is Busy at once,
        the same joins it (or finds it loaded)."""
        copy_fixture(ctx, "f32-bare", "bert/bare")
        gate = ctx.gate("bert/bare")
        d = ctx.daemon(gates=True)
        first, joined = PyClient(d.address), PyClient(d.address)
        answers = {}

        def load(key, client, **options):
                try:
                        answers[key] = client.load("bert/bare", **options)
                except dbus.exceptions.DBusException as e:
                        answers[key] = e.get_dbus_name()

        threads = [threading.Thread(target=load, args=("q8", first), kwargs={"precision": "q8"}, daemon=True)]
        threads[0].start()
        ctx.monitor.wait_signal("LoadProgress", "bert/bare")
        message = expect_dbus_error(ERROR_BUSY, d.py.load, "bert/bare", precision="f32")
        assert "being loaded in q8" in message, message
        threads.append(threading.Thread(target=load, args=("same", joined), kwargs={"precision": "q8"}, daemon=True))
        threads[1].start()
        assert d.model("bert/bare")["state"] == "loading"
        gate.release()
        for t in threads:
                t.join(DEADLINE * 2)
                assert not t.is_alive(), "a Load got no answer"
        assert answers == {"q8": model_path("bert/bare"), "same": model_path("bert/bare")}, answers
        assert d.model("bert/bare")["precision"] == "q8"
        assert len([s for s in ctx.monitor.signals("LoadProgress", "bert/bare") if s.args[1] == 0]) == 1
        first.close()
        joined.close()
