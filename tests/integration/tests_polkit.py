# SPDX-License-Identifier: MIT
"""Authorization with Debian's real polkitd on the private bus.

mpoold runs as the service user (harness.SERVICE_USER), as the shipped unit
runs it, so polkit sees the caller it sees when installed. Root is always
authorized by polkit. The unprivileged caller is the user
nobody (uid 65534) in a process of its own (setpriv), with no login session,
for whom polkit answers both actions with "authentication required": without
the allow-interactive-authorization flag the daemon refuses with
InteractiveAuthorizationRequired, with it (and no authentication agent on the
bus) polkit denies and the daemon says AccessDenied. One test-only polkit rule
(harness.Polkitd) allows nobody org.mpool.load on a single, made-up model
name, so the second check of a call (org.mpool.configure for pin and force)
is reached by a caller that passed the first.

A refused call must change nothing: the fields Status and the properties show
are compared before and after, and the daemon must have emitted no signal in
between (the monitor's sync()).

polkitd is started once per run, the first time a test asks for a daemon with
polkit=True; if it is not installed these tests fail, never skip: CI must not
pass without them."""

import json
import os
import pwd
import queue
import re
import subprocess
import threading
from xml.etree import ElementTree

import dbus

from harness import (BUS_NAME, CALL_TIMEOUT, DEADLINE, ERROR_INVALID_ARGS, ERROR_MODEL_PINNED, MANAGER_IFACE,
                     MANAGER_PATH, MODEL_IFACE, MiB, Monitor, NOBODY_UID, OBJECT_MANAGER_IFACE, PROPERTIES_IFACE,
                     SERVICE_USER, SYNC_IFACE, expect_dbus_error, model_path, now_usec, plain,
                     process_uids, to_busctl_args, wait_until)

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
INTERACTIVE_REQUIRED = "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
ERROR_NOT_HELD = "org.mpool.Error.NotHeld"
ERROR_LIMITS_EXCEEDED = "org.mpool.Error.LimitsExceeded"
INTROSPECTABLE_IFACE = "org.freedesktop.DBus.Introspectable"
PEER_IFACE = "org.freedesktop.DBus.Peer"

ACTION_LOAD = "org.mpool.load"
ACTION_CONFIGURE = "org.mpool.configure"


def polkit_calls_per_peer_max(source_root):
        """POLKIT_CALLS_PER_PEER_MAX from the checkout's daemon/polkit.h."""
        header = os.path.join(source_root, "daemon", "polkit.h")
        with open(header) as f:
                match = re.search(r"^#define POLKIT_CALLS_PER_PEER_MAX (\d+)U?$", f.read(), re.MULTILINE)
        assert match, f"no POLKIT_CALLS_PER_PEER_MAX in {header}"
        return int(match.group(1))


# busctl prints only an error's message, and systemd's bus_error_message()
# replaces the message of every org.freedesktop.DBus.Error.AccessDenied with
# exactly this, so it identifies that error name.
BUSCTL_ACCESS_DENIED = "Access denied"

NOBODY_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", "LC_ALL": "C.UTF-8"}

# The unprivileged client, run as nobody. Reads one JSON request a line on
# stdin, answers with JSON lines on stdout; prints its unique name first.
#   {"op": "call", "call": CALL}        -> {"ok": true, "value": [...]} or
#                                          {"ok": false, "error": NAME, "message": M}
#   {"op": "send", "call": CALL}        -> sends without waiting: {"sent": true}
#   {"op": "start", "calls": [...]}     -> sends them all at once on this
#                                          connection: {"started": N}; the
#                                          calls are numbered on from 0 over
#                                          all "start"s
#   {"op": "wait", "indices": [...]}    -> waits for those calls' replies:
#                                          {"results": [RESULT, ...]}
# CALL: dest, path, iface, member, sigs (one complete type per argument),
# args (a variant as [signature, value]), interactive (the
# allow-interactive-authorization flag).
NOBODY_CLIENT = r'''
import json, sys
import dbus, dbus.lowlevel

TYPES = {"s": dbus.String, "b": dbus.Boolean, "t": dbus.UInt64, "x": dbus.Int64, "u": dbus.UInt32,
         "i": dbus.Int32, "o": dbus.ObjectPath}

def typed(sig, value):
    if sig == "v":
        inner, v = value
        return typed(inner, v)
    if sig.startswith("a{"):
        return dbus.Dictionary({typed(sig[2], k): typed(sig[3:-1], v) for k, v in value.items()},
                               signature=sig[2:-1])
    if sig.startswith("a"):
        return dbus.Array([typed(sig[1:], v) for v in value], signature=sig[1:])
    return TYPES[sig](value)

def plain(v):
    if isinstance(v, dbus.Boolean):
        return bool(v)
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (int, float)):
        return v + 0
    return str(v)

bus = dbus.bus.BusConnection(sys.argv[1])

def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def message(call):
    msg = dbus.lowlevel.MethodCallMessage(call["dest"], call["path"], call["iface"], call["member"])
    msg.set_allow_interactive_authorization(call["interactive"])
    for sig, arg in zip(call["sigs"], call["args"]):
        msg.append(typed(sig, arg), signature=sig)
    return msg

def invoke(call):
    try:
        reply = bus.send_message_with_reply_and_block(message(call), 120000)
        return {"ok": True, "value": plain(reply.get_args_list())}
    except dbus.exceptions.DBusException as e:
        return {"ok": False, "error": e.get_dbus_name(), "message": e.get_dbus_message() or ""}

# Started calls: [PendingCall, result or None]. Without a main loop a reply
# is handled when its PendingCall is blocked on.
started = []

def started_call(call):
    entry = [None, None]

    def on_reply(reply):
        if reply.get_type() == 3:   # an error
            args = reply.get_args_list()
            entry[1] = {"ok": False, "error": reply.get_error_name(), "message": str(args[0]) if args else ""}
        else:
            entry[1] = {"ok": True, "value": plain(reply.get_args_list())}
    entry[0] = bus.send_message_with_reply(message(call), on_reply, 120)
    return entry

emit({"unique_name": bus.get_unique_name()})
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "call":
        emit(invoke(request["call"]))
    elif request["op"] == "send":
        bus.send_message(message(request["call"]))
        bus.flush()
        emit({"sent": True})
    elif request["op"] == "start":
        started += [started_call(c) for c in request["calls"]]
        bus.flush()
        emit({"started": len(request["calls"])})
    elif request["op"] == "wait":
        for i in request["indices"]:
            started[i][0].block()
        emit({"results": [started[i][1] for i in request["indices"]]})
'''


