#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The parts of memory-returned.sh written in Python (Debian's python3,
python3-torch and python3-dbus):

  memory-returned.py model DIR
      Writes embed-throughput.py's BERT (hidden 384, 12 heads, BERT's
      vocabulary) with LAYERS (1) layer into DIR: the memory of a worker
      is the same as with 12, the compute 12 times less.
  memory-returned.py ADDRESS PID WEIGHTS EMBEDDING DIR CYCLES
      CYCLES loads and unloads of the model WEIGHTS (mapped in place), then
      CYCLES of the model EMBEDDING at precision q8 with 4 workers, each
      made to exist and to compute by 4 Embed calls at once, each of 8
      texts longer than 512 tokens (made of the words of
      DIR/batches.json): 4096 tokens, a worker's whole scratch. Around
      each cycle: the daemon's RSS (/proc/PID/status) before the Load,
      while loaded, after the Unload, and Status's memory_bytes and
      memory_used while loaded. Prints one line of JSON."""

import importlib.util
import json
import multiprocessing
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = 1
WORKERS = 4
# Texts longer than the model's 512 tokens (truncated to them), 8 per call:
# 4096 tokens, what a worker's scratch is sized and charged for.
TEXTS_PER_CALL = 8
WORDS_PER_TEXT = 520


def status_of(proxy):
    return proxy.Status(dbus_interface="org.mpool.Manager", timeout=120)


def memory(pid):
    """The daemon's resident memory in bytes: all, anonymous, file-backed."""
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                parts = value.split()
                fields[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"] + fields["RssShmem"],
            "threads": fields["Threads"]}


def thread_cpu(pid):
    """CPU ticks of each of the daemon's threads, by thread id."""
    ticks = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                fields = f.read().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        ticks[int(tid)] = int(fields[11]) + int(fields[12])
    return ticks


def caller(address, model, texts, start, results):
    import dbus.bus
    bus = dbus.bus.BusConnection(address)
    start.wait()
    bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "Embed", "sasa{sv}",
                      (model, texts, dbus.Dictionary({}, signature="sv")), timeout=600)
    results.put(True)


def long_texts(batches):
    words = [w for b in batches for t in b["texts"] for w in t.split()]
    return [" ".join(words[i:i + WORDS_PER_TEXT]) for i in range(0, len(words) - WORDS_PER_TEXT + 1, WORDS_PER_TEXT)]


def embed_at_once(address, model, texts_of, round_):
    """WORKERS Embed calls at once, each on a connection of its own."""
    start = multiprocessing.Barrier(WORKERS + 1)
    results = multiprocessing.Queue()
    procs = []
    for n in range(WORKERS):
        first = (round_ * WORKERS + n) * TEXTS_PER_CALL
        texts = [texts_of[(first + i) % len(texts_of)] for i in range(TEXTS_PER_CALL)]
        procs.append(multiprocessing.Process(target=caller, args=(address, model, texts, start, results)))
    for p in procs:
        p.start()
    start.wait()
    for _ in procs:
        results.get()
    for p in procs:
        p.join()


def cycle(proxy, address, pid, name, options, texts_of=None):
    import dbus

    status_of(proxy)
    before = memory(pid)
    proxy.Load(name, dbus.Dictionary(options, signature="sv"), dbus_interface="org.mpool.Manager", timeout=600)
    workers = computed = 0
    if texts_of is not None:
        ticks0 = thread_cpu(pid)
        # The workers start as calls wait for one; a round where fewer
        # than WORKERS exist (a call done before the last came) is repeated.
        for round_ in range(8):
            embed_at_once(address, name, texts_of, round_)
            pool, models = status_of(proxy)
            workers = int(next(m for m in models if m["name"] == name)["workers"])
            if workers >= WORKERS:
                break
        ticks1 = thread_cpu(pid)
        # Threads that started during the calls and used the CPU: the workers.
        computed = sum(1 for tid, t in ticks1.items() if tid not in ticks0 and t > 0)
    pool, models = status_of(proxy)
    model = next(m for m in models if m["name"] == name)
    loaded = memory(pid)
    proxy.Unload(name, dbus.Dictionary({}, signature="sv"), dbus_interface="org.mpool.Manager", timeout=600)
    # One more round trip: the workers' teardown, deferred past the reply,
    # has run by then.
    status_of(proxy)
    after = memory(pid)
    return {"before": before, "loaded": loaded, "after": after, "memory_bytes": int(model["memory_bytes"]),
            "memory_used": int(pool["memory_used"]), "workers": workers, "workers_computed": computed}


def make_model(directory):
    spec = importlib.util.spec_from_file_location("embed_throughput", os.path.join(HERE, "embed-throughput.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.CONFIG["layers"] = LAYERS
    module.make_model(directory)


def main(argv):
    if len(argv) == 3 and argv[1] == "model":
        make_model(argv[2])
        return 0
    if len(argv) != 7:
        sys.exit(__doc__)
    import dbus
    import dbus.bus

    address, pid, weights, embedding, directory, cycles = argv[1], int(argv[2]), argv[3], argv[4], argv[5], int(argv[6])
    bus = dbus.bus.BusConnection(address)
    proxy = bus.get_object("org.mpool.Manager", "/org/mpool/Manager")
    with open(os.path.join(directory, "batches.json")) as f:
        texts_of = long_texts(json.load(f))

    out = {"weights": [], "embedding": []}
    t0 = time.monotonic()
    for _ in range(cycles):
        out["weights"].append(cycle(proxy, address, pid, weights, {}))
    t1 = time.monotonic()
    options = {"precision": dbus.String("q8"), "max_workers": dbus.UInt32(WORKERS)}
    for _ in range(cycles):
        out["embedding"].append(cycle(proxy, address, pid, embedding, options, texts_of))
    out["seconds"] = {"weights": t1 - t0, "embedding": time.monotonic() - t1}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
