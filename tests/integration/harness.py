# SPDX-License-Identifier: MIT
"""Harness for the mpoold integration tests: a private system-type bus, a
fresh mpoold per test, busctl and python-dbus as two independent clients, a
signal monitor, and model files written to order.

Everything that waits, waits on a real event (a bus name owned, a signal seen,
a process gone, a Status value reached) with a generous deadline; nothing
sleeps for a fixed time to let something happen."""

import contextlib
import errno
import glob
import json
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time

import dbus

BUS_NAME = "org.mpool.Manager"
MANAGER_PATH = "/org/mpool/Manager"
MANAGER_IFACE = "org.mpool.Manager"
MODEL_IFACE = "org.mpool.Model"
MODELS_PATH = MANAGER_PATH + "/models"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"

ERROR_MODEL_NOT_FOUND = "org.mpool.Error.ModelNotFound"
ERROR_INVALID_MODEL = "org.mpool.Error.InvalidModel"
ERROR_INSUFFICIENT_MEMORY = "org.mpool.Error.InsufficientMemory"
ERROR_MODEL_PINNED = "org.mpool.Error.ModelPinned"
ERROR_CANCELLED = "org.mpool.Error.Cancelled"
ERROR_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"

# `run.py --valgrind` runs every mpoold (and mpoold-test) under valgrind's
# memcheck, which makes it some 20 to 50 times slower; it says so through the
# environment before this module is imported, because the tests take the
# deadlines below as default arguments.
VALGRIND = os.environ.get("MPOOL_TEST_VALGRIND") == "1"
SLOWDOWN = 10 if VALGRIND else 1

# Every wait for something the daemon is to do gets this long: far more than
# it should ever take, so a slow, loaded machine does not make tests flaky.
DEADLINE = 30.0 * SLOWDOWN
# Method calls that load may take long on a loaded machine.
CALL_TIMEOUT = 120.0 * SLOWDOWN

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Where the monitor's own marker signals go: inside the monitored path
# namespace, on an interface the daemon never uses.
SYNC_PATH = MANAGER_PATH + "/integration_test_sync"
SYNC_IFACE = "org.mpool.IntegrationTest"

# The real polkitd, started once per run on the private bus, only when a test
# starts a daemon with polkit=True (tests_polkit.py).
POLKITD = "/usr/lib/polkit-1/polkitd"
POLKIT_BUS_NAME = "org.freedesktop.PolicyKit1"
POLKIT_ACTIONS_DIR = "/usr/share/polkit-1/actions"
POLKIT_RULES_DIR = "/etc/polkit-1/rules.d"
NOBODY_UID = 65534

# The user the shipped unit runs mpoold as (systemd/mpoold.service, User=),
# created as the package creates it, from systemd/mpool.sysusers. Daemons
# that ask polkit run as this user, as installed: polkit answers a caller
# that is not root about other users' processes, or with details, only if it
# owns the action.
SERVICE_USER = "mpool"

# Programs built with `make SANITIZE=1` (mpoold, mpool-client, mpool-mkmodel)
# read these; the others ignore them. Every report ends the program with a
# non-zero status (halt_on_error; -fno-sanitize-recover=all for UBSan).
# ASan's and LSan's reports go to a file in the test's own report directory,
# not to stderr, where a test would take them for the program's output; a
# file there fails the test. UBSan's always go to stderr: GCC links it as a
# separate runtime whose log_path never takes effect. The daemon's stderr is
# its log, which is searched for reports; a client's shows in its exit status.
# A developer's own *SAN_OPTIONS come after these and win, except log_path,
# which goes in all three (clang's single runtime takes the last one it reads).
SANITIZER_OPTIONS = {
        "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "LSAN_OPTIONS": "suppressions={source_root}/tests/lsan.supp:print_suppressions=0",
}
# What a sanitizer writes at the start of a report, should one reach a log
# (a program run with its environment cleared writes to stderr).
SANITIZER_REPORT = re.compile(r"^==\d+==(ERROR|WARNING): \w+Sanitizer|: runtime error: ", re.MULTILINE)


# How --valgrind runs each daemon (TestContext.daemon_command(), which adds a
# log per daemon): the options issue 10 asks for (memcheck; any error, or a
# block definitely lost, is a failure and makes the exit status 1), and
# suppressions for noise in libraries that are not ours, each explained in
# the file.
VALGRIND_OPTIONS = [
        "--tool=memcheck", "--leak-check=full", "--errors-for-leak-kinds=definite", "--error-exitcode=1",
        # Only definite leaks fail; the possible ones (the default lists
        # them too: threads' stacks and the like) would only fill the logs.
        "--show-leak-kinds=definite",
        "--num-callers=40",
        # The daemon's SIGBUS handler (daemon/sigbus.c) maps zeros over a
        # page of a weights file truncated under it and returns, so that the
        # access is made again: valgrind must then resume with every
        # register as it was at that access, not only those its default
        # keeps exact for unwinding.
        "--vex-iropt-register-updates=allregs-at-mem-access",
        # A forked child that fails to exec would otherwise report the
        # daemon's blocks as its own.
        "--child-silent-after-fork=yes",
        "--suppressions={source_root}/tests/valgrind.supp",
]
# The count valgrind prints last, once the program has exited and its leaks
# have been checked.
VALGRIND_SUMMARY = re.compile(r"^==\d+== ERROR SUMMARY: (\d+) errors", re.MULTILINE)
# An error memcheck reported while the program ran: a message followed by the
# stack where it happened (warnings, which also have stacks, excepted). What a
# daemon killed with SIGKILL leaves has no summary; these are all it can tell.
VALGRIND_ERROR = re.compile(r"^==\d+== (?!Warning|WARNING)(\S.*)\n==\d+==    (?:at|by) 0x", re.MULTILINE)


def valgrind_verdict(log, log_path, what, killed):
        """None if valgrind's log of a program says it found nothing, else a
        report. A program that exited, on its own or on SIGTERM, has its
        summary, leaks included. One killed with SIGKILL (by its test, on
        purpose) could not check its leaks: only the errors it reported
        while it ran count, and without them a missing summary is what is
        expected of it (killed)."""
        summary = VALGRIND_SUMMARY.findall(log)
        if summary:
                if int(summary[-1]) == 0:
                        return None
                return f"valgrind: {summary[-1]} errors in {what}, {log_path}:\n{log.rstrip()}"
        errors = VALGRIND_ERROR.findall(log)
        if errors:
                return f"valgrind: {what} reported {len(errors)} errors before it was killed, {log_path}:\n" \
                       f"{log.rstrip()}"
        if killed:
                return None
        return f"valgrind: {what} exited with no summary in {log_path}:\n{log.rstrip()}"


