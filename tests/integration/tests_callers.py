# SPDX-License-Identifier: MIT
"""Callers in other languages: integer options in whatever integer type their
binding sends (dbus-python: 'i' for a plain int; GVariant text "<30>" and
GLib.Variant('i', …): 'i'), with the range still checked."""

import subprocess

import dbus

from harness import BUS_NAME, CALL_TIMEOUT, ERROR_INVALID_ARGS, MANAGER_IFACE, MANAGER_PATH, expect_dbus_error, \
        model_path

SEC = 1_000_000


def keep_alive_usec(m):
        """The keep-alive the daemon applied: expires_at - last_used (0: never)."""
        if m["expires_at_usec"] == 0:
                return 0
        return m["expires_at_usec"] - m["last_used_usec"]


def check_loaded(d, name, keep_alive_sec, pinned=False):
        m = d.model(name)
        assert m["state"] == "loaded", m
        assert m["pinned"] == pinned, m
        if keep_alive_sec == -1:
                assert m["expires_at_usec"] == 0, m
        else:
                assert keep_alive_usec(m) == keep_alive_sec * SEC, m


def test_dbus_python_plain_ints(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon(IdleTimeoutSec="300")

        # A plain dict of plain Python values, as a Python program writes it:
        # dbus-python turns 30 into an Int32 and True into a Boolean.
        path = d.py.call("Load", "sa{sv}", ("alpha", {"keep_alive_sec": 30}))
        assert path == model_path("alpha"), path
        check_loaded(d, "alpha", 30)
        d.py.call("Load", "sa{sv}", ("alpha", {"keep_alive_sec": -1, "pin": True}))
        check_loaded(d, "alpha", -1, pinned=True)
        assert d.py.call("Unload", "sa{sv}", ("alpha", {"force": True})) is True


def test_every_integer_type(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon(IdleTimeoutSec="300")
        for n, make in enumerate([dbus.Byte, dbus.Int16, dbus.UInt16, dbus.Int32, dbus.UInt32, dbus.Int64,
                                  dbus.UInt64]):
                seconds = 40 + n
                d.py.load("alpha", keep_alive_sec=make(seconds))
                check_loaded(d, "alpha", seconds)
        for make in (dbus.Int16, dbus.Int32, dbus.Int64):
                d.py.load("alpha", keep_alive_sec=make(-1))
                check_loaded(d, "alpha", -1)


def test_integer_options_are_range_checked(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        bad = [dbus.Int32(0), dbus.Byte(0), dbus.Int16(-2), dbus.Int32(-2147483648), dbus.UInt32(4294967295),
               dbus.Int64(316224001), dbus.UInt64(2**64 - 1), dbus.UInt64(2**63)]
        for value in bad:
                message = expect_dbus_error(ERROR_INVALID_ARGS, d.py.load, "alpha", keep_alive_sec=value)
                assert "keep_alive_sec" in message and f"not {int(value)}." in message, (value, message)
        for value in (dbus.Double(30.0), dbus.String("30"), dbus.Boolean(True)):
                message = expect_dbus_error(ERROR_INVALID_ARGS, d.py.load, "alpha", keep_alive_sec=value)
                assert "must be an integer" in message, (value, message)
        # Booleans stay booleans.
        message = expect_dbus_error(ERROR_INVALID_ARGS, d.py.load, "alpha", pin=dbus.Int32(1))
        assert "Option 'pin' must be of type 'b'" in message, message
        assert d.model("alpha")["state"] == "available"


def gdbus(d, method, *args):
        cmd = ["gdbus", "call", f"--address={d.address}", f"--dest={BUS_NAME}", f"--object-path={MANAGER_PATH}",
               f"--method={MANAGER_IFACE}.{method}", f"--timeout={int(CALL_TIMEOUT)}", "--"] + list(args)
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=CALL_TIMEOUT + 30)
        return proc


def test_gdbus_call(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon(IdleTimeoutSec="300")

        proc = gdbus(d, "Load", "alpha", "{'keep_alive_sec': <30>}")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"(objectpath '{model_path('alpha')}',)", proc.stdout
        check_loaded(d, "alpha", 30)

        # A pinned model has no idle deadline; keep-alive -1 neither.
        proc = gdbus(d, "Load", "alpha", "{'keep_alive_sec': <-1>, 'pin': <true>}")
        assert proc.returncode == 0, proc.stderr
        check_loaded(d, "alpha", -1, pinned=True)

        proc = gdbus(d, "Load", "alpha", "{'keep_alive_sec': <-5>}")
        assert proc.returncode != 0 and ERROR_INVALID_ARGS in proc.stderr and "keep_alive_sec" in proc.stderr, \
                (proc.returncode, proc.stderr)

        proc = gdbus(d, "Unload", "alpha", "{'force': <true>}")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "(true,)", proc.stdout


GI_CLIENT = r'''
import sys
from gi.repository import Gio, GLib

address, name, pin = sys.argv[1], sys.argv[2], sys.argv[3] == "pin"
bus = Gio.DBusConnection.new_for_address_sync(
        address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
        None, None)
options = GLib.Variant("a{sv}", {"keep_alive_sec": GLib.Variant("i", 30), "pin": GLib.Variant("b", pin)})
reply = bus.call_sync("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "Load",
                      GLib.Variant.new_tuple(GLib.Variant("s", name), options), GLib.VariantType("(o)"),
                      Gio.DBusCallFlags.NONE, 120000, None)
print(reply.unpack()[0])
'''


def test_python_gi_call(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon(IdleTimeoutSec="300")
        for pin in ("no-pin", "pin"):
                proc = subprocess.run(["/usr/bin/python3", "-c", GI_CLIENT, d.address, "alpha", pin],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, timeout=CALL_TIMEOUT + 30)
                assert proc.returncode == 0, proc.stderr
                assert proc.stdout.strip() == model_path("alpha"), proc.stdout
                if pin == "pin":
                        assert d.model("alpha")["pinned"]
                else:
                        check_loaded(d, "alpha", 30)
