# SPDX-License-Identifier: MIT
"""OpenFiles: the weights handed to a program as descriptors, with a hold."""

import fcntl
import mmap
import os
import subprocess
import sys

from harness import DEADLINE, PyClient, expect_dbus_error, model_files


def open_files(client, name):
        """OpenFiles through python-dbus: [(name, fd)], the fds ours to close."""
        reply = client.bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager",
                                         "OpenFiles", "s", (name,), timeout=120)
        return [(str(n), fd.take()) for n, fd in reply]


def mapped_bytes(fd):
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
                return bytes(m)


def check_files(directory, files):
        weights = [os.path.basename(f) for f in model_files(directory)]
        assert sorted(n for n, _ in files) == weights, (files, weights)
        for name, fd in files:
                assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY, f"{name} is not read-only"
                with open(os.path.join(directory, name), "rb") as f:
                        assert mapped_bytes(fd) == f.read(), f"{name}: the descriptor maps other bytes"
                try:
                        os.write(fd, b"x")
                        raise AssertionError(f"{name}: written through the descriptor")
                except OSError:
                        pass


def test_open_files_maps_the_weights_and_holds(ctx):
        single = ctx.model("alpha", size="4M")
        sharded = ctx.model("org/beta", size="6M", shards=3)
        d = ctx.daemon()
        client = PyClient(d.address)
        for name, directory in (("alpha", single), ("org/beta", sharded)):
                files = open_files(client, name)
                try:
                        check_files(directory, files)
                finally:
                        for _, fd in files:
                                os.close(fd)
                m = d.model(name)
                assert m["state"] == "loaded" and m["holds"] == 1 and m["expires_at_usec"] == 0, m

        # Each caller's descriptor has its own offset.
        first, second = open_files(client, "alpha"), open_files(client, "alpha")
        try:
                os.read(first[0][1], 1000)
                assert os.lseek(second[0][1], 0, os.SEEK_CUR) == 0, "the descriptors share one file offset"
        finally:
                for _, fd in first + second:
                        os.close(fd)
        assert d.model("alpha")["holds"] == 3

        # Release drops the holds one by one, as after Acquire.
        for holds in (2, 1, 0):
                client.call("Release", "s", ("alpha",))
                assert d.model("alpha")["holds"] == holds
        # Memory is the model's once, however many descriptors are out.
        pool, models = client.status()
        assert pool["memory_used"] == sum(m["memory_bytes"] for m in models.values()), (pool, models)
        client.close()


def test_open_files_hold_goes_with_the_caller(ctx):
        ctx.model("alpha", size="4M")
        d = ctx.daemon(IdleTimeoutSec="300")
        code = r'''
import sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
files = bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "OpenFiles", "s",
                          ("alpha",), timeout=120)
print(len(files), flush=True)
sys.stdin.read()
'''
        proc = ctx.spawn([sys.executable, "-c", code, d.address], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
        assert proc.stdout.readline().strip() == "1"
        assert d.model("alpha")["holds"] == 1
        proc.kill()
        proc.wait(timeout=DEADLINE)
        d.wait_model("alpha", lambda m: m["holds"] == 0, "the hold dropped once the caller left")
        assert d.model("alpha")["state"] == "loaded"


def test_open_files_refusals(ctx):
        ctx.model("alpha", size="4M")
        ctx.model("many", size="4M", shards=17, tensors=17)
        broken = ctx.model("broken", size="1M")
        with open(os.path.join(broken, "model.safetensors"), "r+b") as f:
                f.truncate(4)
        d = ctx.daemon()
        client = PyClient(d.address)
        expect_dbus_error("org.freedesktop.DBus.Error.InvalidArgs", open_files, client, "../etc")
        expect_dbus_error("org.freedesktop.DBus.Error.InvalidArgs", open_files, client, "")
        expect_dbus_error("org.mpool.Error.ModelNotFound", open_files, client, "nothing")
        expect_dbus_error("org.mpool.Error.InvalidModel", open_files, client, "broken")
        # More files than one message may carry: refused, and no hold is left.
        expect_dbus_error("org.mpool.Error.LimitsExceeded", open_files, client, "many")
        m = d.model("many")
        assert m["holds"] == 0, m
        # The daemon serves on.
        files = open_files(client, "alpha")
        for _, fd in files:
                os.close(fd)
        client.close()


def test_client_hold_hands_files_to_its_command(ctx):
        from tests_client import run
        directory = ctx.model("org/beta", size="6M", shards=2)
        d = ctx.daemon()
        check = os.path.join(ctx.dir, "check.py")
        with open(check, "w") as f:
                f.write(r'''
import mmap, os, sys
assert os.environ["MPOOL_FDS_PID"] == str(os.getpid()), os.environ
names = os.environ["MPOOL_FDNAMES"].split(":")
assert int(os.environ["MPOOL_FDS"]) == len(names), os.environ
for i, name in enumerate(names):
    with mmap.mmap(3 + i, 0, prot=mmap.PROT_READ) as m, open(os.path.join(sys.argv[1], name), "rb") as f:
        assert bytes(m) == f.read(), name
# Nothing else leaked in: the descriptors stop where MPOOL_FDS says.
try:
    os.fstat(3 + len(names))
    sys.exit(9)
except OSError:
    pass
print(" ".join(names))
''')
        proc = run(ctx, d, "hold", "--files", "org/beta", "--", sys.executable, check, directory)
        names = [os.path.basename(f) for f in model_files(directory)]
        assert sorted(proc.stdout.split()) == names, proc.stdout
        assert d.model("org/beta")["holds"] == 0
        # --files means something to hold only.
        run(ctx, d, "load", "--files", "org/beta", expect=2)
