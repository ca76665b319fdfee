#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The client side of idle-precision.sh (Debian's python3 and python3-gi):

  idle-precision.py ADDRESS MODELS ROUNDS

Per round: Load of the models mNN (NN < MODELS) at random instants over the
first second, each with keep_alive_sec 1, 2 or 3; every third model is then
held (Acquire) and let go (Release) a little later, so that its idle time
starts at the Release. Every message is timed as GDBus's worker thread
writes or reads it, whatever the main loop is doing.

The daemon's expiry is the model's last use plus its keep-alive, the last
use being the instant it serves the Load or the Release. The client bounds
it: no earlier than the sending of that call + keep-alive, no later than
the arrival of its reply + keep-alive. After each, Status gives the expiry
the daemon states (expires_at_usec, CLOCK_REALTIME as the daemon's start
plus monotonic time since, brought back to CLOCK_MONOTONIC with our own
offset); when it lies within the client's bounds, lateness is the arrival
of ModelUnloaded minus it, and early means before it. Otherwise the
client's bounds alone count, both ways against the daemon: lateness from
the earliest, early if before the latest. (The bounds alone are as wide as
a round trip, which on a loaded 2-core machine can take tens of
milliseconds.) Prints one line of JSON."""

import json
import random
import sys
import time

from gi.repository import Gio, GLib

NAME, PATH, IFACE = "org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager"


def now_us():
    return time.monotonic_ns() // 1000


class Clock:
    """Times messages as GDBus's worker thread sends and receives them, so
    that what the main loop is busy with does not count."""

    def __init__(self, conn):
        self.sent, self.replied, self.unloaded = {}, {}, {}
        self.conn = conn
        self.id = conn.add_filter(self.filter, None)
        # CLOCK_REALTIME - CLOCK_MONOTONIC, from the closest pair of reads:
        # the daemon's realtime figures use the same offset, clock steps aside.
        best = None
        for _ in range(50):
            a, real, b = time.monotonic_ns(), time.time_ns(), time.monotonic_ns()
            if best is None or b - a < best[0]:
                best = (b - a, (real - (a + b) // 2) // 1000)
        self.offset = best[1]

    def close(self):
        # Before Python goes: GDBus's thread would call into it while it does.
        self.conn.remove_filter(self.id)
        self.conn.close_sync(None)

    def filter(self, conn, message, incoming, _):
        t = now_us()
        kind = message.get_message_type()
        if not incoming and kind == Gio.DBusMessageType.METHOD_CALL:
            self.sent[message.get_serial()] = t
        elif incoming and kind in (Gio.DBusMessageType.METHOD_RETURN, Gio.DBusMessageType.ERROR):
            self.replied[message.get_reply_serial()] = t
        elif incoming and kind == Gio.DBusMessageType.SIGNAL and message.get_member() == "ModelUnloaded":
            self.unloaded.setdefault(message.get_body()[0], t)
        return message


class Round:
    def __init__(self, conn, clock, models, rng, loop):
        self.conn, self.clock, self.loop = conn, clock, loop
        self.pending = set()
        self.failed = []
        self.rows = {}
        for i in range(models):
            name = "m%02d" % i
            self.rows[name] = dict(name=name, keep=1 + rng.randrange(3), hold=i % 3 == 2,
                                   start_ms=rng.randrange(1000), hold_ms=200 + rng.randrange(300),
                                   release_ms=100 + rng.randrange(300))
        self.sub = conn.signal_subscribe(NAME, IFACE, "ModelUnloaded", PATH, None, Gio.DBusSignalFlags.NONE,
                                         self.on_unloaded, None)
        clock.unloaded.clear()

    def call(self, method, params, done):
        message = Gio.DBusMessage.new_method_call(NAME, PATH, IFACE, method)
        if params is not None:
            message.set_body(params)
        self.conn.send_message_with_reply(message, Gio.DBusSendMessageFlags.NONE, 30000, None,
                                          lambda c, res, _: self.on_reply(c, res, method, done), None)

    def on_reply(self, conn, res, method, done):
        try:
            reply = conn.send_message_with_reply_finish(res)
            reply.to_gerror()
        except GLib.Error as e:
            self.failed.append("%s: %s" % (method, e.message))
            self.loop.quit()
            return
        serial = reply.get_reply_serial()
        done(self.clock.sent.pop(serial), self.clock.replied.pop(serial), reply.get_body())

    def start(self):
        for row in self.rows.values():
            self.pending.add(row["name"])
            GLib.timeout_add(row["start_ms"], self.load, row)

    def load(self, row):
        opts = {"keep_alive_sec": GLib.Variant("x", row["keep"])}
        self.call("Load", GLib.Variant("(sa{sv})", (row["name"], opts)), lambda s, a, _: self.idle_from(row, s, a))
        return False

    def idle_from(self, row, sent, arrived):
        row["earliest"] = sent + row["keep"] * 1000000
        row["latest"] = arrived + row["keep"] * 1000000
        if row["hold"] and "held" not in row:
            row["held"] = True
            GLib.timeout_add(row["hold_ms"], self.acquire, row)
        else:
            # What the daemon says; it does not count as a use.
            self.call("Status", None, lambda s, a, reply: self.stated(row, reply))

    def acquire(self, row):
        self.call("Acquire", GLib.Variant("(s)", (row["name"],)),
                  lambda s, a, _: GLib.timeout_add(row["release_ms"], self.release, row))
        return False

    def release(self, row):
        self.call("Release", GLib.Variant("(s)", (row["name"],)), lambda s, a, _: self.idle_from(row, s, a))
        return False

    def stated(self, row, reply):
        for model in reply.unpack()[1]:
            if model["name"] == row["name"] and model.get("expires_at_usec"):
                row["stated"] = model["expires_at_usec"] - self.clock.offset

    def on_unloaded(self, conn, sender, path, iface, signal, params, _):
        name, reason = params.unpack()
        arrived = self.clock.unloaded.pop(name, None) or now_us()
        row = self.rows.get(name)
        if not row or name not in self.pending:
            return
        row["unloaded"], row["reason"] = arrived, reason
        self.pending.discard(name)
        if not self.pending:
            self.loop.quit()

    def finish(self):
        self.conn.signal_unsubscribe(self.sub)
        return list(self.rows.values())


def main():
    address, models, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conn = Gio.DBusConnection.new_for_address_sync(
        address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
        None, None)
    clock = Clock(conn)
    rng = random.Random(10)
    rows, failures, summaries = [], [], []
    for r in range(rounds):
        loop = GLib.MainLoop()
        rnd = Round(conn, clock, models, rng, loop)
        rnd.start()
        GLib.timeout_add(15000, loop.quit)
        loop.run()
        got = rnd.finish()
        failures += rnd.failed
        missing = [row["name"] for row in got if "unloaded" not in row]
        if missing:
            failures.append("round %d: no ModelUnloaded within 15 s for %s" % (r + 1, " ".join(missing)))
        late = [judge(row)[0] for row in got if "unloaded" in row and "latest" in row]
        if late:
            summaries.append("round %d: %d models (%d held and released): lateness min %.1f ms, max %.1f ms"
                             % (r + 1, len(got), sum(row["hold"] for row in got), min(late), max(late)))
        for row in got:
            row["round"] = r + 1
        rows += got
    clock.close()
    done = [row for row in rows if "unloaded" in row and "latest" in row]
    judged = [judge(row) for row in done]
    late = [j[0] for j in judged]
    from_reply = [(row["unloaded"] - row["latest"]) / 1000 for row in done]
    from_call = [(row["unloaded"] - row["earliest"]) / 1000 for row in done]
    print(json.dumps(dict(
        models=len(rows), measured=len(done), failures=failures, rounds=summaries,
        not_idle=sorted({row["reason"] for row in done if row["reason"] != "idle"}),
        stated=sum(1 for j in judged if j[2]), outside=[row["name"] for row in done if row.get("outside")],
        max_late_ms=max(late, default=0), min_late_ms=min(late, default=0),
        median_late_ms=sorted(late)[len(late) // 2] if late else 0,
        early=sum(1 for j in judged if j[1]),
        reply_min_ms=min(from_reply, default=0), reply_max_ms=max(from_reply, default=0),
        before_reply=sum(1 for x in from_reply if x < 0),
        call_max_ms=max(from_call, default=0), before_call=sum(1 for x in from_call if x < 0),
        span_max_ms=max(((row["latest"] - row["earliest"]) / 1000 for row in done), default=0))))


def judge(row):
    """(lateness in ms, early, whether the daemon's stated expiry counted)"""
    stated = row.get("stated")
    if stated is not None and row["earliest"] <= stated <= row["latest"]:
        return (row["unloaded"] - stated) / 1000, row["unloaded"] < stated, True
    row["outside"] = stated is not None
    return (row["unloaded"] - row["earliest"]) / 1000, row["unloaded"] < row["latest"], False

if __name__ == "__main__":
    main()
