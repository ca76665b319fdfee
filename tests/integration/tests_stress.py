# SPDX-License-Identifier: MIT
"""The stress run: 32 clients, each a process with its own bus connection
(stress_client.py), make a random mix of Load, Unload, UnloadAll, Acquire
and Release, Status, Metrics, Embed, OpenFiles, Pull, Inspect, Remove,
Cancel and setting MemoryLimit against one mpoold under a small memory limit, with a loopback hub
(tests/tools/fake-hub.py) to pull from. Some clients send a call and close
their connection before the reply; some are killed (SIGKILL) by this test at
random moments and started again; now and then the daemon is told to read
its configuration again (SIGHUP). Afterwards, once everything is quiet:

- every call got a reply or a named error of those its method may give
  (each kind counted and printed); a call without a reply within the call
  timeout, or a client that never finished, fails the run;
- memory_used is the sum over the models (in every Status the clients got,
  and at the end), a loaded model holds what it held after its warm-up load,
  a model that is not loaded holds nothing;
- the same, holds apart, halfway through, with every client stopped
  (SIGSTOP) where it was;
- what a client following the signals knows (the objects and the
  properties that emit PropertiesChanged; ModelLoaded and ModelUnloaded in
  turn) is what Status says;
- no model is stuck loading, unloading or downloading, none is in error
  but for a load refused for the memory limit;
- with every client gone no model has a hold, a worker or a request
  running or queued; after UnloadAll nothing is loaded and nothing is used;
- after UnloadAll the daemon has as many descriptors and threads open as
  after the warm-up, and Metrics' counters never went down;
- the daemon's RSS after UnloadAll is within RSS_GROWTH_MAX of its RSS after
  a warm-up cycle that did every kind of call once;
- the daemon still answers, and exits 0 on SIGTERM (the harness checks).

STRESS_SECONDS sets the length of the run (30 by default, as `make check`
runs it; `make stress` runs 300); STRESS_SEED replays a run's choices (each
client's calls and the kills; the interleaving is the machine's). The seed
is printed first."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import dbus

import embed_fixtures
import harness
from harness import (DEADLINE, MANAGER_IFACE, MODEL_IFACE, OBJECT_MANAGER_IFACE, PROPERTIES_IFACE, MiB, PyClient,
                     model_path, wait_until, write_sparse_model)
from tests_pull import FakeHub, make_repo

CLIENTS = 32
# Clients in these slots are killed at random moments and started again.
KILLED_SLOTS = range(6)
DEFAULT_SECONDS = 30
# A call that took longer than this got no reply: the run fails. Far more
# than any call takes even on a loaded machine under the sanitizers.
CALL_TIMEOUT = 120

WEIGHTS = {"w1": "1M", "w2": "2M", "w3": "3M", "w4": "4M", "w6": "6M", "org/ws": "4M"}
EMBEDDING = {"e1": "f32-mean-normalize", "e2": "bf16-mean-normalize-prompts", "e3": "f16-prefix-cls-normalize"}
PULLED_WEIGHTS = {"hub/p1": "1M", "hub/p2": "2M"}
PULLED_EMBEDDING = {"hub/pe": "f32-lowercase-mean"}
TOO_BIG = "big"
# Room for two or three of the weights models at once, so that loads evict
# and holds make loads fail with InsufficientMemory.
MEMORY_LIMIT = "12M"

# What the daemon's RSS may grow by over the run, from its RSS after a warm-up
# cycle to its RSS after UnloadAll. Every model's memory is mapped files or
# buffers of its own, given back by the unload; what may stay is the heap
# glibc keeps: freed chunks in the arenas of the threads that loaded or
# computed (malloc gives their memory back only from the top of each heap),
# and the bus's and the peers' tables grown for 32 clients at once instead of
# one. Runs of 30 s and of 5 minutes grew it by 0.6 to 1.2 MiB; a leak of
# 100 bytes a call over a 30 s run's 20,000 to 50,000 calls would be 2 to 5
# MiB. Smaller leaks are LeakSanitizer's (`make check SANITIZE=1`).
RSS_GROWTH_MAX = 4 * MiB

TRANSIENT = ("loading", "unloading", "downloading")

ORG = "org.mpool.Error."
FDO = "org.freedesktop.DBus.Error."
# The errors each method may answer in this run; anything else fails it.
# Busy: MaxQueuedLoads, MaxQueuedRequests, a model being downloaded or
# removed, a precision other than the one loaded. LimitsExceeded: calls
# waiting per caller. ModelNotFound: a pulled model removed. Cancelled: an
# unload, UnloadAll, Remove or Cancel of what the call waited for.
LOAD_ERRORS = {ORG + "InsufficientMemory", ORG + "Busy", ORG + "LimitsExceeded", ORG + "ModelNotFound",
               ORG + "Cancelled"}
EXPECTED = {
        "Load": LOAD_ERRORS | {FDO + "NotSupported"},
        "Acquire": LOAD_ERRORS,
        "OpenFiles": LOAD_ERRORS,
        "Embed": LOAD_ERRORS | {ORG + "NotSupported"},
        "Release": {ORG + "NotHeld", ORG + "ModelNotFound"},
        "Unload": {ORG + "ModelNotFound", ORG + "Busy", ORG + "ModelPinned"},
        "UnloadAll": set(),
        "Status": set(),
        "Metrics": set(),
        "Pull": {ORG + "Busy", ORG + "Cancelled", ORG + "LimitsExceeded"},
        "Remove": {ORG + "ModelNotFound", ORG + "Busy"},
        # At most 4 inspections at once.
        "Inspect": {ORG + "Busy", ORG + "LimitsExceeded"},
        "Cancel": {ORG + "NothingToCancel"},
        # Below what pinned models hold.
        "SetMemoryLimit": {FDO + "InvalidArgs"},
}


def say(text):
        print(f"stress: {text}", flush=True)


def embed_call(client, name, texts):
        return client.bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "Embed",
                                        "sasa{sv}", (name, dbus.Array(texts, signature="s"),
                                                    dbus.Dictionary({}, signature="sv")), timeout=CALL_TIMEOUT)


def refused_for_memory(m):
        """A model whose last load was refused for the memory limit shows
        that as its error until it loads again: all the models are valid,
        so that is the only error one may be left in."""
        return "can be made available" in m["error"]


# The model objects' properties that emit PropertiesChanged, as a client
# following the signals would see them, against Status' keys.
WATCHED_PROPERTIES = {"State": "state", "MemoryBytes": "memory_bytes", "Holds": "holds", "Precision": "precision",
                      "Kind": "kind", "ExpiresAt": "expires_at_usec"}


class SignalFollower:
        """What a client that read GetManagedObjects once, then only the
        signals, knows of the models: their objects and properties, and
        which are loaded (ModelLoaded, ModelUnloaded)."""

        def __init__(self, ctx, client):
                self.ctx = ctx
                self.client = client
                self.problems = []
                objects = client.managed_objects()
                ctx.monitor.sync(client)
                # Taken while nothing happens: no signal falls between the two.
                self.mark = len(ctx.monitor.signals(iface=None))
                self.objects = {path: dict(ifaces[MODEL_IFACE]) for path, ifaces in objects.items()
                                if MODEL_IFACE in ifaces}
                self.loaded = {o["Name"] for o in self.objects.values() if o["State"] == "loaded"}

        def follow(self):
                self.ctx.monitor.sync(self.client)
                signals = self.ctx.monitor.signals(iface=None)
                for s in signals[self.mark:]:
                        self.apply(s)
                self.mark = len(signals)

        def apply(self, s):
                if s.interface == OBJECT_MANAGER_IFACE and s.member == "InterfacesAdded":
                        path, ifaces = s.args
                        if MODEL_IFACE in ifaces:
                                self.objects[path] = dict(ifaces[MODEL_IFACE])
                elif s.interface == OBJECT_MANAGER_IFACE and s.member == "InterfacesRemoved":
                        path, names = s.args
                        if MODEL_IFACE in names:
                                self.objects.pop(path, None)
                elif s.interface == PROPERTIES_IFACE and s.member == "PropertiesChanged" and s.args[0] == MODEL_IFACE:
                        if s.path not in self.objects:
                                self.problems.append(f"PropertiesChanged of {s.path}, which was never added: {s!r}")
                                return
                        self.objects[s.path].update(s.args[1])
                        for name in s.args[2]:
                                self.objects[s.path][name] = None
                elif s.interface == MANAGER_IFACE and s.member == "ModelLoaded":
                        name = s.args[0]
                        if name in self.loaded:
                                self.problems.append(f"ModelLoaded for {name}, loaded already")
                        self.loaded.add(name)
                elif s.interface == MANAGER_IFACE and s.member == "ModelUnloaded":
                        name = s.args[0]
                        if name not in self.loaded:
                                self.problems.append(f"ModelUnloaded ({s.args[1]}) for {name}, which was not loaded")
                        self.loaded.discard(name)

        def compare(self, when):
                """The problems found between the signals and Status. Idle
                unloads may still come: Status is taken again until it did
                not change while the signals up to it were read."""
                def stable():
                        before = self.client.status()[1]
                        self.follow()
                        after = self.client.status()[1]
                        return after if after == before else None
                models = wait_until(stable, "Status to stay the same while the signals are read", interval=0.1)
                problems, self.problems = self.problems, []
                paths = {model_path(name): name for name in models}
                if set(paths) != set(self.objects):
                        problems.append(f"{when}: objects by the signals {sorted(self.objects)}, "
                                        f"by Status {sorted(paths)}")
                for path, name in paths.items():
                        seen = self.objects.get(path)
                        if seen is None:
                                continue
                        for prop, key in WATCHED_PROPERTIES.items():
                                if seen.get(prop) is not None and seen[prop] != models[name][key]:
                                        problems.append(f"{when}: {name}: {prop} is {seen[prop]!r} by the "
                                                        f"signals, {models[name][key]!r} by Status")
                loaded = {name for name, m in models.items() if m["state"] == "loaded"}
                if loaded != self.loaded:
                        problems.append(f"{when}: loaded by ModelLoaded/ModelUnloaded {sorted(self.loaded)}, "
                                        f"by Status {sorted(loaded)}")
                return problems


def fds_and_threads(pid):
        return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def uses_asan(pid):
        """A sanitized daemon: ASan keeps freed memory in quarantine, so its
        RSS says nothing about what the daemon gives back (LSan checks the
        leaks there instead)."""
        with open(f"/proc/{pid}/maps") as f:
                return "libasan" in f.read()


class Run:
        def __init__(self, ctx, seconds, seed):
                self.ctx = ctx
                self.seconds = seconds
                self.seed = seed
                self.rng = random.Random(seed)
                self.out_dir = os.path.join(ctx.dir, "clients")
                os.makedirs(self.out_dir)
                self.procs = {}
                self.incarnations = {}
                self.kills = 0
                self.reloads = 0
                self.problems = []
                self.finished_late = []

        # -- set-up --

        def make_models(self):
                ctx = self.ctx
                for name, size in WEIGHTS.items():
                        ctx.model(name, size=size, shards=2 if name.startswith("org/") else None)
                for name, fixture in EMBEDDING.items():
                        embed_fixtures.install_model(ctx.store, fixture, name)
                write_sparse_model(os.path.join(ctx.store, TOO_BIG), 64 * MiB)
                self.hub = FakeHub(ctx)
                for name, size in PULLED_WEIGHTS.items():
                        make_repo(ctx, self.hub, name=name, size=size, extras=False)
                for name, fixture in PULLED_EMBEDDING.items():
                        shutil.copytree(embed_fixtures.model_directory(fixture), self.hub.repo(name),
                                        dirs_exist_ok=True)
                fixtures = embed_fixtures.load()
                self.texts = sorted({t for c in fixtures["cases"] if "error" not in c for t in c["texts"]})[:24]

        def start_daemon(self):
                ctx = self.ctx
                raw = (f"[Store]\nModelDir={ctx.store}\n\n"
                       f"[Pool]\nMemoryLimit={MEMORY_LIMIT}\nIdleTimeoutSec=5\nMaxConcurrentLoads=2\n"
                       f"MaxQueuedLoads=8\nMaxConcurrentDownloads=1\n\n"
                       f"[Workers]\nMaxWorkers=2\nMaxQueuedRequests=4\nCooldownSec=1\n\n"
                       f"[Hub]\nEndpoint={self.hub.endpoint}\n")
                self.d = ctx.daemon(config=ctx.write_config(raw=raw))
                self.py = PyClient(self.d.address)

        def pull_and_wait(self, name):
                count = len(self.ctx.monitor.signals("DownloadFinished", name))
                self.py.call("Pull", "sa{sv}", (name, dbus.Dictionary({}, signature="sv")))
                wait_until(lambda: len(self.ctx.monitor.signals("DownloadFinished", name)) > count,
                           f"DownloadFinished for {name}")
                result = self.ctx.monitor.signals("DownloadFinished", name)[count].args
                assert result[1] == "done", result

        def warm_up(self):
                """Every kind of call once, so that what the daemon allocates
                once (OpenBLAS, the tokenizers' tables, the download helper's
                first run, the peers' tables) is in the baseline; returns
                each weights model's memory when loaded."""
                py = self.py
                memory = {}
                for name in self.all_pulled():
                        self.pull_and_wait(name)
                # Remove and pull again, as the clients do.
                py.call("Remove", "sa{sv}", ("hub/p1", {"force": dbus.Boolean(True)}))
                self.pull_and_wait("hub/p1")
                for name in list(WEIGHTS) + list(PULLED_WEIGHTS):
                        py.load(name)
                        reply = py.bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager",
                                                     "OpenFiles", "s", (name,), timeout=CALL_TIMEOUT)
                        for _, fd in reply:
                                os.close(fd.take())
                        py.call("Release", "s", (name,))
                        py.call("Acquire", "s", (name,))
                        py.call("Release", "s", (name,))
                        memory[name] = py.status()[1][name]["memory_bytes"]
                        py.unload(name)
                for name in list(EMBEDDING) + list(PULLED_EMBEDDING):
                        for precision in ("f32", "q8"):
                                py.load(name, precision=precision)
                                # Two at once: both workers start.
                                callers = [PyClient(self.d.address) for _ in range(2)]
                                threads = [threading.Thread(target=embed_call, args=(c, name, self.texts))
                                           for c in callers]
                                for t in threads:
                                        t.start()
                                for t in threads:
                                        t.join(CALL_TIMEOUT)
                                for c in callers:
                                        c.close()
                                py.unload(name)
                py.status()
                py.call("Metrics")
                py.unload_all(force=True)
                self.wait_quiet(after_unload_all=True)
                return memory

        def all_pulled(self):
                return list(PULLED_WEIGHTS) + list(PULLED_EMBEDDING)

        # -- the clients --

        def write_plan(self, deadline):
                plan = {
                        "weights": list(WEIGHTS),
                        "embedding": list(EMBEDDING),
                        "pulled": self.all_pulled(),
                        "pulled_embedding": list(PULLED_EMBEDDING),
                        "too_big": TOO_BIG,
                        "texts": self.texts,
                        "deadline": deadline,
                        "call_timeout": CALL_TIMEOUT,
                }
                self.plan_path = os.path.join(self.ctx.dir, "plan.json")
                with open(self.plan_path, "w") as f:
                        json.dump(plan, f)

        def spawn(self, slot):
                n = self.incarnations.get(slot, 0)
                self.incarnations[slot] = n + 1
                seed = self.seed * 1000003 + slot * 1009 + n
                out = os.path.join(self.out_dir, f"client-{slot}-{n}.jsonl")
                script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stress_client.py")
                err = open(os.path.join(self.out_dir, f"client-{slot}-{n}.err"), "wb")
                self.procs[slot] = self.ctx.spawn(["/usr/bin/python3", script, self.d.address, self.plan_path,
                                                   out, str(seed)], stdin=subprocess.DEVNULL, stdout=err,
                                                  stderr=subprocess.STDOUT)
                err.close()

        def check_alive(self):
                if self.d.proc.poll() is not None:
                        raise AssertionError(f"mpoold exited with {self.d.proc.returncode} during the run "
                                             f"(seed {self.seed})")

        def run_clients(self):
                deadline = time.monotonic() + self.seconds
                checkpoint = time.monotonic() + self.seconds / 2
                self.write_plan(deadline)
                for slot in range(CLIENTS):
                        self.spawn(slot)
                # Kills at random moments, each client started again at once:
                # a call of its is nearly always under way.
                while True:
                        # Pacing of the kills, not a wait for anything.
                        pause = self.rng.uniform(0.1, 0.8)
                        if time.monotonic() + pause >= deadline:
                                break
                        time.sleep(pause)
                        self.check_alive()
                        if checkpoint and time.monotonic() >= checkpoint:
                                checkpoint = None
                                self.check_paused()
                        if self.rng.random() < 0.1:
                                # The configuration read again under load.
                                self.d.proc.send_signal(signal.SIGHUP)
                                self.reloads += 1
                        slot = self.rng.choice(KILLED_SLOTS)
                        proc = self.procs[slot]
                        if proc.poll() is None:
                                proc.send_signal(signal.SIGKILL)
                                proc.wait()
                                self.kills += 1
                        self.spawn(slot)
                # The others stop at the deadline, after the call they are in.
                end = deadline + CALL_TIMEOUT + 30
                for slot, proc in self.procs.items():
                        try:
                                proc.wait(timeout=max(1, end - time.monotonic()))
                        except subprocess.TimeoutExpired:
                                proc.kill()
                                proc.wait()
                                self.finished_late.append(slot)
                self.check_alive()

        def tally(self):
                """Counts by method and result; the problems found."""
                counts = {}
                problems = []
                for entry in sorted(os.listdir(self.out_dir)):
                        path = os.path.join(self.out_dir, entry)
                        if entry.endswith(".err"):
                                with open(path, errors="replace") as f:
                                        text = f.read().strip()
                                slot = int(entry.split("-")[1])
                                # A killed client may die writing; the others must
                                # have said nothing.
                                if text and slot not in KILLED_SLOTS:
                                        problems.append(f"{entry}: {text[-2000:]}")
                                continue
                        with open(path) as f:
                                lines = f.read().split("\n")
                        for line in lines:
                                if not line.strip():
                                        continue
                                try:
                                        call = json.loads(line)
                                except json.JSONDecodeError:
                                        continue   # the last line of a killed client
                                method, result = call["m"], call["r"]
                                by_result = counts.setdefault(method, {})
                                by_result[result] = by_result.get(result, 0) + 1
                                if result in ("ok", "abandoned"):
                                        continue
                                if result not in EXPECTED.get(method, set()):
                                        problems.append(f"{entry}: {method}: {result}: {call.get('e')}")
                for slot in self.finished_late:
                        problems.append(f"client in slot {slot} was still in a call {CALL_TIMEOUT + 30} s after "
                                        f"the end")
                return counts, problems

        # -- the state afterwards --

        def wait_quiet(self, after_unload_all=False):
                def quiet():
                        pool, models = self.py.status()
                        busy = {n: m["state"] for n, m in models.items() if m["state"] in TRANSIENT}
                        busy.update({n: f"{m['workers']} workers, {m['active_requests']} running, "
                                        f"{m['queued_requests']} queued"
                                     for n, m in models.items()
                                     if m["active_requests"] or m["queued_requests"] or
                                     (after_unload_all and m["workers"])})
                        self.last_busy = busy
                        return (pool, models) if not busy else None
                try:
                        return wait_until(quiet, "every model to settle", timeout=4 * DEADLINE, interval=0.1)
                except AssertionError:
                        raise AssertionError(f"still busy after {4 * DEADLINE:.0f} s: {self.last_busy}") from None

        def check_paused(self):
                """Halfway: every client stopped (SIGSTOP) where it is, the
                daemon left to finish what it was asked, then the checks of
                a settled pool while models are held (holds a client
                following the signals must see too)."""
                for proc in self.procs.values():
                        proc.send_signal(signal.SIGSTOP)
                try:
                        self.problems += self.check_settled("halfway, the clients stopped", clients_gone=False)
                finally:
                        for proc in self.procs.values():
                                proc.send_signal(signal.SIGCONT)

        def check_settled(self, when="settled", clients_gone=True):
                pool, models = self.wait_quiet()
                problems = self.follower.compare(when)
                memory = self.memory
                total = sum(m["memory_bytes"] for m in models.values())
                if pool["memory_used"] != total:
                        problems.append(f"memory_used {pool['memory_used']} != {total}, the sum over the models")
                for name, m in models.items():
                        if m["holds"] and clients_gone:
                                problems.append(f"{name}: {m['holds']} holds with every client gone")
                        if m["state"] == "error" and not refused_for_memory(m):
                                problems.append(f"{name}: in error: {m['error']}")
                        if m["state"] != "loaded" and m["memory_bytes"]:
                                problems.append(f"{name}: {m['state']} but holds {m['memory_bytes']} bytes")
                        if m["state"] == "loaded" and name in memory and m["memory_bytes"] != memory[name]:
                                problems.append(f"{name}: loaded with {m['memory_bytes']} bytes, "
                                                f"{memory[name]} after its warm-up load")
                return problems

        def check_unloaded(self):
                self.py.unload_all(force=True)
                pool, models = self.wait_quiet(after_unload_all=True)
                problems = self.follower.compare("after UnloadAll")
                if pool["memory_used"] or pool["models_loaded"]:
                        problems.append(f"after UnloadAll: memory_used {pool['memory_used']}, "
                                        f"models_loaded {pool['models_loaded']}")
                for name, m in models.items():
                        settled = m["state"] == "available" or (m["state"] == "error" and refused_for_memory(m))
                        if not settled or m["memory_bytes"] or m["holds"] or m["workers"]:
                                problems.append(f"after UnloadAll: {name}: {m}")
                metrics = self.py.call("Metrics")
                for name, m in metrics["models"].items():
                        if m["holds"] or m["workers"] or m["active_requests"] or m["queued_requests"]:
                                problems.append(f"after UnloadAll, Metrics: {name}: {m}")
                return problems