class Skip(Exception):
        """Raised by a test that cannot run on this machine; the message
        says why. run.py reports it and counts it apart."""


def now_usec():
        return int(time.time() * 1_000_000)


def wait_until(predicate, what, timeout=DEADLINE, interval=0.02):
        """Polls predicate until it returns something true, which is returned."""
        deadline = time.monotonic() + timeout
        while True:
                result = predicate()
                if result:
                        return result
                if time.monotonic() >= deadline:
                        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
                time.sleep(interval)


def path_encode(name):
        """sd_bus_path_encode()'s label: every byte but [A-Za-z0-9] becomes _xx
        (lowercase hex), and so does a digit in the first position; "" is "_"."""
        if name == "":
                return "_"
        out = []
        for i, byte in enumerate(name.encode()):
                c = chr(byte)
                if ("A" <= c <= "Z") or ("a" <= c <= "z") or (i > 0 and "0" <= c <= "9"):
                        out.append(c)
                else:
                        out.append(f"_{byte:02x}")
        return "".join(out)


def model_path(name):
        return MODELS_PATH + "/" + path_encode(name)


# ---------------------------------------------------------------------------
# D-Bus signatures, for turning busctl's JSON into plain Python values and
# Python values into busctl's argument syntax.

def split_signature(sig):
        """Splits a signature into its complete types."""
        types = []
        i = 0
        while i < len(sig):
                j = _complete_type_end(sig, i)
                types.append(sig[i:j])
                i = j
        return types


def _complete_type_end(sig, i):
        c = sig[i]
        if c == "a":
                return _complete_type_end(sig, i + 1)
        if c in "({":
                close = ")" if c == "(" else "}"
                j = i + 1
                while sig[j] != close:
                        j = _complete_type_end(sig, j)
                return j + 1
        return i + 1


def from_busctl_json(sig, data):
        """busctl --json: variants are {"type": T, "data": D}, dicts are JSON
        objects, arrays and structs are lists."""
        if sig == "v":
                return from_busctl_json(data["type"], data["data"])
        if sig.startswith("a{"):
                key_sig, value_sig = split_signature(sig[2:-1])
                return {k: from_busctl_json(value_sig, v) for k, v in data.items()}
        if sig.startswith("a"):
                return [from_busctl_json(sig[1:], item) for item in data]
        if sig.startswith("("):
                return [from_busctl_json(s, d) for s, d in zip(split_signature(sig[1:-1]), data)]
        if sig == "b":
                return bool(data)
        if sig == "d":
                return float(data)
        return data


def to_busctl_args(sig, value):
        """Python value -> busctl call arguments. A variant is given as a
        (signature, value) pair."""
        if sig == "v":
                inner_sig, inner = value
                return [inner_sig] + to_busctl_args(inner_sig, inner)
        if sig.startswith("a{"):
                key_sig, value_sig = split_signature(sig[2:-1])
                args = [str(len(value))]
                for k, v in value.items():
                        args += to_busctl_args(key_sig, k) + to_busctl_args(value_sig, v)
                return args
        if sig.startswith("a"):
                args = [str(len(value))]
                for item in value:
                        args += to_busctl_args(sig[1:], item)
                return args
        if sig == "b":
                return ["true" if value else "false"]
        return [str(value)]


def plain(value):
        """python-dbus values -> plain Python values."""
        if isinstance(value, dbus.Boolean):
                return bool(value)
        if isinstance(value, (dbus.Dictionary, dict)):
                return {plain(k): plain(v) for k, v in value.items()}
        if isinstance(value, (dbus.Array, list)):
                return [plain(v) for v in value]
        if isinstance(value, (dbus.Struct, tuple)):
                return tuple(plain(v) for v in value)
        if isinstance(value, (dbus.ObjectPath, dbus.String, str)):
                return str(value)
        if isinstance(value, (dbus.Double, float)):
                return float(value)
        if isinstance(value, int):
                return int(value)
        return value


# What Status means by a model's key it leaves out (keys other than name and
# state are left out at their default value), in the daemon's order.
MODEL_STATUS_DEFAULTS = {
        "size_bytes": 0, "memory_bytes": 0, "memory_percent": 0.0, "memory_limit_percent": 0.0,
        "pinned": False, "holds": 0, "loaded_at_usec": 0, "last_used_usec": 0, "expires_at_usec": 0,
        "requests_total": 0, "error": "", "source": "", "revision": "", "kind": "", "precision": "",
        "workers": 0, "active_requests": 0, "queued_requests": 0, "tokens_total": 0,
        "download_done": 0, "download_total": 0, "memory_by_precision": {},
}


def complete_model_status(model):
        """A model of Status as the wire has it -> with every key, the
        left-out ones at their default, so tests can read m["error"]."""
        complete = {"name": model["name"], "state": model["state"]}
        for key, default in MODEL_STATUS_DEFAULTS.items():
                complete[key] = model.get(key, type(default)())
        complete.update(model)
        return complete


def load_options(**options):
        """Options for Load/Unload/UnloadAll typed as the contract says;
        values that are already dbus types are passed as they are, so tests
        can send wrong types on purpose."""
        typed = {}
        for key, value in options.items():
                if isinstance(value, (dbus.Boolean, dbus.Int64, dbus.Int32, dbus.String, dbus.UInt64,
                                      dbus.Double, dbus.Byte, dbus.Array, dbus.UInt32)):
                        typed[key] = value
                elif isinstance(value, bool):
                        typed[key] = dbus.Boolean(value)
                elif isinstance(value, int):
                        typed[key] = dbus.Int64(value)
                elif isinstance(value, str):
                        typed[key] = dbus.String(value)
                else:
                        raise TypeError(f"option {key}: no D-Bus type for {value!r}")
        return dbus.Dictionary(typed, signature="sv")


def busctl_options(**options):
        """Options as busctl a{sv} arguments."""
        out = {}
        for key, value in options.items():
                if isinstance(value, bool):
                        out[key] = ("b", value)
                elif isinstance(value, int):
                        out[key] = ("x", value)
                else:
                        out[key] = ("s", str(value))
        return out


# ---------------------------------------------------------------------------
# Clients.

class BusctlError(Exception):
        def __init__(self, message, returncode, stderr):
                super().__init__(message)
                self.message = message
                self.returncode = returncode
                self.stderr = stderr