def call_spec(member, sigs=(), args=(), path=MANAGER_PATH, iface=MANAGER_IFACE, dest=BUS_NAME):
        return {"dest": dest, "path": path, "iface": iface, "member": member, "sigs": list(sigs), "args": list(args)}


def load_call(name, **options):
        return call_spec("Load", ["s", "a{sv}"], [name, variant_options(options)])


def unload_call(name, **options):
        return call_spec("Unload", ["s", "a{sv}"], [name, variant_options(options)])


def unload_all_call(**options):
        return call_spec("UnloadAll", ["a{sv}"], [variant_options(options)])


def acquire_call(name):
        return call_spec("Acquire", ["s"], [name])


def set_call(prop, sig, value):
        return call_spec("Set", ["s", "s", "v"], [MANAGER_IFACE, prop, [sig, value]], iface=PROPERTIES_IFACE)


def variant_options(options):
        sigs = {bool: "b", int: "x", str: "s"}
        return {k: [sigs[type(v)], v] for k, v in options.items()}


def typed(sig, value):
        """A call_spec argument as a python-dbus value."""
        if sig == "v":
                inner, v = value
                return typed(inner, v)
        if sig.startswith("a{"):
                return dbus.Dictionary({typed(sig[2], k): typed(sig[3:-1], v) for k, v in value.items()},
                                       signature=sig[2:-1])
        if sig.startswith("a"):
                return dbus.Array([typed(sig[1:], v) for v in value], signature=sig[1:])
        return {"s": dbus.String, "b": dbus.Boolean, "t": dbus.UInt64, "x": dbus.Int64, "u": dbus.UInt32,
                "i": dbus.Int32, "o": dbus.ObjectPath}[sig](value)


def root_call(d, call):
        """The call as root through python-dbus (no interactive flag: root needs none)."""
        reply = d.py.bus.call_blocking(call["dest"], call["path"], call["iface"], call["member"],
                                       "".join(call["sigs"]),
                                       tuple(typed(s, a) for s, a in zip(call["sigs"], call["args"])),
                                       timeout=CALL_TIMEOUT)
        return plain(reply)


def setpriv_nobody():
        return ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--clear-groups"]


class NobodyClient:
        """NOBODY_CLIENT as a child of the test (killed at teardown)."""

        def __init__(self, ctx):
                self.proc = ctx.spawn(setpriv_nobody() + ["/usr/bin/python3", "-s", "-E", "-c", NOBODY_CLIENT,
                                                          ctx.suite.address],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
                                      env=NOBODY_ENV)
                self.lines = queue.Queue()
                threading.Thread(target=self._reader, daemon=True).start()
                first = self.read()
                self.unique_name = first["unique_name"]

        def _reader(self):
                for line in self.proc.stdout:
                        self.lines.put(line)
                self.lines.put(None)

        def read(self, timeout=CALL_TIMEOUT + 30):
                try:
                        line = self.lines.get(timeout=timeout)
                except queue.Empty:
                        raise AssertionError(f"the client running as nobody gave no answer within "
                                             f"{timeout:.0f} s") from None
                assert line is not None, f"the client running as nobody exited ({self.proc.poll()})"
                return json.loads(line)

        def request(self, **request):
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()

        def call(self, call, interactive=False):
                self.request(op="call", call=dict(call, interactive=interactive))
                return self.read()

        def send(self, call, interactive=False):
                self.request(op="send", call=dict(call, interactive=interactive))
                assert self.read() == {"sent": True}

        def start(self, calls, interactive=False):
                """Sends the calls at once; wait() collects their replies."""
                self.request(op="start", calls=[dict(c, interactive=interactive) for c in calls])
                assert self.read() == {"started": len(calls)}

        def wait(self, indices):
                self.request(op="wait", indices=list(indices))
                return self.read()["results"]

        def kill(self):
                self.proc.kill()
                self.proc.wait(timeout=DEADLINE)