def test_stress_32_clients(ctx):
        seconds = float(os.environ.get("STRESS_SECONDS") or DEFAULT_SECONDS)
        seed = int(os.environ.get("STRESS_SEED") or random.SystemRandom().randrange(1 << 32))
        say(f"seed={seed} seconds={seconds:g} clients={CLIENTS} (replay: STRESS_SEED={seed})")

        run = Run(ctx, seconds, seed)
        run.make_models()
        run.start_daemon()
        run.memory = run.warm_up()
        # Downloads that take a while (a fraction of a second), so that
        # loads, removals and cancellations meet them under way.
        run.hub.control(slow={"chunk": 128 * 1024, "delay": 0.02})
        baseline = run.d.rss()
        baseline_fds, baseline_threads = fds_and_threads(run.d.pid)
        run.follower = SignalFollower(ctx, run.py)

        started = time.monotonic()
        run.run_clients()
        elapsed = time.monotonic() - started
        counts, problems = run.tally()
        problems += run.problems
        calls = sum(sum(by.values()) for by in counts.values())
        say(f"{calls} calls in {elapsed:.1f} s, {run.kills} clients killed, "
            f"{run.reloads} reloads (SIGHUP), "
            f"{sum(run.incarnations.values())} started")
        for method in sorted(counts):
                results = ", ".join(f"{r.replace(ORG, '').replace(FDO, 'DBus.')}={n}"
                                    for r, n in sorted(counts[method].items(), key=lambda kv: -kv[1]))
                say(f"  {method}: {results}")

        problems += run.check_settled()
        problems += run.check_unloaded()
        # A Pull or Inspect of a model the daemon already knows changes no
        # state the settled checks see, and may still be finishing: its
        # helper's pipes close when it ends. So the descriptors and threads
        # get the deadline to come back; a leak never does.
        deadline = time.monotonic() + DEADLINE
        while True:
                fds, threads = fds_and_threads(run.d.pid)
                if (fds, threads) == (baseline_fds, baseline_threads) or time.monotonic() >= deadline:
                        break
                time.sleep(0.1)
        say(f"descriptors {baseline_fds} -> {fds}, threads {baseline_threads} -> {threads}")
        if fds != baseline_fds or threads != baseline_threads:
                problems.append(f"after UnloadAll: {fds} descriptors and {threads} threads, "
                                f"{baseline_fds} and {baseline_threads} after the warm-up")
        rss = run.d.rss()
        growth = rss - baseline
        if uses_asan(run.d.pid):
                say(f"RSS {baseline / MiB:.1f} -> {rss / MiB:.1f} MiB (not checked: AddressSanitizer's quarantine)")
        elif harness.VALGRIND:
                say(f"RSS {baseline / MiB:.1f} -> {rss / MiB:.1f} MiB (not checked: valgrind's own memory; "
                    "its leak check counts instead)")
        else:
                say(f"RSS {baseline / MiB:.1f} -> {rss / MiB:.1f} MiB ({growth / MiB:+.2f} MiB, "
                    f"at most {RSS_GROWTH_MAX / MiB:.0f})")
                if growth > RSS_GROWTH_MAX:
                        problems.append(f"RSS grew by {growth / MiB:.2f} MiB over the run, "
                                        f"more than {RSS_GROWTH_MAX / MiB:.0f} MiB")
        run.py.status()
        run.check_alive()
        run.py.close()
        assert not problems, f"seed {seed}: {len(problems)} problems:\n" + "\n".join(problems[:50])
