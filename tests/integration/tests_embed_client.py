# SPDX-License-Identifier: MIT
"""mpool-client embed, and load's --precision and --max-workers.

Three kinds of tests:
  - usage errors, caught before anything is sent: they run against a bus
    address where nothing listens, so that getting past the checks would
    show as status 7 rather than 2;
  - the client against a stand-in for mpoold (FAKE_EMBED) that owns
    org.mpool.Manager: what the call carries (texts, options and their
    D-Bus types), the output as lines, JSON and a table on a terminal, the
    progress bar of a load Embed waits for, Ctrl-C, and the exit status of
    each error; it answers with the fixtures' vectors
    (tests/fixtures/embed/) for their cases, so that the output is also
    checked with the fixtures' bounds;
  - THE FULL PATH against the real mpoold (test_embed_client_full_path_*):
    every case of the fixtures through mpool-client, compared with the
    reference. They skip, saying why, while the daemon's introspection
    lacks Embed; once Embed lands the skip is to be removed, so that they
    fail rather than skip."""

import json
import os
import queue
import re
import struct
import subprocess
import threading

import embed_fixtures
from harness import DEADLINE, wait_until
from tests_client import PtyRun, client_env, client_path, strip_colors
from tests_registry import complete

EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NO_MEMORY = 5
EXIT_UNREACHABLE = 7
EXIT_CANCELLED = 9
EXIT_BUSY = 10
EXIT_NOT_SUPPORTED = 14
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

# Nothing listens there: a client that got past its checks would exit 7.
NOWHERE = "unix:path=/nonexistent/mpool-embed-test/bus"

INPUT_BYTES_MAX = 32 * 1024 * 1024
TEXTS_MAX = 1 << 20


def run_client(ctx, address, *args, input=None, expect=0, env=None):
        """Runs mpool-client --address=address ARGS with pipes; input (bytes)
        on stdin; checks the exit status (None: any)."""
        proc = subprocess.run([client_path(ctx), f"--address={address}", *args],
                              input=input if input is not None else b"", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=DEADLINE * 4, env=env or client_env())
        out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        if expect is not None:
                assert proc.returncode == expect, \
                        f"mpool-client {' '.join(args)} exited with {proc.returncode}, not {expect}\n" \
                        f"stdout: {out[:2000]!r}\nstderr: {err!r}"
        return proc.returncode, out, err


def one_line(err, *words):
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
        assert "org.mpool.Error" not in lines[0] and "org.freedesktop" not in lines[0], lines[0]
        for w in words:
                assert w in lines[0], f"{w!r} not in {lines[0]!r}"
        return lines[0]


# ---------------------------------------------------------------------------
# Usage errors: exit 2 before any connection