class Busctl:
        """busctl as a client: machine-readable output, errors as BusctlError
        (busctl prints only an error's message, not its name)."""

        def __init__(self, address):
                self.address = address

        def run(self, *args, timeout=CALL_TIMEOUT, check=True):
                cmd = ["busctl", f"--address={self.address}"] + list(args)
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, timeout=timeout + 30)
                if check and proc.returncode != 0:
                        message = proc.stderr.strip()
                        if message.startswith("Call failed: "):
                                message = message[len("Call failed: "):]
                        raise BusctlError(message, proc.returncode, proc.stderr)
                return proc

        def call(self, member, sig="", *args, path=MANAGER_PATH, iface=MANAGER_IFACE, timeout=CALL_TIMEOUT):
                argv = []
                for s, a in zip(split_signature(sig), args):
                        argv += to_busctl_args(s, a)
                cmd = ["--json=short", f"--timeout={int(timeout)}", "call", "--", BUS_NAME, path, iface, member]
                if sig:
                        cmd += [sig] + argv
                proc = self.run(*cmd, timeout=timeout)
                out = proc.stdout.strip()
                if not out:
                        return []
                reply = json.loads(out)
                return [from_busctl_json(s, d) for s, d in zip(split_signature(reply["type"]), reply["data"])]

        def get_property(self, path, iface, prop):
                proc = self.run("--json=short", "get-property", BUS_NAME, path, iface, prop)
                reply = json.loads(proc.stdout)
                return from_busctl_json(reply["type"], reply["data"])

        def name_has_owner(self, name):
                return self.run("status", name, check=False, timeout=10).returncode == 0


class PyClient:
        """python-dbus as the second, independent client. Its failures raise
        dbus.exceptions.DBusException, whose get_dbus_name() is the error name."""

        def __init__(self, address):
                self.bus = dbus.bus.BusConnection(address)

        def call(self, member, sig="", args=(), path=MANAGER_PATH, iface=MANAGER_IFACE, timeout=CALL_TIMEOUT):
                reply = self.bus.call_blocking(BUS_NAME, path, iface, member, sig, tuple(args), timeout=timeout)
                return plain(reply)

        def load(self, name, **options):
                return self.call("Load", "sa{sv}", (name, load_options(**options)))

        def unload(self, name, **options):
                return self.call("Unload", "sa{sv}", (name, load_options(**options)))

        def unload_all(self, **options):
                return self.call("UnloadAll", "a{sv}", (load_options(**options),))

        def status(self):
                pool, models = self.call("Status")
                return pool, {m["name"]: complete_model_status(m) for m in models}

        def get_all(self, path, iface):
                return self.call("GetAll", "s", (iface,), path=path, iface=PROPERTIES_IFACE)

        def managed_objects(self):
                return self.call("GetManagedObjects", path=MANAGER_PATH, iface=OBJECT_MANAGER_IFACE)

        def emit_sync(self, token):
                msg = dbus.lowlevel.SignalMessage(SYNC_PATH, SYNC_IFACE, "Sync")
                msg.append(dbus.String(token), signature="s")
                self.bus.send_message(msg)
                self.bus.flush()

        def close(self):
                self.bus.close()


def expect_dbus_error(error_name, function, *args, **kwargs):
        """Calls function, which must fail with the D-Bus error error_name;
        returns the error message."""
        try:
                result = function(*args, **kwargs)
        except dbus.exceptions.DBusException as e:
                if e.get_dbus_name() != error_name:
                        raise AssertionError(f"expected {error_name}, got {e.get_dbus_name()}: "
                                             f"{e.get_dbus_message()}") from None
                return e.get_dbus_message() or ""
        raise AssertionError(f"expected {error_name}, but the call succeeded with {result!r}")


# ---------------------------------------------------------------------------
# Signals.

class Signal:
        def __init__(self, raw):
                self.raw = raw
                self.member = raw.get("member")
                self.interface = raw.get("interface")
                self.path = raw.get("path")
                self.sender = raw.get("sender")
                self.ts = raw.get("timestamp-realtime", 0)
                payload = raw.get("payload") or {"type": "", "data": []}
                self.args = [from_busctl_json(s, d)
                             for s, d in zip(split_signature(payload["type"]), payload["data"])]

        def __repr__(self):
                return f"<{self.interface}.{self.member} {self.path} {self.args!r} @{self.ts}>"


class Monitor:
        """`busctl monitor` for everything the daemon emits (its objects all
        live under /org/mpool/Manager, so a path_namespace match also sees
        signals sent while the daemon is giving up its name at exit)."""

        def __init__(self, address, directory, matches=None, name="monitor"):
                self.address = address
                # Other match rules make a monitor of other traffic (e.g. the
                # daemon's polkit checks); signals() then returns those messages.
                self.matches = matches or [f"type='signal',path_namespace='{MANAGER_PATH}'"]
                self.out_path = os.path.join(directory, f"{name}.jsonl")
                self.err_path = os.path.join(directory, f"{name}.err")
                self.proc = None
                self._offset = 0
                self._partial = b""
                self._signals = []
                self._sync_counter = 0
                self._sync_client = None

        def start(self):
                out = open(self.out_path, "wb")
                err = open(self.err_path, "wb")
                self.proc = subprocess.Popen(["busctl", f"--address={self.address}", "--json=short",
                                              "monitor"] + [f"--match={m}" for m in self.matches],
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=err)
                out.close()
                err.close()

                # busctl says so once BecomeMonitor has succeeded.
                def ready():
                        if self.proc.poll() is not None:
                                raise AssertionError(f"busctl monitor exited with {self.proc.returncode}: "
                                                     f"{self._read_err()}")
                        return "Monitoring bus message stream" in self._read_err()
                wait_until(ready, "busctl monitor to start")

        def _read_err(self):
                with open(self.err_path, errors="replace") as f:
                        return f.read()

        def signals(self, member=None, name=None, iface=MANAGER_IFACE):
                """Signals seen so far, in order; filtered by member, by the
                first argument (the model name) and by interface (None: any)."""
                with open(self.out_path, "rb") as f:
                        f.seek(self._offset)
                        chunk = f.read()
                self._offset += len(chunk)
                data = self._partial + chunk
                lines = data.split(b"\n")
                self._partial = lines.pop()
                for line in lines:
                        if line.strip():
                                self._signals.append(Signal(json.loads(line)))
                return [s for s in self._signals
                        if (iface is None or s.interface == iface)
                        and (member is None or s.member == member)
                        and (name is None or (s.args and s.args[0] == name))]

        def wait(self, predicate, what, timeout=DEADLINE):
                """Waits until predicate(all signals seen so far) is true."""
                return wait_until(lambda: predicate(self.signals(iface=None)), what, timeout=timeout)

        def wait_signal(self, member, name=None, where=None, timeout=DEADLINE, iface=MANAGER_IFACE):
                """Waits for the first signal of that member (and model name,
                and predicate over its arguments); returns it."""
                def find():
                        for s in self.signals(member, name, iface=iface):
                                if where is None or where(s.args):
                                        return s
                        return None
                return wait_until(find, f"signal {member}" + (f" for {name}" if name else ""), timeout=timeout)

        def sync(self, client):
                """Returns once every signal the daemon emitted before its last
                reply to us has been read: the bus routes in order, so a
                signal of ours sent now arrives after them."""
                self._sync_counter += 1
                token = f"sync-{os.getpid()}-{self._sync_counter}"
                client.emit_sync(token)
                self.wait(lambda sigs: any(s.interface == SYNC_IFACE and s.args == [token] for s in sigs),
                          "the monitor's sync marker")

        def tail(self, n=30):
                try:
                        self.signals(iface=None)
                except (OSError, ValueError):
                        pass
                return [repr(s) for s in self._signals if s.interface != SYNC_IFACE][-n:]

        def stop(self):
                if self.proc and self.proc.poll() is None:
                        self.proc.terminate()
                        try:
                                self.proc.wait(timeout=10)
                        except subprocess.TimeoutExpired:
                                self.proc.kill()
                                self.proc.wait()