def nobody_busctl(ctx, call, interactive=True):
        """busctl call as nobody; busctl allows interactive authorization by
        default. Returns (returncode, stdout, stderr)."""
        argv = []
        for s, a in zip(call["sigs"], call["args"]):
                argv += to_busctl_args(s, a)
        cmd = setpriv_nobody() + ["busctl", f"--address={ctx.suite.address}", "--json=short",
                                  f"--timeout={int(CALL_TIMEOUT)}"]
        if not interactive:
                cmd.append("--allow-interactive-authorization=no")
        cmd += ["call", "--", call["dest"], call["path"], call["iface"], call["member"]]
        if call["sigs"]:
                cmd += ["".join(call["sigs"])] + argv
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=CALL_TIMEOUT + 30, cwd="/", env=NOBODY_ENV)
        return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def assert_error(result, name, what, action=None):
        assert not result["ok"], f"{what}: expected {name}, but the call succeeded with {result['value']!r}"
        assert result["error"] == name, f"{what}: expected {name}, got {result['error']}: {result['message']}"
        if action is not None:
                assert f"polkit action {action})" in result["message"] or f"polkit action {action};" in \
                        result["message"], f"{what}: the refusal does not name {action}: {result['message']!r}"


def assert_ok(result, what):
        assert result["ok"], f"{what}: failed with {result.get('error')}: {result.get('message')}"
        return result["value"]


# ---------------------------------------------------------------------------
# "Nothing changed".

def snapshot(d):
        """What a refused call must not change: the pool's and every model's
        state as Status and the properties show them."""
        pool, models = d.status()
        props = root_call(d, call_spec("GetAll", ["s"], [MANAGER_IFACE], iface=PROPERTIES_IFACE))
        return {
                "pool": {k: pool[k] for k in ("memory_limit", "memory_used", "models_loaded", "idle_timeout_sec")},
                "properties": {"MemoryLimit": props["MemoryLimit"], "IdleTimeoutSec": props["IdleTimeoutSec"],
                               "MemoryUsed": props["MemoryUsed"], "LoadedModels": sorted(props["LoadedModels"])},
                "models": {name: {k: m[k] for k in ("state", "memory_bytes", "pinned", "holds", "requests_total",
                                                    "last_used_usec", "expires_at_usec", "error")}
                           for name, m in models.items()},
        }


def signal_mark(ctx):
        ctx.sync()
        return len(ctx.monitor.signals(iface=None))


def daemon_signals_since(ctx, mark):
        """Signals the daemon emitted since mark, once every signal it sent
        before its last reply to us has been read. A change of MemoryTotal
        alone (the host's memory or cgroup) is not caused by a call."""
        ctx.sync()
        return [s for s in ctx.monitor.signals(iface=None)[mark:]
                if s.interface != SYNC_IFACE
                and not (s.member == "PropertiesChanged" and set(s.args[1]) <= {"MemoryTotal"} and not s.args[2])]


def assert_unchanged(ctx, d, before, mark, what):
        after = snapshot(d)
        assert after == before, f"{what} changed the pool:\nbefore {before}\nafter  {after}"
        emitted = daemon_signals_since(ctx, mark)
        assert not emitted, f"{what}: the daemon emitted {emitted}"


def properties_changed(ctx, prop):
        """Values of prop in the manager's PropertiesChanged signals so far."""
        return [s.args[1][prop] for s in ctx.monitor.signals("PropertiesChanged", iface=PROPERTIES_IFACE)
                if s.path == MANAGER_PATH and s.args[0] == MANAGER_IFACE and prop in s.args[1]]


# ---------------------------------------------------------------------------
# Privileged calls: nobody is refused in every way and nothing changes; then
# root does the same and it happens.

def check_privileged(ctx, call, action, setup=None, verify=None):
        ctx.model("alpha", size="4M")
        ctx.model("beta", size="4M")
        d = ctx.daemon(polkit=True)
        if setup:
                setup(d)
        nobody = NobodyClient(ctx)
        what = f"{call['iface']}.{call['member']}{call['args']!r}"

        before = snapshot(d)
        mark = signal_mark(ctx)

        assert_error(nobody.call(call, interactive=False), INTERACTIVE_REQUIRED,
                     f"nobody, python-dbus, {what}", action)
        assert_error(nobody.call(call, interactive=True), ACCESS_DENIED,
                     f"nobody, python-dbus allowing interaction, {what}", action)
        rc, out, err = nobody_busctl(ctx, call, interactive=True)
        assert rc != 0 and err == f"Call failed: {BUSCTL_ACCESS_DENIED}", \
                f"nobody, busctl call {what}: exit {rc}, stdout {out!r}, stderr {err!r}"
        rc, out, err = nobody_busctl(ctx, call, interactive=False)
        assert rc != 0 and "Authentication is required" in err and action in err, \
                f"nobody, busctl --allow-interactive-authorization=no call {what}: exit {rc}, stdout {out!r}, " \
                f"stderr {err!r}"

        assert_unchanged(ctx, d, before, mark, f"nobody's refused {what}")

        result = root_call(d, call)
        if verify:
                verify(d, result)


def loaded(d, name, pinned=False, holds=0):
        m = d.model(name)
        assert m["state"] == "loaded" and m["memory_bytes"] > 0, m
        assert m["pinned"] is pinned and m["holds"] == holds, m


def unloaded(ctx, d, name):
        s = ctx.monitor.wait_signal("ModelUnloaded", name)
        assert s.args[1] == "request", s
        m = d.model(name)
        assert m["state"] == "available" and m["memory_bytes"] == 0, m


def test_polkit_load(ctx):
        def verify(d, result):
                assert result == model_path("alpha"), result
                ctx.monitor.wait_signal("ModelLoaded", "alpha")
                loaded(d, "alpha")
        check_privileged(ctx, load_call("alpha"), ACTION_LOAD, verify=verify)