def test_embed_client_usage_errors(ctx):
        cases = [
                (["embed"], "Too few arguments"),
                (["embed", "m"], "Too few arguments"),
                (["embed", "bad name", "text"], "Invalid model name"),
                (["embed", "org/../x", "text"], "Invalid model name"),
                (["embed", "m", "a", "-"], "must be the only text"),
                (["embed", "m", "-", "-"], "must be the only text"),
                (["--null", "embed", "m", "text"], "--null applies"),
                (["--dimensions=0", "embed", "m", "text"], "--dimensions="),
                (["--dimensions=-3", "embed", "m", "text"], "--dimensions="),
                (["--dimensions=x", "embed", "m", "text"], "--dimensions="),
                (["--dimensions=4294967296", "embed", "m", "text"], "--dimensions="),
                (["--truncation-direction=up", "embed", "m", "text"], "--truncation-direction="),
                (["--truncation-direction=", "embed", "m", "text"], "--truncation-direction="),
                (["--prompt-name=", "embed", "m", "text"], "--prompt-name="),
                (["--precision=q2", "load", "m"], "--precision="),
                (["--precision=F32", "load", "m"], "--precision="),
                (["--max-workers=0", "load", "m"], "--max-workers="),
                (["--max-workers=two", "load", "m"], "--max-workers="),
                # Options of one verb given to another.
                (["--normalize", "load", "m"], "--normalize applies to 'embed' only"),
                (["--no-normalize", "status"], "--no-normalize applies to 'embed' only"),
                (["--no-truncate", "load", "m"], "--no-truncate applies"),
                (["--truncation-direction=left", "load", "m"], "--truncation-direction applies"),
                (["--prompt-name=query", "hold", "m", "--", "true"], "--prompt-name applies"),
                (["--dimensions=8", "load", "m"], "--dimensions applies"),
                (["--null", "load", "m"], "--null applies"),
                (["--precision=q8", "embed", "m", "text"], "--precision applies to 'load' only"),
                (["--max-workers=2", "embed", "m", "text"], "--max-workers applies to 'load' only"),
                (["--keep-alive=1min", "embed", "m", "text"], "--keep-alive applies"),
        ]
        for args, words in cases:
                _, out, err = run_client(ctx, NOWHERE, *args, expect=EXIT_USAGE)
                assert out == "", (args, out)
                one_line(err, words)

        # Past the checks, the same command lines reach for the bus.
        for args in (["embed", "m", "text"], ["--dimensions=4294967295", "--truncation-direction=left",
                                                "--prompt-name=query", "--no-normalize", "--no-truncate",
                                                "embed", "m", "a", "b"],
                     ["--precision=q4", "--max-workers=3", "load", "m"]):
                run_client(ctx, NOWHERE, *args, expect=EXIT_UNREACHABLE)

        # The help names the verb and its options.
        _, out, _ = run_client(ctx, NOWHERE, "--help")
        for words in ("embed NAME TEXT...|-", "--normalize", "--no-truncate", "--truncation-direction=",
                      "--prompt-name=", "--dimensions=", "--null", "--precision=", "--max-workers="):
                assert words in out, (words, out)


def test_embed_client_checks_its_input(ctx):
        # What D-Bus cannot carry is refused, naming the text (0-based, as
        # mpoold counts) and its line.
        cases = [
                (b"ok\na\xffb\n", "Text 1 (line 2 of the input) is not valid UTF-8 at byte 1."),
                (b"\xc0\xafx\n", "Text 0 (line 1 of the input) is not valid UTF-8 at byte 0."),
                (b"a\n\xed\xa0\x80\n", "Text 1 (line 2 of the input) is not valid UTF-8 at byte 0."),
                (b"a\nb\nc\xf4\x90\x80\x80\n", "Text 2 (line 3 of the input) is not valid UTF-8 at byte 1."),
                (b"abc\xe2\x82", "Text 0 (line 1 of the input) is not valid UTF-8 at byte 3."),
                (b"ok\na\0b\n", "Text 1 (line 2 of the input) holds a NUL byte at byte 1"),
                (b"x\xef\xbf\xbe\n", "holds the noncharacter U+FFFE at byte 1"),
                (b"\xef\xb7\x90\n", "holds the noncharacter U+FDD0 at byte 0"),
        ]
        for data, words in cases:
                _, out, err = run_client(ctx, NOWHERE, "embed", "m", "-", input=data, expect=EXIT_USAGE)
                one_line(err, words)
        _, _, err = run_client(ctx, NOWHERE, "--null", "embed", "m", "-", input=b"one\0tw\xffo\0", expect=EXIT_USAGE)
        one_line(err, "Text 1 (record 2 of the input) is not valid UTF-8 at byte 2.")
        _, _, err = run_client(ctx, NOWHERE, "embed", "m", "fine", "bro\udcffken".encode("utf-8", "surrogateescape"),
                          expect=EXIT_USAGE)
        one_line(err, "Text 1 is not valid UTF-8 at byte 3.")

        # The bounds: 32 MiB of input, 2^20 texts; at them, the client goes
        # on (to a bus where nothing listens).
        big = b"a" * (INPUT_BYTES_MAX - 1) + b"\n"
        run_client(ctx, NOWHERE, "embed", "m", "-", input=big, expect=EXIT_UNREACHABLE)
        _, _, err = run_client(ctx, NOWHERE, "embed", "m", "-", input=big + b"b", expect=EXIT_USAGE)
        one_line(err, "Too much input")
        run_client(ctx, NOWHERE, "embed", "m", "-", input=b"\n" * TEXTS_MAX, expect=EXIT_UNREACHABLE)
        _, _, err = run_client(ctx, NOWHERE, "embed", "m", "-", input=b"\n" * (TEXTS_MAX + 1), expect=EXIT_USAGE)
        one_line(err, "Too many texts")

        # No text at all: nothing to ask, nothing printed.
        assert run_client(ctx, NOWHERE, "embed", "m", "-")[1] == ""
        _, out, _ = run_client(ctx, NOWHERE, "--json", "embed", "m", "-")
        assert json.loads(out) == {"name": "m", "dimensions": 0, "embeddings": []}, out