# ---------------------------------------------------------------------------
# Model files.

def safetensors_header(tensors, metadata=None):
        """tensors: list of (name, dtype, shape, nbytes). Returns (header
        bytes padded to 8, data length)."""
        header = {}
        if metadata is not None:
                header["__metadata__"] = metadata
        offset = 0
        for name, dtype, shape, nbytes in tensors:
                header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * ((8 - len(raw) % 8) % 8)
        return raw, offset


def write_safetensors_raw(path, header_bytes, data=b"", declared_header_len=None, sparse_data_len=0):
        """Writes 8-byte LE header length + header + data; sparse_data_len
        extends the file with a hole (zeros) of that many bytes after data."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        length = len(header_bytes) if declared_header_len is None else declared_header_len
        with open(path, "wb") as f:
                f.write(struct.pack("<Q", length))
                f.write(header_bytes)
                f.write(data)
                if sparse_data_len:
                        f.truncate(f.tell() + sparse_data_len)


def write_config_json(directory):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
                json.dump({"model_type": "mpool-integration-test"}, f)


def write_sparse_model(directory, total_bytes, tensor_bytes=64 * MiB):
        """A valid F32 model whose data is a hole: no disk space, reads as zeros."""
        tensors = []
        remaining = total_bytes
        i = 0
        while remaining > 0:
                n = min(tensor_bytes, remaining)
                n -= n % 4
                tensors.append((f"layer.{i}.weight", "F32", [n // 4], n))
                remaining -= tensor_bytes
                i += 1
        header, data_len = safetensors_header(tensors, {"format": "pt"})
        write_safetensors_raw(os.path.join(directory, "model.safetensors"), header, sparse_data_len=data_len)
        write_config_json(directory)
        return data_len


def safetensors_data_bytes(path):
        """Sum of the tensors' byte ranges in a safetensors file."""
        with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        return sum(v["data_offsets"][1] - v["data_offsets"][0]
                   for k, v in header.items() if k != "__metadata__")


def model_files(directory):
        """The safetensors files of a model directory (following symlinks)."""
        return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))


def directory_bytes(directory):
        total = 0
        for root, _, files in os.walk(directory):
                for f in files:
                        total += os.stat(os.path.join(root, f)).st_size
        return total


# ---------------------------------------------------------------------------
# The daemon.

def read_rss_bytes(pid):
        with open(f"/proc/{pid}/status") as f:
                for line in f:
                        if line.startswith("VmRSS:"):
                                return int(line.split()[1]) * KiB
        raise AssertionError(f"no VmRSS for pid {pid}")


class LoadGate:
        """A FIFO the test build's loader waits on (daemon/test-hooks.c)."""

        def __init__(self, path):
                self.path = path
                if not os.path.exists(path):
                        os.mkfifo(path, 0o600)

        def release(self):
                """Lets the held load go on. The loader holds the FIFO open
                while it waits, so this never blocks; with nobody waiting it
                is refused (ENXIO), and the next load passes through instead."""
                try:
                        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as e:
                        if e.errno != errno.ENXIO:
                                raise
                        os.unlink(self.path)
                        return
                try:
                        os.write(fd, b"x")
                finally:
                        os.close(fd)

        def open_wide(self, waiting):
                """Lets the waiting ones go on, one byte each, and every later
                one pass: the gate is gone before the bytes are written, which
                only those that hold it open can read (bytes nobody reads are
                lost once the last reader closes it)."""
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                try:
                        os.unlink(self.path)
                        os.write(fd, b"x" * waiting)
                finally:
                        os.close(fd)


def ensure_service_user(source_root):
        """SERVICE_USER's passwd entry; if the user is missing it is created
        with systemd-sysusers from the checkout's snippet, as installing the
        package would (a test machine is a throwaway one)."""
        try:
                return pwd.getpwnam(SERVICE_USER)
        except KeyError:
                pass
        # An absolute path: a bare file name would be looked up in sysusers.d.
        snippet = os.path.join(source_root, "systemd", "mpool.sysusers")
        proc = subprocess.run(["systemd-sysusers", snippet], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=60)
        try:
                return pwd.getpwnam(SERVICE_USER)
        except KeyError:
                raise RuntimeError(f"systemd-sysusers {snippet} did not create the user {SERVICE_USER} "
                                   f"(exit {proc.returncode}): {proc.stdout.strip()}") from None


def process_uids(pid):
        """The real, effective, saved and file system uids of a process."""
        with open(f"/proc/{pid}/status") as f:
                for line in f:
                        if line.startswith("Uid:"):
                                return [int(u) for u in line.split()[1:]]
        raise AssertionError(f"no Uid for pid {pid}")