def test_polkit_load_with_pin(ctx):
        def verify(d, result):
                assert result == model_path("alpha"), result
                loaded(d, "alpha", pinned=True)
        # nobody is refused org.mpool.load already, the first of the two.
        check_privileged(ctx, load_call("alpha", pin=True), ACTION_LOAD, verify=verify)


def test_polkit_load_with_pin_of_loaded_model(ctx):
        def verify(d, result):
                loaded(d, "alpha", pinned=True)
        check_privileged(ctx, load_call("alpha", pin=True), ACTION_LOAD, setup=lambda d: d.load("alpha"),
                         verify=verify)


def test_polkit_acquire(ctx):
        def verify(d, result):
                assert result is None, result
                loaded(d, "alpha", holds=1)
        check_privileged(ctx, acquire_call("alpha"), ACTION_LOAD, verify=verify)


def test_polkit_acquire_of_loaded_model(ctx):
        def verify(d, result):
                loaded(d, "alpha", holds=1)
        check_privileged(ctx, acquire_call("alpha"), ACTION_LOAD, setup=lambda d: d.load("alpha"), verify=verify)


def test_polkit_open_files(ctx):
        def verify(d, result):
                assert [name for name, _ in result] == ["model.safetensors"], result
                for _, fd in result:
                        os.close(fd.take())
                loaded(d, "alpha", holds=1)
        check_privileged(ctx, call_spec("OpenFiles", ["s"], ["alpha"]), ACTION_LOAD, verify=verify)


def test_polkit_embed(ctx):
        import embed_fixtures
        embed_fixtures.install_model(ctx.store, "f32-mean-normalize", name="gamma")

        def verify(d, result):
                assert len(result) == 1 and len(result[0]) > 0, result
                loaded(d, "gamma")
        check_privileged(ctx, call_spec("Embed", ["s", "as", "a{sv}"], ["gamma", ["some text"], {}]), ACTION_LOAD,
                         verify=verify)


def test_polkit_unload(ctx):
        def verify(d, result):
                assert result is True, result
                unloaded(ctx, d, "alpha")
        check_privileged(ctx, unload_call("alpha"), ACTION_LOAD, setup=lambda d: d.load("alpha"), verify=verify)


def test_polkit_unload_with_force(ctx):
        def verify(d, result):
                assert result is True, result
                unloaded(ctx, d, "alpha")
        check_privileged(ctx, unload_call("alpha", force=True), ACTION_LOAD,
                         setup=lambda d: d.load("alpha", pin=True), verify=verify)


def test_polkit_unload_all(ctx):
        def setup(d):
                d.load("alpha")
                d.load("beta")

        def verify(d, result):
                assert sorted(result) == ["alpha", "beta"], result
                unloaded(ctx, d, "alpha")
                unloaded(ctx, d, "beta")
        check_privileged(ctx, unload_all_call(), ACTION_LOAD, setup=setup, verify=verify)


def test_polkit_unload_all_with_force(ctx):
        def setup(d):
                d.load("alpha", pin=True)
                d.load("beta")

        def verify(d, result):
                assert sorted(result) == ["alpha", "beta"], result
                unloaded(ctx, d, "alpha")
                unloaded(ctx, d, "beta")
        check_privileged(ctx, unload_all_call(force=True), ACTION_LOAD, setup=setup, verify=verify)


def test_polkit_set_memory_limit(ctx):
        def verify(d, result):
                assert d.status()[0]["memory_limit"] == 256 * MiB
                assert d.ctl.get_property(MANAGER_PATH, MANAGER_IFACE, "MemoryLimit") == 256 * MiB
                ctx.monitor.wait(lambda sigs: 256 * MiB in properties_changed(ctx, "MemoryLimit"),
                                 "PropertiesChanged of MemoryLimit")
        check_privileged(ctx, set_call("MemoryLimit", "t", 256 * MiB), ACTION_CONFIGURE, verify=verify)


def test_polkit_set_idle_timeout(ctx):
        def verify(d, result):
                assert d.status()[0]["idle_timeout_sec"] == 600
                assert d.ctl.get_property(MANAGER_PATH, MANAGER_IFACE, "IdleTimeoutSec") == 600
                ctx.monitor.wait(lambda sigs: 600 in properties_changed(ctx, "IdleTimeoutSec"),
                                 "PropertiesChanged of IdleTimeoutSec")
        check_privileged(ctx, set_call("IdleTimeoutSec", "x", 600), ACTION_CONFIGURE, verify=verify)