# ---------------------------------------------------------------------------
# A stand-in for mpoold

FAKE_EMBED = r"""
import json
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

sys.path.insert(0, sys.argv[2])
import embed_fixtures

BUS_NAME = MANAGER_IFACE = "org.mpool.Manager"
MODELS_PATH = "/org/mpool/Manager/models"
FIXTURES = embed_fixtures.load()
SIGNATURES = {dbus.Boolean: "b", dbus.String: "s", dbus.UInt32: "u", dbus.Int32: "i", dbus.Int64: "x",
              dbus.UInt64: "t", dbus.Byte: "y", dbus.Int16: "n", dbus.UInt16: "q", dbus.Double: "d"}
# What each model name makes the stand-in answer with.
ERRORS = {
        "missing": ("org.mpool.Error.ModelNotFound", "Model missing not found."),
        "weights-only": ("org.mpool.Error.NotSupported", "weights-only is no model mpoold can run."),
        "busy": ("org.mpool.Error.Busy", "The queue of busy is full."),
        "huge": ("org.mpool.Error.InsufficientMemory", "huge needs 9.0G, the limit is 1.0G."),
        "gone": ("org.mpool.Error.Cancelled", "gone was unloaded."),
        "denied": ("org.freedesktop.DBus.Error.AccessDenied", "Not authorized."),
        "old": ("org.freedesktop.DBus.Error.UnknownMethod", "Unknown method Embed."),
}
# Float32 values, so that the client's output can be checked exactly.
ECHO = [0.100000001490116119384765625, -3.5, 9.99999993922529029077850282192e-09, 123456.7890625, 0.0]


def say(**what):
        print(json.dumps(what), flush=True)


def value(v):
        if isinstance(v, dbus.Boolean):
                return bool(v)
        if isinstance(v, dbus.String):
                return str(v)
        if isinstance(v, dbus.Double):
                return float(v)
        return int(v)


# Without what the defaults say anyway (the client has no --truncate).
def effective(options):
        return {k: v for k, v in options.items() if (k, v) != ("truncate", True)}


def plain(options):
        return {str(k): [SIGNATURES.get(type(v), type(v).__name__), value(v)] for k, v in options.items()}


class Manager(dbus.service.Object):
        def __init__(self, bus):
                super().__init__(bus, "/org/mpool/Manager")
                self.waiting = []

        @dbus.service.signal(MANAGER_IFACE, signature="stt")
        def LoadProgress(self, name, done, total):
                pass

        @dbus.service.method(MANAGER_IFACE, in_signature="sasa{sv}", out_signature="aad",
                             async_callbacks=("reply", "error"))
        def Embed(self, name, texts, options, reply, error):
                name, texts = str(name), [str(t) for t in texts]
                say(call="Embed", name=name, texts=texts, options=plain(options))
                if name in ERRORS:
                        error(dbus.exceptions.DBusException(ERRORS[name][1], name=ERRORS[name][0]))
                elif name == "echo":
                        # Text i: its length in characters, then ECHO, then i
                        # zeros (so that lengths differ).
                        reply([[float(len(t))] + ECHO + [0.0] * i for i, t in enumerate(texts)])
                elif name == "extreme":
                        reply([[-1.7976931348623157e308, 1e-300, float("nan"), float("inf")]] * len(texts))
                elif name == "short":
                        reply([[1.0]] * (len(texts) - 1))
                elif name == "wide":
                        reply([[0.5 + k for k in range(64)], [1.0, -2.0]][: len(texts)])
                elif name == "slow":
                        self.LoadProgress(name, 0, 64 << 20)
                        self.LoadProgress(name, 32 << 20, 64 << 20)
                        self.waiting.append((texts, reply))
                        say(call="waiting")
                else:
                        self.answer_case(name, texts, options, reply, error)

        def answer_case(self, name, texts, options, reply, error):
                wanted = effective({str(k): value(v) for k, v in options.items()})
                for case in FIXTURES["cases"]:
                        if case["model"] == name and case["texts"] == texts and effective(case["options"]) == wanted:
                                if "error" in case:
                                        index = case.get("error_index")
                                        message = f"Text {index} is longer than the model takes." \
                                                if index is not None else "No such prompt."
                                        error(dbus.exceptions.DBusException(message, name=case["error"]))
                                else:
                                        reply(case["embeddings"])
                                return
                error(dbus.exceptions.DBusException(f"no case of {name} for {texts} {wanted}",
                                                    name="org.freedesktop.DBus.Error.Failed"))

        @dbus.service.method(MANAGER_IFACE, in_signature="sa{sv}", out_signature="o")
        def Load(self, name, options):
                say(call="Load", name=str(name), options=plain(options))
                return dbus.ObjectPath(f"{MODELS_PATH}/x")

        def answer(self):
                for texts, reply in self.waiting:
                        reply([[0.25, 0.5]] * len(texts))
                self.waiting = []


class Models(dbus.service.FallbackObject):
        @dbus.service.method("org.freedesktop.DBus.Properties", in_signature="ss", out_signature="v")
        def Get(self, interface, prop):
                if prop == "State":
                        return dbus.String("available")
                if prop == "MemoryBytes":
                        return dbus.UInt64(4096)
                raise dbus.exceptions.DBusException(f"No property {prop}.",
                                                    name="org.freedesktop.DBus.Error.UnknownProperty")


def on_command(fd, condition):
        line = sys.stdin.readline()
        if not line:
                loop.quit()
                return False
        if line.strip() == "answer":
                manager.answer()
        return True


bus = dbus.bus.BusConnection(sys.argv[1], mainloop=DBusGMainLoop())
manager = Manager(bus)
models = Models(bus, MODELS_PATH)
name = dbus.service.BusName(BUS_NAME, bus, do_not_queue=True)
loop = GLib.MainLoop()
GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, on_command)
say(call="ready")
loop.run()
"""


