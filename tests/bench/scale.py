#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Helpers of scale.sh.

scale.py store SOURCE_MODEL DIR N
    Fills DIR with N models, each a folder of its own holding its own copy
    of SOURCE_MODEL's files (as a store filled by hand or by Pull looks):
    one in eight under an organisation ("org-K/model-NNNN"), the rest at the
    top ("model-NNNN").

scale.py start LOG -- COMMAND...
    Starts COMMAND with NOTIFY_SOCKET set to a datagram socket of its own,
    its stderr into LOG, and waits for READY=1: prints "pid=P ready_ms=T
    user_ms=U system_ms=S", T from just before the exec to the datagram, U
    and S the CPU time COMMAND had used by then. Leaves COMMAND running.

scale.py reply-size ADDRESS
    The size in bytes of a Status reply on the wire (GDBus's serialization
    of the same message).
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def make_store(source, directory, n):
    files = sorted(os.listdir(source))
    os.makedirs(directory, exist_ok=True)
    for i in range(n):
        name = f"model-{i:04d}"
        if i % 8 == 7:
            name = f"org-{i % 61}/{name}"
        folder = os.path.join(directory, name)
        os.makedirs(folder)
        for f in files:
            shutil.copyfile(os.path.join(source, f), os.path.join(folder, f))


def start(log, command):
    tmp = tempfile.mkdtemp(prefix="scale-notify-")
    path = os.path.join(tmp, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    with open(log, "ab") as err:
        t0 = time.monotonic()
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err)
    sock.settimeout(0.2)
    try:
        while True:
            try:
                data = sock.recv(4096)
            except socket.timeout:
                if process.poll() is not None:
                    sys.exit(f"{command[0]} exited with status {process.returncode} before READY=1 (see {log})")
                if time.monotonic() - t0 > 120:
                    process.kill()
                    sys.exit("no READY=1 within 120 s")
                continue
            if b"READY=1" in data.split(b"\n"):
                t1 = time.monotonic()
                break
    finally:
        sock.close()
        shutil.rmtree(tmp)
    # The CPU time it took, less moved by other tenants than the wall clock
    # (threads included: the loop thread does the start-up's work).
    with open(f"/proc/{process.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    user_ms, system_ms = int(fields[11]) * 1e3 / hz, int(fields[12]) * 1e3 / hz
    print(f"pid={process.pid} ready_ms={(t1 - t0) * 1e3:.1f} user_ms={user_ms:.0f} system_ms={system_ms:.0f}",
          flush=True)


def reply_size(address):
    from gi.repository import Gio

    connection = Gio.DBusConnection.new_for_address_sync(
        address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION,
        None, None)
    call = Gio.DBusMessage.new_method_call("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "Status")
    reply, _ = connection.send_message_with_reply_sync(call, Gio.DBusSendMessageFlags.NONE, 60000, None)
    print(len(reply.to_blob(Gio.DBusCapabilityFlags.NONE)))


def main():
    verb = sys.argv[1]
    if verb == "store":
        make_store(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif verb == "start":
        assert sys.argv[3] == "--"
        start(sys.argv[2], sys.argv[4:])
    elif verb == "reply-size":
        reply_size(sys.argv[2])
    else:
        sys.exit(f"unknown verb {verb}")


if __name__ == "__main__":
    main()