def test_polkit_busctl_set_property_as_root_and_nobody(ctx):
        """busctl set-property never allows interactive authorization (only
        busctl call does): nobody gets InteractiveAuthorizationRequired."""
        d = ctx.daemon(polkit=True)
        before = snapshot(d)
        mark = signal_mark(ctx)
        proc = subprocess.run(setpriv_nobody() + ["busctl", f"--address={ctx.suite.address}", "set-property",
                                                  BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "MemoryLimit", "t",
                                                  str(128 * MiB)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=CALL_TIMEOUT, cwd="/", env=NOBODY_ENV)
        assert proc.returncode != 0 and "Authentication is required" in proc.stderr \
                and ACTION_CONFIGURE in proc.stderr, (proc.returncode, proc.stderr)
        assert_unchanged(ctx, d, before, mark, "nobody's busctl set-property MemoryLimit")

        d.ctl.run("set-property", BUS_NAME, MANAGER_PATH, MANAGER_IFACE, "MemoryLimit", "t", str(128 * MiB))
        assert d.ctl.get_property(MANAGER_PATH, MANAGER_IFACE, "MemoryLimit") == 128 * MiB
        assert d.status()[0]["memory_limit"] == 128 * MiB


# ---------------------------------------------------------------------------
# The user the daemon runs as.

def check_authorizes(ctx, d):
        """Both kinds of check mpoold asks polkit, root's and nobody's: with
        details (Load names the model) and without (Set), each about a
        process of another user than the daemon's."""
        ctx.model("alpha", size="4M")
        nobody = NobodyClient(ctx)
        for call, action in ((load_call("alpha"), ACTION_LOAD),
                             (set_call("MemoryLimit", "t", 256 * MiB), ACTION_CONFIGURE)):
                what = f"{call['iface']}.{call['member']}{call['args']!r}"
                try:
                        root_call(d, call)
                except dbus.exceptions.DBusException as e:
                        raise AssertionError(f"root's {what} was refused: {e.get_dbus_name()}: "
                                             f"{e.get_dbus_message()}") from None
                assert_error(nobody.call(call), INTERACTIVE_REQUIRED, f"nobody's {what}", action)
        loaded(d, "alpha")
        assert d.status()[0]["memory_limit"] == 256 * MiB
        assert "Cannot ask polkit" not in d.log(), d.log()


def test_polkit_daemon_as_service_user(ctx):
        """As installed, mpoold is not root: polkitd answers it only because
        it owns the actions (org.freedesktop.policykit.owner); without that,
        every check failed with "Only trusted callers (e.g. uid 0 or an
        action owner) can use CheckAuthorization()", root's included."""
        d = ctx.daemon(polkit=True)
        uid = pwd.getpwnam(SERVICE_USER).pw_uid
        assert process_uids(d.pid) == [uid] * 4, f"mpoold runs as {process_uids(d.pid)}, not {SERVICE_USER} ({uid})"
        check_authorizes(ctx, d)


def test_polkit_daemon_as_root(ctx):
        """Run by hand as root, the daemon is as able: root may ask polkit
        anything."""
        d = ctx.daemon(polkit=True, user="root")
        assert process_uids(d.pid) == [0] * 4, process_uids(d.pid)
        check_authorizes(ctx, d)


def test_polkit_actions_owned_by_the_unit_user(ctx):
        """Every action names the user the unit runs as, which the sysusers
        snippet creates, as its owner: rename one and authorization breaks."""
        root = ctx.suite.source_root
        with open(os.path.join(root, "systemd", "mpoold.service")) as f:
                (unit_user,) = re.findall(r"^User=(\S+)$", f.read(), re.MULTILINE)
        with open(os.path.join(root, "systemd", "mpool.sysusers")) as f:
                sysusers = re.findall(r"^u\s+(\S+)\s", f.read(), re.MULTILINE)
        assert unit_user == SERVICE_USER and sysusers == [unit_user], (unit_user, sysusers, SERVICE_USER)

        policy = ElementTree.parse(os.path.join(root, "polkit", "org.mpool.policy")).getroot()
        actions = policy.findall("action")
        assert actions, "no actions in polkit/org.mpool.policy"
        for action in actions:
                owners = [a.text for a in action.findall("annotate")
                          if a.get("key") == "org.freedesktop.policykit.owner"]
                assert owners == [f"unix-user:{unit_user}"], f"{action.get('id')}: owner annotation {owners}"


# ---------------------------------------------------------------------------
# The second authorization of a call: nobody may load one model (the test
# rule), but not pin it or unload it with force.

def test_polkit_second_action_is_checked(ctx):
        granted = ctx.suite.ensure_polkitd().granted_model
        ctx.model(granted, size="4M")
        ctx.model("alpha", size="4M")
        d = ctx.daemon(polkit=True)
        nobody = NobodyClient(ctx)

        # The rule names one model: the model detail reaches polkit.
        before = snapshot(d)
        mark = signal_mark(ctx)
        assert_error(nobody.call(load_call("alpha")), INTERACTIVE_REQUIRED, "nobody loads alpha", ACTION_LOAD)
        assert_error(nobody.call(load_call(granted, pin=True)), INTERACTIVE_REQUIRED,
                     "nobody pins the granted model", ACTION_CONFIGURE)
        assert_error(nobody.call(load_call(granted, pin=True), interactive=True), ACCESS_DENIED,
                     "nobody pins the granted model allowing interaction", ACTION_CONFIGURE)
        assert_unchanged(ctx, d, before, mark, "nobody's refused pin")

        # What the rule allows works for nobody.
        assert assert_ok(nobody.call(load_call(granted)), "nobody loads the granted model") == \
                [model_path(granted)]
        ctx.monitor.wait_signal("ModelLoaded", granted)
        loaded(d, granted)
        assert_ok(nobody.call(acquire_call(granted)), "nobody acquires the granted model")
        loaded(d, granted, holds=1)
        assert_ok(nobody.call(call_spec("Release", ["s"], [granted])), "nobody releases the granted model")

        # Unload with force needs org.mpool.configure too.
        before = snapshot(d)
        mark = signal_mark(ctx)
        assert_error(nobody.call(unload_call(granted, force=True)), INTERACTIVE_REQUIRED,
                     "nobody unloads the granted model with force", ACTION_CONFIGURE)
        assert_unchanged(ctx, d, before, mark, "nobody's refused Unload with force")
        assert assert_ok(nobody.call(unload_call(granted)), "nobody unloads the granted model") == [True]
        ctx.monitor.wait_signal("ModelUnloaded", granted)

        # Root pins it; nobody passes org.mpool.load, then meets the pin.
        d.load(granted, pin=True)
        before = snapshot(d)
        mark = signal_mark(ctx)
        assert_error(nobody.call(unload_call(granted)), ERROR_MODEL_PINNED, "nobody unloads the pinned model")
        assert_error(nobody.call(unload_call(granted, force=True)), INTERACTIVE_REQUIRED,
                     "nobody unloads the pinned model with force", ACTION_CONFIGURE)
        assert_error(nobody.call(unload_call(granted, force=True), interactive=True), ACCESS_DENIED,
                     "nobody unloads the pinned model with force allowing interaction", ACTION_CONFIGURE)
        assert_unchanged(ctx, d, before, mark, "nobody's refused Unload of a pinned model")
        loaded(d, granted, pinned=True)


# ---------------------------------------------------------------------------
# What everyone may do.

def test_polkit_nobody_may_read_and_release(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("demo/beta", size="1M")
        d = ctx.daemon(polkit=True)
        d.load("alpha")
        d.py.call("Acquire", "s", ("alpha",))
        nobody = NobodyClient(ctx)
        before = snapshot(d)
        mark = signal_mark(ctx)
        alpha = model_path("alpha")

        # Without the interactive flag: a polkit check would have refused.
        pool, models = assert_ok(nobody.call(call_spec("Status")), "nobody's Status")
        assert pool["memory_limit"] == before["pool"]["memory_limit"], pool
        assert {m["name"]: m["state"] for m in models} == {"alpha": "loaded", "demo/beta": "available"}, models

        (limit,) = assert_ok(nobody.call(call_spec("Get", ["s", "s"], [MANAGER_IFACE, "MemoryLimit"],
                                                   iface=PROPERTIES_IFACE)), "nobody's Get MemoryLimit")
        assert limit == before["properties"]["MemoryLimit"], limit
        (props,) = assert_ok(nobody.call(call_spec("GetAll", ["s"], [MANAGER_IFACE], iface=PROPERTIES_IFACE)),
                             "nobody's GetAll of the manager")
        assert props["LoadedModels"] == ["alpha"] and props["IdleTimeoutSec"] == 300, props
        (state,) = assert_ok(nobody.call(call_spec("Get", ["s", "s"], [MODEL_IFACE, "State"], path=alpha,
                                                   iface=PROPERTIES_IFACE)), "nobody's Get of a model's State")
        assert state == "loaded", state
        (props,) = assert_ok(nobody.call(call_spec("GetAll", ["s"], [MODEL_IFACE], path=alpha,
                                                   iface=PROPERTIES_IFACE)), "nobody's GetAll of a model")
        assert props["Name"] == "alpha" and props["Holds"] == 1, props

        for path in (MANAGER_PATH, alpha):
                (xml,) = assert_ok(nobody.call(call_spec("Introspect", path=path, iface=INTROSPECTABLE_IFACE)),
                                   f"nobody's Introspect of {path}")
                iface = MANAGER_IFACE if path == MANAGER_PATH else MODEL_IFACE
                assert f'<interface name="{iface}">' in xml, xml[:2000]
        (objects,) = assert_ok(nobody.call(call_spec("GetManagedObjects", iface=OBJECT_MANAGER_IFACE)),
                               "nobody's GetManagedObjects")
        assert alpha in objects and model_path("demo/beta") in objects, sorted(objects)
        assert_ok(nobody.call(call_spec("Ping", iface=PEER_IFACE)), "nobody's Peer.Ping")

        # Release is open too; nobody holds nothing, root's hold stays.
        for name in ("alpha", "demo/beta"):
                result = nobody.call(call_spec("Release", ["s"], [name]))
                assert_error(result, ERROR_NOT_HELD, f"nobody's Release of {name}")
                result = nobody.call(call_spec("Release", ["s"], [name]), interactive=True)
                assert_error(result, ERROR_NOT_HELD, f"nobody's Release of {name} allowing interaction")

        # busctl, too.
        rc, out, err = nobody_busctl(ctx, call_spec("Status"))
        assert rc == 0 and json.loads(out)["type"] == "a{sv}aa{sv}", (rc, out[:200], err)

        assert_unchanged(ctx, d, before, mark, "nobody's reads")


def test_polkit_bus_policy(ctx):
        """The shipped dbus/org.mpool.Manager.conf: nobody cannot own the
        name, and calls without an interface or to an interface it does not
        list are refused by the bus, never reaching the daemon."""
        nobody = NobodyClient(ctx)
        request_name = call_spec("RequestName", ["s", "u"], [BUS_NAME, 0], dest="org.freedesktop.DBus",
                                 path="/org/freedesktop/DBus", iface="org.freedesktop.DBus")
        # Free, then owned by mpoold: the bus policy refuses either way.
        assert_error(nobody.call(request_name), ACCESS_DENIED, "nobody's RequestName of a free name")
        d = ctx.daemon(polkit=True)
        assert_error(nobody.call(request_name), ACCESS_DENIED, "nobody's RequestName while mpoold owns it")
        (owner_pid,) = assert_ok(nobody.call(call_spec("GetConnectionUnixProcessID", ["s"], [BUS_NAME],
                                                       dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                                       iface="org.freedesktop.DBus")), "GetConnectionUnixProcessID")
        assert owner_pid == d.pid, (owner_pid, d.pid)

        before = snapshot(d)
        mark = signal_mark(ctx)
        for call in (load_call("alpha"), set_call("MemoryLimit", "t", 64 * MiB)):
                for iface in (None, "org.mpool.Private"):
                        result = nobody.call(dict(call, iface=iface), interactive=True)
                        what = f"nobody's {call['member']} with interface {iface}"
                        assert_error(result, ACCESS_DENIED, what)
                        assert "Rejected send message" in result["message"], \
                                f"{what} was not refused by the bus: {result['message']}"
        assert_unchanged(ctx, d, before, mark, "calls refused by the bus")


def test_polkit_no_polkit_refused_on_system_bus(ctx):
        """--no-polkit with the system bus is refused before any bus is
        touched: the system bus address here leads nowhere."""
        config = ctx.write_config()
        nowhere = "unix:path=" + os.path.join(ctx.dir, "no-such-socket")
        for args in (["--system", "--no-polkit"], ["--no-polkit", "--system"], ["--no-polkit"],
                     ["--address=" + nowhere, "--system", "--no-polkit"]):
                proc = subprocess.run(ctx.daemon_command() + [f"--config={config}"] + args, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      timeout=DEADLINE, env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=nowhere))
                assert proc.returncode != 0, f"mpoold {' '.join(args)} exited 0: {proc.stdout}"
                assert "--no-polkit" in proc.stdout, f"mpoold {' '.join(args)} does not say why: {proc.stdout!r}"
                assert "Cannot connect" not in proc.stdout, f"mpoold {' '.join(args)} tried the bus: {proc.stdout!r}"


# ---------------------------------------------------------------------------
# The daemon while polkit is slow, and callers that leave.

def polkit_monitor(ctx, name, matches):
        monitor = Monitor(ctx.suite.address, ctx.dir, matches=matches, name=name)
        monitor.start()
        ctx.children.append(monitor.proc)
        return monitor


def daemon_unique_name(ctx):
        return str(ctx.suite.client.bus.get_name_owner(BUS_NAME))


def checks_for(monitor, sender):
        """CheckAuthorization calls seen for the caller sender."""
        return [m for m in monitor.signals(iface=None)
                if m.raw.get("type") == "method_call" and m.member == "CheckAuthorization"
                and m.args and m.args[0] == ["system-bus-name", {"name": sender}]]


def test_polkit_per_caller_limit_while_polkit_is_slow(ctx):
        ctx.model("alpha", size="4M")
        polkitd = ctx.suite.ensure_polkitd()
        d = ctx.daemon(polkit=True)
        daemon_name = daemon_unique_name(ctx)
        checks = polkit_monitor(ctx, "polkit-checks",
                                [f"type='method_call',sender='{daemon_name}',member='CheckAuthorization'"])
        nobody = NobodyClient(ctx)
        before = snapshot(d)
        mark = signal_mark(ctx)
        limit = polkit_calls_per_peer_max(ctx.suite.source_root)
        n = limit + 4

        with polkitd.paused():
                nobody.start([load_call("alpha")] * n)
                # The daemon reads the calls in order: the first ones wait
                # for polkit, those beyond the limit are refused at once.
                wait_until(lambda: len(checks_for(checks, nobody.unique_name)) >= limit,
                           f"{limit} polkit checks for nobody's calls")
                for r in nobody.wait(range(limit, n)):
                        assert_error(r, ERROR_LIMITS_EXCEEDED, "a call beyond the per-caller limit")
                # The daemon serves everyone meanwhile, and asked polkit no more.
                assert d.status()[1]["alpha"]["state"] == "available"
                other = NobodyClient(ctx)
                assert_ok(other.call(call_spec("Status")), "another caller's Status while checks wait")
                assert_error(other.call(call_spec("Release", ["s"], ["alpha"])), ERROR_NOT_HELD,
                             "another caller's Release while checks wait")
                assert_error(nobody.call(call_spec("Release", ["s"], ["alpha"])), ERROR_NOT_HELD,
                             "the waiting caller's Release while its checks wait")
        for r in nobody.wait(range(limit)):
                assert_error(r, INTERACTIVE_REQUIRED, "a call that waited for polkit", ACTION_LOAD)
        assert len(checks_for(checks, nobody.unique_name)) == limit
        assert_unchanged(ctx, d, before, mark, "nobody's refused calls")

        # Nothing is left waiting: the limit is free again.
        assert_error(nobody.call(load_call("alpha")), INTERACTIVE_REQUIRED, "nobody's Load afterwards", ACTION_LOAD)
        assert root_call(d, load_call("alpha")) == model_path("alpha")


def test_polkit_caller_leaves_while_polkit_decides(ctx):
        ctx.model("alpha", size="4M")
        polkitd = ctx.suite.ensure_polkitd()
        d = ctx.daemon(polkit=True)
        daemon_name = daemon_unique_name(ctx)
        traffic = polkit_monitor(ctx, "polkit-traffic", [
                f"type='method_call',sender='{daemon_name}',member='CheckAuthorization'",
                f"type='method_return',sender='{polkitd.unique_name}',destination='{daemon_name}'",
                f"type='error',sender='{polkitd.unique_name}',destination='{daemon_name}'",
        ])
        leaver = NobodyClient(ctx)
        before = snapshot(d)
        mark = signal_mark(ctx)

        with polkitd.paused():
                leaver.send(load_call("alpha"))
                (check,) = wait_until(lambda: checks_for(traffic, leaver.unique_name),
                                      "the polkit check of the leaving caller's Load")
                leaver.kill()
                wait_until(lambda: not ctx.suite.client.bus.name_has_owner(leaver.unique_name),
                           "the leaving caller to be gone from the bus")
                # The bus told the daemon before it answered us; this reply
                # proves the daemon has read that, and still serves.
                assert d.status()[1]["alpha"]["state"] == "available"

        # polkit answers the abandoned check: the daemon must ignore it.
        wait_until(lambda: [m for m in traffic.signals(iface=None)
                            if m.raw.get("type") in ("method_return", "error")
                            and m.raw.get("reply_cookie") == check.raw.get("cookie")],
                   "polkit's answer to the abandoned check")
        assert_unchanged(ctx, d, before, mark, "a Load whose caller left")
        log = d.log()
        for complaint in ("Cannot ask polkit", "Cannot resume", "Cannot reply"):
                assert complaint not in log, f"mpoold complained about the abandoned call: {log}"

        # Authorization still works both ways.
        assert_error(NobodyClient(ctx).call(load_call("alpha")), INTERACTIVE_REQUIRED, "a new caller's Load",
                     ACTION_LOAD)
        assert root_call(d, load_call("alpha")) == model_path("alpha")
        ctx.monitor.wait_signal("ModelLoaded", "alpha")


# ---------------------------------------------------------------------------
# The writable properties, as root through polkit.

def test_polkit_memory_limit_below_pinned_is_invalid_args(ctx):
        ctx.model("alpha", size="16M")
        d = ctx.daemon(polkit=True)
        d.load("alpha", pin=True)
        before = snapshot(d)
        mark = signal_mark(ctx)
        message = expect_dbus_error(ERROR_INVALID_ARGS, root_call, d, set_call("MemoryLimit", "t", 8 * MiB))
        assert str(8 * MiB) in message, message
        expect_dbus_error(ERROR_INVALID_ARGS, root_call, d, set_call("MemoryLimit", "t", 0))
        total = d.status()[0]["memory_total"]
        expect_dbus_error(ERROR_INVALID_ARGS, root_call, d, set_call("MemoryLimit", "t", total + 1))
        assert_unchanged(ctx, d, before, mark, "a refused MemoryLimit")
        loaded(d, "alpha", pinned=True)


def test_polkit_lowering_memory_limit_unloads_idle_models(ctx):
        ctx.model("pinned", size="4M")
        ctx.model("alpha", size="16M")
        ctx.model("beta", size="16M")
        d = ctx.daemon(polkit=True)
        # Least recently used first: pinned, alpha, beta; pinned is exempt.
        d.load("pinned", pin=True)
        d.load("alpha")
        d.load("beta")
        mark = signal_mark(ctx)

        root_call(d, set_call("MemoryLimit", "t", 24 * MiB))
        unloaded_signal = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert unloaded_signal.args[1] == "memory-limit", unloaded_signal
        pool, models = d.status()
        assert pool["memory_limit"] == 24 * MiB and pool["memory_used"] <= 24 * MiB, pool
        assert {name: m["state"] for name, m in models.items()} == \
                {"pinned": "loaded", "alpha": "available", "beta": "loaded"}, models
        ctx.sync()
        emitted = ctx.monitor.signals(iface=None)[mark:]
        assert [s.args[0] for s in emitted if s.member == "ModelUnloaded"] == ["alpha"], emitted
        assert properties_changed(ctx, "MemoryLimit") == [24 * MiB], emitted


def test_polkit_idle_timeout_out_of_range_is_invalid_args(ctx):
        d = ctx.daemon(polkit=True)
        before = snapshot(d)
        mark = signal_mark(ctx)
        for value in (0, -2, 10 * 366 * 24 * 3600 + 1):
                message = expect_dbus_error(ERROR_INVALID_ARGS, root_call, d, set_call("IdleTimeoutSec", "x", value))
                assert str(value) in message, message
        # The wrong type is refused by sd-bus before the setter.
        expect_dbus_error(ERROR_INVALID_ARGS, root_call, d, set_call("IdleTimeoutSec", "t", 5))
        assert_unchanged(ctx, d, before, mark, "a refused IdleTimeoutSec")


def test_polkit_idle_timeout_one_idles_out_loaded_model(ctx):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(polkit=True, IdleTimeoutSec="300")
        d.load("alpha")
        m = d.model("alpha")
        assert m["state"] == "loaded" and m["expires_at_usec"] >= m["last_used_usec"] + 299_000_000, m

        set_at = now_usec()
        root_call(d, set_call("IdleTimeoutSec", "x", 1))
        assert d.ctl.get_property(MANAGER_PATH, MANAGER_IFACE, "IdleTimeoutSec") == 1
        s = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert s.args[1] == "idle", s
        # The deadline moved to last use + 1 s, which had passed already.
        assert s.ts >= m["last_used_usec"] + 1_000_000 - 100_000, (s, m)
        assert s.ts >= set_at - 100_000, (s, set_at)
        ctx.sync()
        assert properties_changed(ctx, "IdleTimeoutSec") == [1]
        assert d.status()[0]["idle_timeout_sec"] == 1