class FakeEmbed:
        """FAKE_EMBED on the private bus, in place of mpoold: it says each
        call it gets as a JSON line (name, texts, options as [signature,
        value]), read as they come (so that it never blocks on a full pipe)
        and handed out in order by next_call()."""

        def __init__(self, ctx):
                self.address = ctx.suite.address
                here = os.path.dirname(os.path.abspath(__file__))
                self.proc = ctx.spawn(["/usr/bin/python3", "-s", "-E", "-B", "-c", FAKE_EMBED, self.address, here],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                self.calls = queue.Queue()
                threading.Thread(target=self._read, daemon=True).start()
                assert self.next_call() == {"call": "ready"}

        def _read(self):
                for line in self.proc.stdout:
                        self.calls.put(json.loads(line))
                self.calls.put(None)

        def next_call(self):
                try:
                        call = self.calls.get(timeout=DEADLINE)
                except queue.Empty:
                        raise AssertionError("the stand-in for mpoold said nothing") from None
                assert call is not None, f"the stand-in for mpoold exited with {self.proc.poll()}"
                return call

        def command(self, text):
                self.proc.stdin.write(text + "\n")
                self.proc.stdin.flush()


def float32(x):
        return struct.unpack("<f", struct.pack("<f", x))[0]


def test_embed_client_sends_texts_and_options(ctx):
        fake = FakeEmbed(ctx)

        run_client(ctx, fake.address, "embed", "echo", "hello", "wörld")
        assert fake.next_call() == {"call": "Embed", "name": "echo", "texts": ["hello", "wörld"], "options": {}}

        # Each option with the type of the contract.
        run_client(ctx, fake.address, "--normalize", "--no-truncate", "--truncation-direction=left",
              "--prompt-name=query", "--dimensions=7", "embed", "echo", "x")
        assert fake.next_call()["options"] == {
                "normalize": ["b", True], "truncate": ["b", False], "truncation_direction": ["s", "left"],
                "prompt_name": ["s", "query"], "dimensions": ["u", 7]}
        run_client(ctx, fake.address, "embed", "echo", "x", "--no-normalize", "--truncation-direction=right",
              "--dimensions=4294967295")
        assert fake.next_call()["options"] == {
                "normalize": ["b", False], "truncation_direction": ["s", "right"], "dimensions": ["u", 4294967295]}
        # The last of --normalize and --no-normalize counts.
        run_client(ctx, fake.address, "--no-normalize", "--normalize", "embed", "echo", "x")
        assert fake.next_call()["options"] == {"normalize": ["b", True]}

        # Texts that look like options, after "--"; the empty text.
        run_client(ctx, fake.address, "embed", "echo", "--", "-n", "--json", "")
        assert fake.next_call()["texts"] == ["-n", "--json", ""]

        # From stdin: one text per line, empty lines included, the last one
        # without a newline too; "\r" is the text's own.
        run_client(ctx, fake.address, "embed", "echo", "-", input="one\n\ntwo words\r\nlast".encode())
        assert fake.next_call()["texts"] == ["one", "", "two words\r", "last"]
        run_client(ctx, fake.address, "embed", "echo", "-", input=b"\n")
        assert fake.next_call()["texts"] == [""]
        # With --null, texts may hold newlines.
        run_client(ctx, fake.address, "--null", "embed", "echo", "-", input=b"line 1\nline 2\0\0third\0")
        assert fake.next_call()["texts"] == ["line 1\nline 2", "", "third"]
        run_client(ctx, fake.address, "--null", "embed", "echo", "-", input=b"no terminator")
        assert fake.next_call()["texts"] == ["no terminator"]

        # load's options.
        run_client(ctx, fake.address, "load", "m", "--precision=q8", "--max-workers=3")
        call = fake.next_call()
        assert call == {"call": "Load", "name": "m", "options": {"precision": ["s", "q8"], "max_workers": ["u", 3]}}, \
                call
        for precision in ("f32", "f16", "q4"):
                run_client(ctx, fake.address, f"--precision={precision}", "load", "m")
                assert fake.next_call()["options"] == {"precision": ["s", precision]}
        run_client(ctx, fake.address, "load", "m")
        assert fake.next_call()["options"] == {}


def test_embed_client_output(ctx):
        fake = FakeEmbed(ctx)
        echo = [float32(x) for x in (0.1, -3.5, 1e-8, 123456.789, 0.0)]

        # Through a pipe: every component, one line per text, as many digits
        # as give the float32 back.
        _, out, err = run_client(ctx, fake.address, "embed", "echo", "hello", "wörld")
        assert err == ""
        assert out == "5 0.100000001 -3.5 9.99999994e-09 123456.789 0\n" \
                      "5 0.100000001 -3.5 9.99999994e-09 123456.789 0 0\n", out
        for line in out.splitlines():
                assert [float32(float(x)) for x in line.split()][1:6] == echo, line
        # A decimal point whatever the locale.
        _, out2, _ = run_client(ctx, fake.address, "embed", "echo", "hello", "wörld",
                           env=client_env(LC_ALL="C.UTF-8", LC_NUMERIC="C.UTF-8"))
        assert out2 == out

        # JSON: the model's name, the dimensions, the vectors.
        for mode in ("--json", "--json=pretty"):
                _, out, _ = run_client(ctx, fake.address, mode, "embed", "echo", "a", "bc", "")
                j = json.loads(out)
                assert j["name"] == "echo" and j["dimensions"] == 6 and len(j["embeddings"]) == 3, j
                assert [len(v) for v in j["embeddings"]] == [6, 7, 8], j
                assert [float32(x) for x in j["embeddings"][1][1:6]] == echo, j
                assert [v[0] for v in j["embeddings"]] == [1, 2, 0], j
        assert out.count("\n") > 3     # pretty

        # Numbers at the ends of what a double holds, and what JSON cannot
        # say (null), on a terminal wide enough for all of them.
        _, out, _ = run_client(ctx, fake.address, "embed", "extreme", "x")
        assert out == "-1.79769313e+308 1e-300 nan inf\n", out
        _, out, _ = run_client(ctx, fake.address, "--json", "embed", "extreme", "x")
        assert json.loads(out)["embeddings"] == [[-1.79769313e+308, 1e-300, None, None]], out
        term = PtyRun([client_path(ctx), f"--address={fake.address}", "embed", "extreme", "x"],
                      client_env(LC_ALL="C.UTF-8", TERM="xterm"), columns=400)
        assert term.wait() == 0, term.output
        row = strip_colors(term.output.decode()).replace("\r", "").splitlines()[1]
        assert row.split()[:3] == ["0", "4", "nan"] and row.endswith(" 0.0000 nan inf"), row
        assert row.split()[3].startswith("-1797693134862315") and row.split()[3].endswith(".0000"), row

        # A reply that does not match the texts is a failure, not output.
        _, out, err = run_client(ctx, fake.address, "embed", "short", "a", "b", expect=EXIT_FAILURE)
        assert out == ""
        one_line(err, "mpoold sent 1 vectors for 2 texts")

        # On a terminal: a table, each vector cut to the width.
        term = PtyRun([client_path(ctx), f"--address={fake.address}", "embed", "wide", "a", "b"],
                      client_env(LC_ALL="C.UTF-8", TERM="xterm"), columns=72)
        assert term.wait() == 0, term.output
        lines = strip_colors(term.output.decode()).replace("\r", "").splitlines()
        assert lines[0].split() == ["TEXT", "DIMS", "NORM", "VECTOR"], lines
        assert lines[1].split()[:3] == ["0", "64", f"{sum((0.5 + k) ** 2 for k in range(64)) ** 0.5:.4f}"], lines
        assert lines[1].split()[3:6] == ["0.5000", "1.5000", "2.5000"] and lines[1].endswith(" …"), lines
        assert len(lines[1]) < 72, lines
        assert lines[2].split() == ["1", "2", "2.2361", "1.0000", "-2.0000"], lines
        term = PtyRun([client_path(ctx), f"--address={fake.address}", "--no-legend", "embed", "wide", "a"],
                      client_env(LC_ALL="C", TERM="xterm"), columns=40)
        assert term.wait() == 0, term.output
        lines = strip_colors(term.output.decode()).replace("\r", "").splitlines()
        assert len(lines) == 1 and lines[0].startswith("0 64 ") and lines[0].endswith(" ..."), lines


def test_embed_client_exit_status_per_error(ctx):
        fake = FakeEmbed(ctx)
        cases = [
                ("missing", EXIT_NOT_FOUND, "Model missing not found."),
                ("weights-only", EXIT_NOT_SUPPORTED, "mpoold cannot run this model"),
                ("busy", EXIT_BUSY, "busy"),
                ("huge", EXIT_NO_MEMORY, "Not enough memory for model huge"),
                ("gone", EXIT_CANCELLED, "Embedding with model gone was cancelled: gone was unloaded."),
                ("denied", 4, "Permission denied to embed with model denied"),
                ("old", EXIT_FAILURE, "does not support it"),
        ]
        for name, status, words in cases:
                _, out, err = run_client(ctx, fake.address, "embed", name, "text", expect=status)
                assert out == "", (name, out)
                one_line(err, words)
        # mpoold's InvalidArgs is a usage error, in its own words.
        c = embed_fixtures.case(embed_fixtures.load(), "f32-bare/no-truncate-too-long")
        _, out, err = run_client(ctx, fake.address, "embed", c["model"], *embed_fixtures.client_flags(c["options"]),
                            "--", *c["texts"], expect=EXIT_USAGE)
        embed_fixtures.check_error(c, "org.freedesktop.DBus.Error.InvalidArgs",
                                   one_line(err, "Cannot embed with model f32-bare: Text 1 is longer"))


def test_embed_client_shows_the_load_and_ends_on_ctrl_c(ctx):
        fake = FakeEmbed(ctx)
        argv = [client_path(ctx), f"--address={fake.address}", "embed", "slow", "a", "b"]

        # Embed waits for the load: the bar shows its progress, then the
        # vectors come.
        term = PtyRun(argv, client_env(LC_ALL="C.UTF-8", TERM="xterm"))
        term.read_until(lambda out: b"Loading slow" in out and b"32.0M/64.0M" in out, "the progress bar")
        assert fake.next_call()["texts"] == ["a", "b"]
        assert fake.next_call() == {"call": "waiting"}
        fake.command("answer")
        assert term.wait() == 0, term.output
        out = strip_colors(term.output.decode())
        assert "\x1b[K" in term.output.decode() and " 50% 32.0M/64.0M" in out, out
        assert re.search(r"^ +1 +2 0\.5590 0\.2500 0\.5000$", out.replace("\r", ""), re.M), out

        # Ctrl-C ends the wait: 130, nothing printed.
        term = PtyRun(argv, client_env(LC_ALL="C.UTF-8", TERM="xterm"))
        term.read_until(lambda out: b"Loading slow" in out, "the progress bar")
        assert fake.next_call()["texts"] == ["a", "b"]
        assert fake.next_call() == {"call": "waiting"}
        term.type(b"\x03")
        assert term.wait() == EXIT_INTERRUPTED, term.output
        assert "TEXT" not in strip_colors(term.output.decode()), term.output

        # Through pipes: no bar, only the vectors.
        proc = ctx.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=client_env())
        assert fake.next_call()["texts"] == ["a", "b"]
        assert fake.next_call() == {"call": "waiting"}
        fake.command("answer")
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0 and out == b"0.25 0.5\n0.25 0.5\n" and err == b"", (proc.returncode, out, err)


