#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""One client of the stress run (tests_stress.py): a process of its own with
its own bus connection, making random calls until a deadline.

    stress_client.py ADDRESS PLAN_JSON OUT_FILE SEED

PLAN_JSON names the models (weights, embedding, pulled, too big), the texts
for Embed, the deadline (CLOCK_MONOTONIC seconds, which every process shares)
and the call timeout. Every call that returns is written to OUT_FILE as one
JSON line as soon as it returns, so that a client killed mid-call loses
nothing but that call: {"m": METHOD, "r": "ok" or the D-Bus error name,
"e": the error's message (errors only), "t": seconds it took}. A call
abandoned on purpose (sent, then the connection closed before its reply) is
{"m": METHOD, "r": "abandoned"}. Checks that a reply is well formed (the
number and size of Embed's vectors, OpenFiles' descriptors, Status'
memory_used being the sum over the models) are written as {"m": METHOD,
"r": "bad-reply", "e": why}; the parent fails on those."""

import json
import os
import random
import sys
import time

import dbus

BUS_NAME = "org.mpool.Manager"
PATH = "/org/mpool/Manager"
IFACE = "org.mpool.Manager"


class Client:
        def __init__(self, address, plan, out, rng):
                self.address = address
                self.plan = plan
                self.out = out
                self.rng = rng
                self.bus = dbus.bus.BusConnection(address)
                self.held = []
                self.timeout = plan["call_timeout"]
                # Metrics' counters, as last seen: they never go down.
                self.counters = {}

        def record(self, method, result, message=None, took=None):
                entry = {"m": method, "r": result}
                if message is not None:
                        entry["e"] = message
                if took is not None:
                        entry["t"] = round(took, 3)
                self.out.write(json.dumps(entry) + "\n")
                self.out.flush()

        def call(self, method, sig, args, check=None, iface=IFACE, record_as=None):
                """The call, recorded; returns the reply or None on an error."""
                started = time.monotonic()
                method_name, method = method, record_as or method
                try:
                        reply = self.bus.call_blocking(BUS_NAME, PATH, iface, method_name, sig, args,
                                                       timeout=self.timeout)
                except dbus.exceptions.DBusException as e:
                        self.record(method, e.get_dbus_name() or "unnamed", e.get_dbus_message() or "",
                                    time.monotonic() - started)
                        return None
                took = time.monotonic() - started
                problem = check(reply) if check else None
                if problem:
                        self.record(method, "bad-reply", problem, took)
                else:
                        self.record(method, "ok", None, took)
                return reply

        def reconnect(self):
                self.bus.close()
                self.bus = dbus.bus.BusConnection(self.address)
                # The holds went with the old connection.
                self.held = []

        # -- what a model is picked from --

        def any_model(self):
                p = self.plan
                pools = [p["weights"]] * 5 + [p["embedding"]] * 3 + [p["pulled"]] * 2 + [[p["too_big"]]]
                return self.rng.choice(self.rng.choice(pools))

        def embedding_model(self):
                p = self.plan
                # Now and then one that cannot be run, for NotSupported.
                if self.rng.random() < 0.1:
                        return self.rng.choice(p["weights"])
                return self.rng.choice(p["embedding"] + p["pulled_embedding"])

        def load_options(self, name):
                options = {}
                if self.rng.random() < 0.3:
                        options["keep_alive_sec"] = dbus.Int64(self.rng.choice([1, 2, 3, -1]))
                if name in self.plan["embedding"] + self.plan["pulled_embedding"] and self.rng.random() < 0.4:
                        options["precision"] = dbus.String(self.rng.choice(["f32", "f16", "q8", "q4"]))
                if self.rng.random() < 0.05:
                        options["pin"] = dbus.Boolean(True)
                if name in self.plan["embedding"] and self.rng.random() < 0.2:
                        options["max_workers"] = dbus.UInt32(self.rng.choice([1, 2]))
                return dbus.Dictionary(options, signature="sv")

        # -- the calls --

        def do_load(self):
                name = self.any_model()
                self.call("Load", "sa{sv}", (name, self.load_options(name)))

        def do_unload(self):
                force = self.rng.random() < 0.3
                self.call("Unload", "sa{sv}", (self.any_model(), {"force": dbus.Boolean(force)}))

        def do_unload_all(self):
                force = self.rng.random() < 0.3
                self.call("UnloadAll", "a{sv}", ({"force": dbus.Boolean(force)},))

        def do_acquire(self):
                name = self.any_model()
                if self.call("Acquire", "s", (name,)) is not None:
                        self.held.append(name)

        def do_release(self):
                if self.held and self.rng.random() < 0.9:
                        name = self.held.pop(self.rng.randrange(len(self.held)))
                else:
                        # Nothing held there, or maybe there is: NotHeld or ok.
                        name = self.any_model()
                        if name in self.held:
                                self.held.remove(name)
                self.call("Release", "s", (name,))

        def do_status(self):
                def check(reply):
                        pool, models = reply
                        total = sum(int(m["memory_bytes"]) for m in models)
                        if int(pool["memory_used"]) != total:
                                return f"memory_used {int(pool['memory_used'])} != sum over models {total}"
                        loaded = sum(1 for m in models if str(m["state"]) == "loaded")
                        if int(pool["models_loaded"]) != loaded:
                                return f"models_loaded {int(pool['models_loaded'])} != {loaded} in state loaded"
                        for m in models:
                                if str(m["state"]) in ("available", "error", "downloading") and int(m["memory_bytes"]):
                                        return f"{m['name']} {m['state']} with memory_bytes {int(m['memory_bytes'])}"
                        return None
                self.call("Status", "", (), check)

        def do_metrics(self):
                def check(reply):
                        counters = {str(k): int(v) for k, v in reply.items()
                                    if str(k).endswith(("_total", "_count", "_sum_usec"))
                                    and not isinstance(v, dbus.Dictionary)}
                        counters.update({f"unloads_total/{k}": int(v) for k, v in reply["unloads_total"].items()})
                        went_down = [f"{k} {self.counters[k]} -> {v}" for k, v in counters.items()
                                     if v < self.counters.get(k, 0)]
                        self.counters = counters
                        return "counters went down: " + ", ".join(went_down) if went_down else None
                self.call("Metrics", "", (), check)

        def do_embed(self):
                name = self.embedding_model()
                texts = self.rng.sample(self.plan["texts"], self.rng.randint(1, 4))

                def check(reply):
                        if len(reply) != len(texts):
                                return f"{len(reply)} vectors for {len(texts)} texts"
                        sizes = {len(v) for v in reply}
                        if len(sizes) != 1 or not sizes.pop():
                                return "vectors of unequal or no length"
                        return None
                self.call("Embed", "sasa{sv}", (name, dbus.Array(texts, signature="s"),
                                               dbus.Dictionary({}, signature="sv")), check)

        def do_open_files(self):
                name = self.any_model()
                fds = []

                def check(reply):
                        if not reply:
                                return "no files"
                        for _, fd in reply:
                                fds.append(fd.take())
                        for fd in fds:
                                if os.fstat(fd).st_size <= 8:
                                        return "a descriptor of an empty file"
                        return None
                reply = self.call("OpenFiles", "s", (name,), check)
                for fd in fds:
                        os.close(fd)
                if reply is not None:
                        self.held.append(name)

        def do_pull(self):
                repo = self.rng.choice(self.plan["pulled"])
                self.call("Pull", "sa{sv}", (repo, dbus.Dictionary({}, signature="sv")))

        def do_inspect(self):
                repo = self.rng.choice(self.plan["pulled"])
                self.call("Inspect", "sa{sv}", (repo, dbus.Dictionary({}, signature="sv")))

        def do_remove(self):
                # Only what was pulled: the rest of the store stays as it is.
                repo = self.rng.choice(self.plan["pulled"])
                self.call("Remove", "sa{sv}", (repo, {"force": dbus.Boolean(True)}))

        def do_cancel(self):
                self.call("Cancel", "s", (self.rng.choice(self.plan["pulled"] + self.plan["weights"]),))

        def do_set_memory_limit(self):
                """The limit moved under the loads: evictions for it, and
                refusals when pinned models hold more."""
                limit = self.rng.choice([8, 12, 16]) * 1024 * 1024
                self.call("Set", "ssv", (IFACE, "MemoryLimit", dbus.UInt64(limit, variant_level=1)),
                          iface="org.freedesktop.DBus.Properties", record_as="SetMemoryLimit")

        def do_abandon(self):
                """A call sent, then the connection closed before the reply:
                the daemon sees the call, then the caller gone."""
                method, sig, args = self.rng.choice([
                        ("Load", "sa{sv}", lambda: (self.any_model(), dbus.Dictionary({}, signature="sv"))),
                        ("Acquire", "s", lambda: (self.any_model(),)),
                        ("OpenFiles", "s", lambda: (self.any_model(),)),
                        ("Embed", "sasa{sv}", lambda: (self.embedding_model(),
                                                       dbus.Array(self.plan["texts"][:8], signature="s"),
                                                       dbus.Dictionary({}, signature="sv"))),
                        ("Pull", "sa{sv}", lambda: (self.rng.choice(self.plan["pulled"]),
                                                    dbus.Dictionary({}, signature="sv"))),
                        ("UnloadAll", "a{sv}", lambda: (dbus.Dictionary({}, signature="sv"),)),
                        ("Inspect", "sa{sv}", lambda: (self.rng.choice(self.plan["pulled"]),
                                                       dbus.Dictionary({}, signature="sv"))),
                ])
                msg = dbus.lowlevel.MethodCallMessage(BUS_NAME, PATH, IFACE, method)
                msg.append(*args(), signature=sig)
                self.bus.send_message(msg)
                self.bus.flush()
                self.record(method, "abandoned")
                self.reconnect()

        OPS = [("load", 14), ("unload", 5), ("unload_all", 1), ("acquire", 8), ("release", 8), ("status", 10),
               ("metrics", 2), ("embed", 14), ("open_files", 6), ("pull", 3), ("inspect", 1), ("remove", 1), ("cancel", 1),
               ("set_memory_limit", 1),
               ("abandon", 3)]

        def run(self, deadline):
                names = [n for n, _ in self.OPS]
                weights = [w for _, w in self.OPS]
                while time.monotonic() < deadline:
                        op = self.rng.choices(names, weights)[0]
                        getattr(self, "do_" + op)()
                # Half leave holding what they hold: the bus tells the daemon.
                if self.rng.random() < 0.5:
                        for name in self.held:
                                self.call("Release", "s", (name,))
                self.bus.close()


def main():
        address, plan_json, out_path, seed = sys.argv[1:5]
        with open(plan_json) as f:
                plan = json.load(f)
        rng = random.Random(int(seed))
        with open(out_path, "a") as out:
                Client(address, plan, out, rng).run(plan["deadline"])
        return 0


if __name__ == "__main__":
        sys.exit(main())