class Daemon:
        def __init__(self, ctx, config_path, args=None, polkit=False, user=None, gates=False):
                """user: run as that user, from the working directory / as
                systemd starts it, or as the tests' own user (root) when None.
                gates: run the test build (mpoold-test), whose loads wait at
                gates the test opens (daemon/test-hooks.h); the installed form
                has none."""
                self.ctx = ctx
                self.user = user
                self.program = ctx.suite.mpoold_test if gates else ctx.suite.mpoold
                # The daemon runs the download helper from the build; the
                # test build runs the helper's test build, with retries that
                # wait milliseconds (daemon/test-hooks.h).
                self.env = dict(os.environ, MPOOL_PULL_PATH=os.path.join(ctx.suite.build_dir, "mpool-pull"))
                if gates:
                        self.env["MPOOL_TEST_LOAD_GATE"] = ctx.gate_dir()
                        self.env["MPOOL_TEST_COMPUTE_GATE"] = ctx.gate_dir("compute-gates")
                        self.env["MPOOL_PULL_PATH"] = os.path.join(ctx.suite.build_dir, "mpool-pull-test")
                        self.env["MPOOL_TEST_PULL_BACKOFF_MSEC"] = "20"
                self.config_path = config_path
                self.address = ctx.suite.address
                self.log_path = os.path.join(ctx.dir, f"mpoold-{len(ctx.daemons)}.log")
                # Authorization has tests of its own (tests_polkit.py); the
                # rest run without polkit, as a development bus does.
                self.args = args if args is not None else [f"--address={self.address}",
                                                           f"--config={config_path}"] + \
                        ([] if polkit else ["--no-polkit"])
                self.proc = None
                self.ctl = Busctl(self.address)
                self._py = None
                self.stopped = False

        @property
        def pid(self):
                return self.proc.pid

        @property
        def py(self):
                if self._py is None:
                        self._py = PyClient(self.address)
                return self._py

        def command(self):
                """The daemon's command line, under valgrind with --valgrind."""
                return self.ctx.daemon_command(self.program) + self.args

        def spawn(self):
                argv = self.command()
                cwd = None
                if self.user is not None:
                        # setpriv execs in place: the daemon keeps the pid we
                        # spawn. RLIMIT_MEMLOCK stays the tests' own (the
                        # unit's infinity needs CAP_SYS_RESOURCE, which
                        # containers often lack): larger models load unlocked.
                        argv = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--clear-groups",
                                "--"] + argv
                        cwd = "/"
                log = open(self.log_path, "wb")
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=cwd, env=self.env)
                log.close()
                self.ctx.note_valgrind_process(argv, self.proc)

        def start(self):
                self.spawn()
                self.wait_ready()
                return self

        def wait_ready(self):
                def owned():
                        if self.proc.poll() is not None:
                                raise AssertionError(f"mpoold exited with {self.proc.returncode} before "
                                                     f"owning {BUS_NAME}")
                        # busctl sees the name; it must be ours, not a
                        # previous daemon's.
                        return self.ctl.name_has_owner(BUS_NAME) and self.owns_name()
                wait_until(owned, f"mpoold (pid {self.pid}) to own {BUS_NAME}", interval=0.05)

        def owns_name(self):
                try:
                        owner_pid = self.ctx.suite.client.bus.call_blocking(
                                "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                "GetConnectionUnixProcessID", "s", (BUS_NAME,))
                except dbus.exceptions.DBusException:
                        return False
                return owner_pid == self.pid

        def wait_exit(self, timeout=DEADLINE):
                try:
                        return self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                        raise AssertionError(f"mpoold (pid {self.pid}) did not exit within {timeout:.0f} s") from None

        def stop(self, check=True):
                """SIGTERM, then the exit code must be 0; waits until the bus
                has forgotten the name, so the next daemon can take it."""
                if self.stopped:
                        return self.proc.returncode
                self.stopped = True
                if self._py is not None:
                        self._py.close()
                        self._py = None
                if self.proc.poll() is not None:
                        raise AssertionError(f"mpoold had exited on its own with {self.proc.returncode} "
                                             f"before it was told to stop")
                self.proc.send_signal(signal.SIGTERM)
                try:
                        self.proc.wait(timeout=DEADLINE)
                except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
                        raise AssertionError(f"mpoold did not exit within {DEADLINE:.0f} s of SIGTERM") from None
                wait_until(lambda: not self.ctl.name_has_owner(BUS_NAME), f"{BUS_NAME} to be released",
                           interval=0.05)
                if check:
                        assert self.proc.returncode == 0, f"mpoold exited with {self.proc.returncode} after SIGTERM"
                return self.proc.returncode

        def kill(self):
                if self.proc and self.proc.poll() is None:
                        self.proc.kill()
                        self.proc.wait()
                self.stopped = True
                if self.proc:
                        wait_until(lambda: not self.owns_name(), f"{BUS_NAME} to be released", interval=0.05)

        def log(self):
                try:
                        with open(self.log_path, errors="replace") as f:
                                return f.read()
                except OSError:
                        return ""

        def rss(self):
                return read_rss_bytes(self.pid)

        # -- calls, through busctl unless said otherwise --

        def load(self, name, **options):
                (path,) = self.ctl.call("Load", "sa{sv}", name, busctl_options(**options))
                return path

        def unload(self, name, **options):
                (was_loaded,) = self.ctl.call("Unload", "sa{sv}", name, busctl_options(**options))
                return was_loaded

        def unload_all(self, **options):
                (names,) = self.ctl.call("UnloadAll", "a{sv}", busctl_options(**options))
                return names

        def status(self):
                pool, models = self.ctl.call("Status")
                return pool, {m["name"]: complete_model_status(m) for m in models}

        def model(self, name):
                return self.status()[1].get(name)

        def wait_model(self, name, predicate, what):
                def check():
                        m = self.model(name)
                        return m if m is not None and predicate(m) else None
                return wait_until(check, f"{name}: {what}", interval=0.05)


# ---------------------------------------------------------------------------
# Per-test context.

DEFAULT_POOL = {
        "MemoryLimit": "512M",
        "MaxLoadedModels": "0",
        "IdleTimeoutSec": "300",
        "IdlePolicy": "per-model",
        "MaxConcurrentLoads": "4",
}


class TestContext:
        def __init__(self, suite, name):
                self.suite = suite
                self.name = name
                self.dir = tempfile.mkdtemp(prefix=name + "-", dir=suite.tmp)
                # A daemon running as SERVICE_USER reads its config and store here.
                os.chmod(self.dir, 0o755)
                self.store = os.path.join(self.dir, "store")
                self.hub = os.path.join(self.dir, "hub")
                os.makedirs(self.store)
                self.daemons = []
                self.children = []
                self.monitor = None
                self.reports_dir = suite.sanitizer_environment(os.path.basename(self.dir))
                # valgrind's log of each daemon (--valgrind): the process,
                # once spawned.
                self.valgrind_logs = {}

        # -- models --

        def mkmodel(self, directory, size=None, tensors=None, shards=None, dtype=None, extra=()):
                args = [self.suite.mkmodel]
                if size is not None:
                        args.append(f"--size={size}")
                if tensors is not None:
                        args.append(f"--tensors={tensors}")
                if shards is not None:
                        args.append(f"--shards={shards}")
                if dtype is not None:
                        args.append(f"--dtype={dtype}")
                args += list(extra)
                if directory is not None:
                        args.append(directory)
                proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, timeout=300)
                assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}): {proc.stdout}"

        def model(self, name, size="1M", **kwargs):
                """A valid model named name in the store (made by mpool-mkmodel);
                returns its directory."""
                directory = os.path.join(self.store, name)
                os.makedirs(os.path.dirname(directory), exist_ok=True)
                self.mkmodel(directory, size=size, **kwargs)
                assert os.path.isdir(directory), f"mpool-mkmodel made no {directory}"
                return directory

        def hf_model(self, name, size="1M", **kwargs):
                """A model in the Hugging Face cache layout under self.hub."""
                os.makedirs(self.hub, exist_ok=True)
                self.mkmodel(None, size=size, extra=[f"--hf-cache={self.hub}", f"--name={name}"], **kwargs)
                org, _, base = name.rpartition("/")
                repo = os.path.join(self.hub, "models--" + (f"{org}--{base}" if org else base))
                assert os.path.isdir(repo), f"mpool-mkmodel made no {repo}"
                with open(os.path.join(repo, "refs", "main")) as f:
                        return os.path.join(repo, "snapshots", f.read().strip())

        # -- configuration and daemon --

        def write_config(self, filename="mpoold.conf", store=None, hub=None, raw=None, workers=None, **pool):
                """Writes an INI config; pool keys override DEFAULT_POOL (None
                drops a key), workers (a dict) makes a [Workers] section. raw,
                if given, is written as it is instead."""
                path = os.path.join(self.dir, filename)
                if raw is None:
                        values = dict(DEFAULT_POOL)
                        values.update(pool)
                        lines = ["[Store]", f"ModelDir={store or self.store}"]
                        if hub:
                                lines.append(f"HuggingFaceCache={hub}")
                        lines += ["", "[Pool]"]
                        lines += [f"{k}={v}" for k, v in values.items() if v is not None]
                        if workers:
                                lines += ["", "[Workers]"] + [f"{k}={v}" for k, v in workers.items()]
                        raw = "\n".join(lines) + "\n"
                with open(path, "w") as f:
                        f.write(raw)
                return path

        def start_monitor(self):
                if self.monitor is None:
                        self.monitor = Monitor(self.suite.address, self.dir)
                        self.monitor.start()
                return self.monitor

        def daemon_command(self, program=None, many=False):
                """How to run the daemon program (suite.mpoold by default): as it
                is, or with --valgrind under valgrind, with a log of its own
                that the teardown reads. Every test that starts a daemon by
                itself starts it so, through spawn() if it can, which lets
                the teardown know how the daemon ended. many: the command
                may run more than once (the bus activates it): a log per
                process."""
                program = program or self.suite.mpoold
                if not VALGRIND:
                        return [program]
                log = os.path.join(self.valgrind_dir(), f"{os.path.basename(program)}-{len(self.valgrind_logs)}"
                                   + (".%p" if many else "") + ".log")
                self.valgrind_logs[log] = None
                # valgrind execs the tool in place: the daemon keeps the pid
                # it is spawned with.
                return [shutil.which("valgrind"), f"--log-file={log}"] + \
                        [o.format(source_root=self.suite.source_root) for o in VALGRIND_OPTIONS] + [program]

        def note_valgrind_process(self, argv, proc):
                for arg in argv:
                        if arg.startswith("--log-file=") and arg[len("--log-file="):] in self.valgrind_logs:
                                self.valgrind_logs[arg[len("--log-file="):]] = proc

        def valgrind_reports(self):
                """What valgrind found in the daemons this test ran. One
                started otherwise than by spawn() (by the bus, say) is judged
                by its log alone, as if it had been killed."""
                reports = []
                logs = []
                for log_path, proc in self.valgrind_logs.items():
                        if "%p" in log_path:
                                logs += [(path, None) for path in sorted(glob.glob(log_path.replace("%p", "*")))]
                        else:
                                logs.append((log_path, proc))
                for log_path, proc in logs:
                        try:
                                with open(log_path, errors="replace") as f:
                                        log = f.read()
                        except FileNotFoundError:
                                if proc is None:
                                        continue   # never started
                                log = ""
                        what = f"mpoold (pid {proc.pid}, exit {proc.returncode})" if proc else "mpoold"
                        report = valgrind_verdict(log, log_path, what,
                                                  killed=proc is None or proc.returncode == -signal.SIGKILL)
                        if report:
                                reports.append(report)
                return reports

        def valgrind_dir(self):
                """Where the daemons' valgrind logs go: writable by all, as a
                daemon may run as SERVICE_USER."""
                path = os.path.join(self.dir, "valgrind")
                if not os.path.isdir(path):
                        os.mkdir(path)
                        os.chmod(path, 0o1777)
                return path

        def gate_dir(self, name="gates"):
                path = os.path.join(self.dir, name)
                os.makedirs(path, exist_ok=True)
                return path

        def gate(self, name):
                """Holds the next load of model name (of a daemon started with
                gates=True) after its first LoadProgress, until released."""
                return LoadGate(os.path.join(self.gate_dir(), name.replace("/", "%")))

        def compute_gate(self, name):
                """Holds every request model name's workers run (of a daemon
                started with gates=True) until released, one per byte."""
                return LoadGate(os.path.join(self.gate_dir("compute-gates"), name.replace("/", "%")))

        def daemon(self, config=None, start=True, polkit=False, user=None, gates=False, **pool):
                """A fresh mpoold on the private bus, with the monitor already
                watching, so that nothing it emits at start-up is missed.
                With polkit it runs as SERVICE_USER, as installed, unless
                user says otherwise ("root": as the tests' own user); without
                polkit as the tests' own user unless user names one.
                gates=True runs the test build, whose loads wait at gates."""
                if polkit:
                        self.suite.ensure_polkitd()
                        if user is None:
                                user = SERVICE_USER
                if user == "root":
                        user = None
                self.start_monitor()
                if config is None:
                        config = self.write_config(**pool)
                d = Daemon(self, config, polkit=polkit, user=user, gates=gates)
                self.daemons.append(d)
                if start:
                        d.start()
                return d

        def spawn(self, args, **kwargs):
                proc = subprocess.Popen(args, **kwargs)
                self.children.append(proc)
                self.note_valgrind_process(args, proc)
                return proc

        def sync(self):
                """Every signal the daemon sent before its last reply is now in
                the monitor."""
                self.monitor.sync(self.suite.client)

        # -- teardown --

        def teardown(self):
                """Stops what the test started. The running daemons must still
                answer Status, then exit 0 on SIGTERM; a failure there fails
                the test."""
                errors = []
                for proc in self.children:
                        if proc.poll() is None and VALGRIND and proc.args and proc.args[0] == shutil.which("valgrind"):
                                # A daemon the test started by itself: asked
                                # first, so that valgrind checks its leaks.
                                proc.terminate()
                                try:
                                        proc.wait(timeout=DEADLINE)
                                except subprocess.TimeoutExpired:
                                        errors.append(f"mpoold {proc.pid} under valgrind did not exit on SIGTERM")
                        if proc.poll() is None:
                                proc.kill()
                        try:
                                proc.wait(timeout=10)
                        except subprocess.TimeoutExpired:
                                errors.append(f"child {proc.pid} did not die")
                for d in self.daemons:
                        if d.stopped or d.proc is None:
                                continue
                        try:
                                if d.proc.poll() is None:
                                        d.status()
                                d.stop()
                        except Exception as e:  # noqa: BLE001 - reported as the test's failure
                                errors.append(f"teardown of mpoold {d.pid}: {e}")
                                d.kill()
                if self.monitor:
                        self.monitor.stop()
                errors += self.sanitizer_reports()
                errors += self.valgrind_reports()
                return errors

        def sanitizer_reports(self):
                """Every sanitizer report of a program the test ran: the files
                in the report directory, and reports in the daemons' logs."""
                reports = self.suite.take_sanitizer_reports(self.reports_dir)
                for d in self.daemons:
                        log = d.log()
                        found = SANITIZER_REPORT.search(log)
                        if found:
                                reports.append(f"sanitizer report in {d.log_path}:\n{log[found.start():]}")
                return reports

        def remove(self):
                shutil.rmtree(self.dir, ignore_errors=True)

        def diagnostics(self):
                out = []
                for d in self.daemons:
                        log = d.log().splitlines()
                        out.append(f"--- mpoold log {d.log_path} (last {min(len(log), 60)} of {len(log)} lines)")
                        out += log[-60:]
                if self.monitor:
                        out.append("--- last signals")
                        out += self.monitor.tail()
                return "\n".join(out)