def test_embed_client_prints_the_fixtures_vectors(ctx):
        """Every case of the fixtures through the client, answered by the
        stand-in with the case's own vectors: what the client prints,
        parsed back, meets the fixtures' bounds, and each error case gives
        its status with the text named."""
        fake = FakeEmbed(ctx)
        run_fixture_cases(ctx, fake.address)


def run_fixture_cases(ctx, address, models=None):
        fixtures = embed_fixtures.load()
        checked = 0
        for c in fixtures["cases"]:
                if models is not None and c["model"] not in models:
                        continue
                args = ["embed", c["model"], *embed_fixtures.client_flags(c["options"]), "--", *c["texts"]]
                if "error" in c:
                        _, out, err = run_client(ctx, address, *args, expect=EXIT_USAGE)
                        assert out == "", (c["name"], out)
                        embed_fixtures.check_error(c, c["error"], one_line(err))
                else:
                        # The pipe's form, and JSON.
                        _, out, _ = run_client(ctx, address, *args)
                        vectors = [[float(x) for x in line.split()] for line in out.splitlines()]
                        embed_fixtures.check_vectors(c, vectors)
                        _, out, _ = run_client(ctx, address, "--json", *args)
                        embed_fixtures.check_vectors(c, json.loads(out)["embeddings"])
                checked += 1
        assert checked > 0


