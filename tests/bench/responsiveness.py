#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The load that responsiveness.sh puts on mpoold while bus-latency times
Status (Debian's python3 and python3-dbus):

  responsiveness.py loads ADDRESS MODEL FILE cold|warm READY STOP
      Load then Unload of MODEL, again and again until the file STOP
      exists; READY is created as the first Load is sent. cold: before each
      Load, FILE's pages are dropped from the page cache (POSIX_FADV_DONTNEED
      on this file alone: the rest of the machine keeps its cache), so that
      the loader reads the disk; warm: FILE is left as it is (the caller
      has read it into the page cache). Prints one line of JSON: the
      loads, their durations, and the share of FILE in the page cache
      before each cold Load, or the first warm one (util-linux's fincore,
      a process of its own: not between warm loads, which it would slow).
  responsiveness.py embed DIR ADDRESS MODEL CALLERS READY STOP
      CALLERS processes, each on a connection of its own, calling Embed on
      MODEL with TEXTS of the texts embed-throughput.py wrote into DIR,
      back to back, until STOP exists; READY is created once every caller has had
      its first reply (all workers started and busy). Prints one line of
      JSON: the calls and their mean duration."""

import json
import multiprocessing
import os
import subprocess
import sys
import time

TEXTS = 8
MANAGER = ("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager")


def call(bus, method, signature, args, timeout=600):
    return bus.call_blocking(*MANAGER, method, signature, args, timeout=timeout)


def cached_share(path):
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output=RES", path], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return -1.0
    return int(out.stdout.split()[0]) / os.path.getsize(path)


def loads(address, model, path, mode, ready, stop):
    import dbus
    import dbus.bus

    bus = dbus.bus.BusConnection(address)
    opts = dbus.Dictionary({}, signature="sv")
    durations, cached = [], []
    while not os.path.exists(stop):
        if mode == "cold":
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        if mode == "cold" or not cached:
            cached.append(cached_share(path))
        if not durations:
            open(ready, "w").close()
        t0 = time.monotonic()
        call(bus, "Load", "sa{sv}", (model, opts))
        durations.append(time.monotonic() - t0)
        call(bus, "Unload", "sa{sv}", (model, opts))
    print(json.dumps({"loads": len(durations), "mean_s": sum(durations) / max(1, len(durations)),
                      "max_s": max(durations, default=0),
                      "cached_before_max": max(cached, default=0), "cached_before_min": min(cached, default=0)}))


def embed_caller(address, model, texts_of, offset, ready, stop, results):
    import dbus
    import dbus.bus

    bus = dbus.bus.BusConnection(address)
    opts = dbus.Dictionary({}, signature="sv")
    n, busy = 0, 0.0
    while n == 0 or not os.path.exists(stop):
        t0 = time.monotonic()
        call(bus, "Embed", "sasa{sv}", (model, texts_of[(offset + n) % len(texts_of)], opts))
        busy += time.monotonic() - t0
        n += 1
        if n == 1:
            ready.wait()
    results.put({"calls": n, "seconds": busy})


def embed(directory, address, model, callers, ready_path, stop):
    with open(os.path.join(directory, "batches.json")) as f:
        # A quarter of a batch per call: the workers stay as busy, and a
        # round takes less time.
        texts_of = [b["texts"][i:i + TEXTS] for b in json.load(f) for i in range(0, len(b["texts"]), TEXTS)]
    ready = multiprocessing.Barrier(callers + 1)
    results = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=embed_caller,
                                     args=(address, model, texts_of, n, ready, stop, results))
             for n in range(callers)]
    for p in procs:
        p.start()
    ready.wait()
    open(ready_path, "w").close()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
    calls = sum(o["calls"] for o in out)
    print(json.dumps({"calls": calls, "mean_s": sum(o["seconds"] for o in out) / calls}))


def main(argv):
    if len(argv) == 8 and argv[1] == "loads":
        loads(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7])
    elif len(argv) == 8 and argv[1] == "embed":
        embed(argv[2], argv[3], argv[4], int(argv[5]), argv[6], argv[7])
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