class Suite:
        def __init__(self, source_root, build_dir, keep=False):
                self.source_root = source_root
                self.build_dir = build_dir
                self.mpoold = os.path.join(build_dir, "mpoold")
                self.mpoold_test = os.path.join(build_dir, "mpoold-test")
                self.mkmodel = os.path.join(build_dir, "mpool-mkmodel")
                self.private_bus = os.path.join(source_root, "tests", "tools", "private-bus.sh")
                self.interface_xml = os.path.join(source_root, "dbus", "org.mpool.Manager.xml")
                self.keep = keep
                self.tmp = None
                self.bus_dir = None
                self.address = None
                self.client = None
                self.polkitd = None
                self.sanitizer_dir = None
                self.reported = set()
                self.user_sanitizer_options = {k: os.environ.get(k) for k in SANITIZER_OPTIONS}

        def sanitizer_environment(self, name):
                """Points the sanitizers' reports of every program started from
                now on to a fresh directory; returns it."""
                directory = os.path.join(self.sanitizer_dir, name)
                os.mkdir(directory)
                # Sticky and writable by all: the client also runs as nobody.
                os.chmod(directory, 0o1777)
                for variable, options in SANITIZER_OPTIONS.items():
                        parts = [options.format(source_root=self.source_root)]
                        if self.user_sanitizer_options[variable]:
                                parts.append(self.user_sanitizer_options[variable])
                        parts.append(f"log_path={directory}/report")
                        os.environ[variable] = ":".join(p for p in parts if p)
                return directory

        def take_sanitizer_reports(self, directory=None):
                """The contents of report files in directory (all test
                directories if None) not returned before."""
                reports = []
                directories = [directory] if directory else \
                        [os.path.join(self.sanitizer_dir, d) for d in sorted(os.listdir(self.sanitizer_dir))]
                for dirpath in directories:
                        for entry in sorted(os.listdir(dirpath)):
                                path = os.path.join(dirpath, entry)
                                if path in self.reported:
                                        continue
                                self.reported.add(path)
                                with open(path, errors="replace") as f:
                                        text = f.read()
                                reports.append(f"sanitizer report {path}:\n{text.rstrip()}")
                return reports

        def start(self):
                for program in (self.mpoold, self.mpoold_test, self.mkmodel):
                        if not os.access(program, os.X_OK):
                                raise RuntimeError(f"{program} is missing; run make first")
                # dbus-daemon looks up the user names of its policy when it
                # reads it: without the user, the shipped policy's rule that
                # lets SERVICE_USER own the name would be dropped.
                ensure_service_user(self.source_root)
                self.tmp = tempfile.mkdtemp(prefix="mpool-integration-")
                os.chmod(self.tmp, 0o755)
                self.sanitizer_dir = os.path.join(self.tmp, "sanitizer")
                os.mkdir(self.sanitizer_dir, 0o755)
                self.bus_dir = os.path.join(self.tmp, "bus")
                proc = subprocess.run([self.private_bus, "start", self.bus_dir], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
                if proc.returncode != 0:
                        self.bus_dir = None
                        raise RuntimeError(f"private-bus.sh start failed: {proc.stderr.strip()}")
                self.address = proc.stdout.strip().splitlines()[0]
                self.client = PyClient(self.address)

        def ensure_polkitd(self):
                """Starts polkitd on the private bus the first time a test
                needs it; a failure to start fails every test that needs it."""
                if self.polkitd is None:
                        self.polkitd = Polkitd(self)
                        self.polkitd.start()
                self.polkitd.check()
                return self.polkitd

        def stop(self):
                if self.polkitd:
                        self.polkitd.stop()
                        self.polkitd = None
                if self.client:
                        self.client.close()
                        self.client = None
                if self.bus_dir:
                        subprocess.run([self.private_bus, "stop", self.bus_dir], stdin=subprocess.DEVNULL,
                                       timeout=60)
                        self.bus_dir = None
                if self.tmp and not self.keep:
                        shutil.rmtree(self.tmp, ignore_errors=True)


class Polkitd:
        """Debian's polkitd on the private bus (it drops to its own user), with
        the checkout's actions installed and one test-only rule: the user
        nobody may use org.mpool.load on the model named granted_model, a
        name made up for this run, so the rule grants nothing elsewhere. It
        lets the tests reach the second authorization of a call (pin,
        force) with an unprivileged caller that passed the first."""

        def __init__(self, suite):
                self.suite = suite
                self.proc = None
                self.error = None
                self.token = os.urandom(8).hex()
                self.granted_model = f"polkit-granted-{self.token}"
                self.rules_path = os.path.join(POLKIT_RULES_DIR, f"10-mpool-integration-{self.token}.rules")
                self.log_path = os.path.join(suite.tmp, "polkitd.log")
                self.unique_name = None

        def start(self):
                try:
                        self._start()
                except Exception as e:
                        self.error = str(e)
                        raise

        def _start(self):
                if not os.access(POLKITD, os.X_OK):
                        raise AssertionError(f"{POLKITD} is not installed; the authorization tests need the "
                                             f"real polkitd: `make deps` installs it (Debian package polkitd)")
                if not os.path.isdir(POLKIT_RULES_DIR):
                        raise AssertionError(f"{POLKIT_RULES_DIR} is missing; is polkitd installed properly? "
                                             f"`make deps` installs it")
                shutil.copyfile(os.path.join(self.suite.source_root, "polkit", "org.mpool.policy"),
                                os.path.join(POLKIT_ACTIONS_DIR, "org.mpool.policy"))
                os.chmod(os.path.join(POLKIT_ACTIONS_DIR, "org.mpool.policy"), 0o644)

                nobody = pwd.getpwuid(NOBODY_UID).pw_name
                with open(self.rules_path, "w") as f:
                        f.write("// Written by mpool's tests/integration (harness.py); removed at the end of the run.\n"
                                "polkit.addRule(function(action, subject) {\n"
                                f"        if (action.id == \"org.mpool.load\" && subject.user == \"{nobody}\" &&\n"
                                f"            action.lookup(\"model\") == \"{self.granted_model}\")\n"
                                "                return polkit.Result.YES;\n"
                                "});\n")
                os.chmod(self.rules_path, 0o644)

                env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.suite.address)
                log = open(self.log_path, "wb")
                self.proc = subprocess.Popen([POLKITD, "--no-debug"], stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, env=env)
                log.close()
                ctl = Busctl(self.suite.address)

                def up():
                        if self.proc.poll() is not None:
                                raise AssertionError(f"polkitd exited with {self.proc.returncode}: {self.log()}")
                        return ctl.name_has_owner(POLKIT_BUS_NAME)
                wait_until(up, f"polkitd to own {POLKIT_BUS_NAME}", interval=0.05)
                self.unique_name = str(self.suite.client.bus.get_name_owner(POLKIT_BUS_NAME))

        def check(self):
                if self.error:
                        raise AssertionError(f"polkitd could not be started: {self.error}")
                if self.proc.poll() is not None:
                        raise AssertionError(f"polkitd exited with {self.proc.returncode}: {self.log()}")

        @contextlib.contextmanager
        def paused(self):
                """polkitd stopped (SIGSTOP): checks the daemon asks for stay
                unanswered until the block ends. Keep it short: mpoold gives
                up on a non-interactive check after sd-bus's default call
                timeout (25 s)."""
                self.proc.send_signal(signal.SIGSTOP)
                try:
                        yield
                finally:
                        self.proc.send_signal(signal.SIGCONT)

        def log(self):
                try:
                        with open(self.log_path, errors="replace") as f:
                                return f.read().strip()
                except OSError:
                        return ""

        def stop(self):
                if self.proc and self.proc.poll() is None:
                        self.proc.send_signal(signal.SIGCONT)
                        self.proc.terminate()
                        try:
                                self.proc.wait(timeout=DEADLINE)
                        except subprocess.TimeoutExpired:
                                self.proc.kill()
                                self.proc.wait()
                try:
                        os.unlink(self.rules_path)
                except FileNotFoundError:
                        pass