def test_embed_client_checker_can_fail(ctx):
        """The checker itself: it takes the fixtures' own vectors and refuses
        one that is off by more than the bounds, or of another length."""
        fixtures = embed_fixtures.load()
        c = embed_fixtures.case(fixtures, "f32-mean-normalize/default")
        embed_fixtures.check_vectors(c, c["embeddings"])
        for change in (lambda v: v.__setitem__(3, v[3] + 2e-4),          # one component off
                       lambda v: v.__setitem__(slice(None), [x * 1.01 for x in v]),   # scaled
                       lambda v: v.pop(),                                       # shorter
                       lambda v: v.__setitem__(0, float("nan"))):
                vectors = [list(v) for v in c["embeddings"]]
                change(vectors[2])
                try:
                        embed_fixtures.check_vectors(c, vectors)
                except AssertionError as e:
                        assert "text 2 (punctuation" in str(e), e
                else:
                        raise AssertionError("the checker took a wrong vector")
        try:
                embed_fixtures.check_vectors(c, c["embeddings"][:-1])
        except AssertionError:
                pass
        else:
                raise AssertionError("the checker took too few vectors")
        e = embed_fixtures.case(fixtures, "f32-mean-normalize/no-truncate-too-long")
        embed_fixtures.check_error(e, e["error"], "text 1 is too long")
        for name, message in ((e["error"], "text 0 is too long"), ("org.mpool.Error.Busy", "text 1")):
                try:
                        embed_fixtures.check_error(e, name, message)
                except AssertionError:
                        pass
                else:
                        raise AssertionError(f"the checker took {name}: {message}")
        # Every fixture model is a folder a store can hold.
        for model in fixtures["models"]:
                directory = embed_fixtures.install_model(ctx.store, model, name=f"org/{model}")
                for f in ("model.safetensors", "config.json", "tokenizer.json"):
                        assert os.path.isfile(os.path.join(directory, f)), (model, f)


def test_embed_client_completion(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        assert complete(ctx, "mpool-client em") == ["embed"]
        assert complete(ctx, f"mpool-client --address={d.address} embed ") == ["alpha"]
        assert complete(ctx, f"mpool-client --address={d.address} embed alpha ") == []
        assert complete(ctx, "mpool-client embed alpha -- --") == []
        assert complete(ctx, "mpool-client embed alpha --no-t") == ["--no-truncate"]
        assert complete(ctx, "mpool-client embed alpha --truncation-direction=") == ["left", "right"]
        assert complete(ctx, "mpool-client embed alpha --truncation-direction ") == ["left", "right"]
        assert complete(ctx, "mpool-client load alpha --precision=") == ["f16", "f32", "q4", "q8"]
        assert complete(ctx, "mpool-client load alpha --precision ") == ["f16", "f32", "q4", "q8"]
        assert complete(ctx, "mpool-client load alpha --max-w") == ["--max-workers="]
        # The value of "--dimensions 8" is no argument of the verb's.
        assert complete(ctx, f"mpool-client --address={d.address} embed --dimensions 8 ") == ["alpha"]


# ---------------------------------------------------------------------------
# The full path, against the real mpoold.


def test_embed_client_full_path_against_fixtures(ctx):
        for model in embed_fixtures.load()["models"]:
                embed_fixtures.install_model(ctx.store, model)
        d = ctx.daemon()
        run_fixture_cases(ctx, d.address)

        # Texts from stdin, as lines and NUL-separated, give the same.
        fixtures = embed_fixtures.load()
        c = embed_fixtures.case(fixtures, "f32-mean-normalize/default")
        lines = [t for t in c["texts"] if "\n" not in t]
        _, out, _ = run_client(ctx, d.address, "--json", "embed", c["model"], "-",
                          input="".join(t + "\n" for t in lines).encode())
        want = {"embeddings": [v for t, v in zip(c["texts"], c["embeddings"]) if "\n" not in t],
                "text_names": [n for t, n in zip(c["texts"], c["text_names"]) if "\n" not in t],
                "texts": lines, "name": c["name"], "options": {}}
        embed_fixtures.check_vectors(want, json.loads(out)["embeddings"])
        _, out, _ = run_client(ctx, d.address, "--json", "--null", "embed", c["model"], "-",
                          input="".join(t + "\0" for t in c["texts"]).encode())
        embed_fixtures.check_vectors(c, json.loads(out)["embeddings"])


def test_embed_client_full_path_lazy_load_and_precision(ctx):
        fixtures = embed_fixtures.load()
        model = "f32-mean-normalize"
        embed_fixtures.install_model(ctx.store, model)
        d = ctx.daemon()
        c = embed_fixtures.case(fixtures, f"{model}/default")

        # Not loaded: the call loads it, with LoadProgress, and the bar shows
        # on a terminal.
        assert d.model(model)["state"] == "available"
        term = PtyRun([client_path(ctx), f"--address={d.address}", "embed", model, "--", *c["texts"]],
                      client_env(LC_ALL="C.UTF-8", TERM="xterm"))
        assert term.wait() == 0, term.output
        out = strip_colors(term.output.decode())
        assert f"Loading {model}" in out and "TEXT DIMS" in out, out
        wait_until(lambda: d.model(model)["state"] == "loaded", f"{model} to be loaded")

        # Loaded again in each precision: within the bounds of the F32
        # reference.
        for precision, bound in fixtures["models"][model]["precision_cosine_min"].items():
                run_client(ctx, d.address, "unload", model)
                run_client(ctx, d.address, f"--precision={precision}", "--max-workers=1", "load", model)
                _, out, _ = run_client(ctx, d.address, "--json", "embed", model, "--", *c["texts"])
                embed_fixtures.check_vectors(c, json.loads(out)["embeddings"], cosine_min=bound, abs_error_max=None)