def run_in_threads(functions):
        """Runs the callables at once (released together), returns their
        results or exceptions in order."""
        results = [None] * len(functions)
        barrier = threading.Barrier(len(functions))

        def worker(i, fn):
                barrier.wait()
                try:
                        results[i] = ("ok", fn())
                except Exception as e:  # noqa: BLE001 - handed back to the caller
                        results[i] = ("error", e)
        threads = [threading.Thread(target=worker, args=(i, fn), daemon=True) for i, fn in enumerate(functions)]
        for t in threads:
                t.start()
        for t in threads:
                t.join(CALL_TIMEOUT + 30)
        return [r if r is not None else ("error", AssertionError("the call did not return")) for r in results]


def python_child_client(address, ctx):
        """A separate process that holds models for us: reads lines
        "acquire NAME" / "release NAME" on stdin and answers "ok" or
        "error NAME MESSAGE" on stdout. It prints its unique name first."""
        code = r'''
import sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
print(bus.get_unique_name(), flush=True)
for line in sys.stdin:
    cmd, name = line.split(None, 1)
    method = {"acquire": "Acquire", "release": "Release"}[cmd]
    try:
        bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager",
                          method, "s", (name.strip(),), timeout=120)
        print("ok", flush=True)
    except dbus.exceptions.DBusException as e:
        print("error", e.get_dbus_name(), e.get_dbus_message(), flush=True)
'''
        proc = ctx.spawn(["/usr/bin/python3", "-c", code, address], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        return ChildClient(proc)


class ChildClient:
        def __init__(self, proc):
                self.proc = proc
                self.unique_name = self._readline()

        def _readline(self):
                line = self.proc.stdout.readline()
                assert line, f"child client exited ({self.proc.poll()})"
                return line.strip()

        def request(self, cmd, name):
                self.proc.stdin.write(f"{cmd} {name}\n")
                self.proc.stdin.flush()
                return self._readline()

        def acquire(self, name):
                reply = self.request("acquire", name)
                assert reply == "ok", f"Acquire({name}) in the child: {reply}"

        def release(self, name):
                reply = self.request("release", name)
                assert reply == "ok", f"Release({name}) in the child: {reply}"

        def kill(self):
                self.proc.kill()
                self.proc.wait(timeout=DEADLINE)

        def exit(self):
                self.proc.stdin.close()
                self.proc.wait(timeout=DEADLINE)
