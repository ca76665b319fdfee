# SPDX-License-Identifier: MIT
"""Register and Remove: models added from a directory elsewhere and kept
across restarts, models deleted from the store or unregistered, what is
refused and why, the source and revision Status reports, authorization by
polkit, and mpool-client's rm and register.

Every wait is for a real event (a reply, a signal, a Status value)."""

import json
import os
import pwd
import struct
import subprocess
import threading

import dbus

from harness import (DEADLINE, ERROR_CANCELLED, ERROR_INVALID_ARGS, ERROR_INVALID_MODEL, ERROR_MODEL_NOT_FOUND,
                     MODEL_IFACE, PROPERTIES_IFACE, SERVICE_USER, PyClient, expect_dbus_error, load_options,
                     model_path, python_child_client, wait_until)
from tests_client import check_error, client_argv, client_env, run, run_json
from tests_polkit import ACCESS_DENIED, INTERACTIVE_REQUIRED, NobodyClient, assert_error, call_spec, \
        check_privileged, variant_options
from tests_pull import FakeHub, make_repo
from tests_pull_daemon import hub_daemon, pull, wait_finished
from tests_watch import added, check_unknown, managed_model_paths, removed, wait_added, wait_removed

ERROR_MODEL_EXISTS = "org.mpool.Error.ModelExists"
ERROR_BUSY = "org.mpool.Error.Busy"
ERROR_NOT_SUPPORTED = "org.freedesktop.DBus.Error.NotSupported"
ACTION_MANAGE_MODELS = "org.mpool.manage-models"
REGISTRY = ".registered"
TRASH = ".trash"

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INVALID_MODEL = 6
EXIT_BUSY = 10
EXIT_EXISTS = 13


def register(d, name, path, **options):
        return d.py.call("Register", "ssa{sv}", (name, path, load_options(**options)))


def remove(d, name, **options):
        return d.py.call("Remove", "sa{sv}", (name, load_options(**options)))


def outside_model(ctx, relative, size="1M", **kwargs):
        """A valid model in a directory outside the store; returns its path."""
        directory = os.path.join(ctx.dir, "elsewhere", relative)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        ctx.mkmodel(directory, size=size, **kwargs)
        return directory


def registry_entries(ctx):
        directory = os.path.join(ctx.store, REGISTRY)
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def registered_path(ctx, entry):
        with open(os.path.join(ctx.store, REGISTRY, entry)) as f:
                return f.read()


def files_under(directory):
        out = []
        for dirpath, dirnames, filenames in os.walk(directory):
                for name in filenames + [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]:
                        out.append(os.path.relpath(os.path.join(dirpath, name), directory))
        return sorted(out)


def trash_is_empty(ctx):
        trash = os.path.join(ctx.store, TRASH)
        return not os.path.exists(trash) or not os.listdir(trash)


# ---------------------------------------------------------------------------
# Register.

def test_registry_register_refuses_bad_paths(ctx):
        ctx.model("taken", size="1M")
        ctx.hf_model("acme/cached", size="1M")
        secret = os.path.join(ctx.dir, "secret")
        with open(secret, "w") as f:
                f.write("mpool-registry-test-secret")
        d = ctx.daemon(config=ctx.write_config(hub=ctx.hub))
        good = outside_model(ctx, "good")

        # Relative, also through busctl (a path the daemon cannot place).
        message = expect_dbus_error(ERROR_INVALID_ARGS, register, d, "m", "elsewhere/good")
        assert "absolute" in message, message
        # Missing.
        message = expect_dbus_error(ERROR_MODEL_NOT_FOUND, register, d, "m", os.path.join(ctx.dir, "nothing"))
        assert "does not exist" in message, message
        # A file.
        message = expect_dbus_error(ERROR_INVALID_ARGS, register, d, "m", secret)
        assert "not a directory" in message, message
        # A directory without a model.
        empty = os.path.join(ctx.dir, "empty")
        os.makedirs(empty)
        message = expect_dbus_error(ERROR_INVALID_MODEL, register, d, "m", empty)
        assert "has neither model.safetensors nor" in message, message
        # A model whose weights lead out of its directory.
        escaping = os.path.join(ctx.dir, "escaping")
        os.makedirs(escaping)
        os.symlink("../secret", os.path.join(escaping, "model.safetensors"))
        message = expect_dbus_error(ERROR_INVALID_MODEL, register, d, "m", escaping)
        assert "leads out of" in message and "mpool-registry-test-secret" not in message, message
        os.symlink(secret, os.path.join(empty, "model.safetensors"))
        message = expect_dbus_error(ERROR_INVALID_MODEL, register, d, "m", empty)
        assert "leads out of" in message, message
        # Weights whose header is not safetensors.
        broken = os.path.join(ctx.dir, "broken")
        os.makedirs(broken)
        with open(os.path.join(broken, "model.safetensors"), "wb") as f:
                f.write(struct.pack("<Q", 16) + b"not json at all!")
        message = expect_dbus_error(ERROR_INVALID_MODEL, register, d, "m", broken)
        assert "model.safetensors" in message, message
        # Inside the store itself.
        message = expect_dbus_error(ERROR_INVALID_ARGS, register, d, "m", os.path.join(ctx.store, "taken"))
        assert "inside the model directory" in message, message
        # Names known already: ModelDir, the cache.
        message = expect_dbus_error(ERROR_MODEL_EXISTS, register, d, "taken", good)
        assert "taken exists already" in message, message
        message = expect_dbus_error(ERROR_MODEL_EXISTS, register, d, "acme/cached", good)
        assert "Hugging Face cache" in message, message
        # Bad names and options.
        expect_dbus_error(ERROR_INVALID_ARGS, register, d, "../x", good)
        expect_dbus_error(ERROR_INVALID_ARGS, register, d, "a/b/c", good)
        message = expect_dbus_error(ERROR_INVALID_ARGS, register, d, "m", good, colour="red")
        assert "colour" in message, message

        # None of it left a trace.
        assert registry_entries(ctx) == [], registry_entries(ctx)
        assert set(d.status()[1]) == {"taken", "acme/cached"}, d.status()[1]
        assert not added(ctx, "m")

        # The same directory under a free name is fine, once.
        assert register(d, "m", good) is None
        expect_dbus_error(ERROR_MODEL_EXISTS, register, d, "m", good)
        assert registry_entries(ctx) == ["m"]


def test_registry_register_load_and_restart(ctx):
        directory = outside_model(ctx, "llm", size="2M")
        d = ctx.daemon()

        assert register(d, "acme/llm", directory) is None
        props = wait_added(ctx, "acme/llm")
        assert props["State"] == "available" and props["Source"] == "local" and props["Revision"] == "", props
        assert props["SizeBytes"] >= 2 * 1024 * 1024, props
        assert registry_entries(ctx) == ["acme--llm"]
        assert registered_path(ctx, "acme--llm") == directory + "\n"
        m = d.model("acme/llm")
        assert m["source"] == "local" and m["revision"] == "" and m["state"] == "available", m

        assert d.load("acme/llm") == model_path("acme/llm")
        m = d.model("acme/llm")
        assert m["state"] == "loaded" and m["memory_bytes"] > 0 and m["source"] == "local", m
        (props,) = d.ctl.call("GetAll", "s", MODEL_IFACE, path=model_path("acme/llm"), iface=PROPERTIES_IFACE)
        assert props["Source"] == "local" and props["Revision"] == "", props

        # The registration outlives the daemon.
        d.stop()
        d2 = ctx.daemon()
        m = d2.model("acme/llm")
        assert m is not None and m["state"] == "available" and m["source"] == "local", m
        assert model_path("acme/llm") in managed_model_paths(d2)
        assert d2.load("acme/llm") == model_path("acme/llm")
        # Its files stayed where they were: nothing was copied into the store.
        assert not os.path.exists(os.path.join(ctx.store, "acme")), os.listdir(ctx.store)


def test_registry_register_resolves_symlinks_in_the_path(ctx):
        real = outside_model(ctx, "real/model")
        link = os.path.join(ctx.dir, "link")
        os.symlink(os.path.join(ctx.dir, "elsewhere", "real"), link)
        d = ctx.daemon()

        assert register(d, "linked", os.path.join(link, "model")) is None
        assert registered_path(ctx, "linked") == real + "\n"
        wait_added(ctx, "linked")
        assert d.load("linked") == model_path("linked")
        d.unload("linked")

        # A symlink put on the registered way later makes the model invalid
        # (checked at the next look: a restart) rather than followed.
        d.stop()
        moved = os.path.join(ctx.dir, "moved")
        os.rename(os.path.join(ctx.dir, "elsewhere", "real"), moved)
        os.symlink(moved, os.path.join(ctx.dir, "elsewhere", "real"))
        d2 = ctx.daemon()
        m = d2.model("linked")
        assert m["state"] == "error" and "symlink" in m["error"], m
        message = expect_dbus_error(ERROR_INVALID_MODEL, d2.py.load, "linked")
        assert "Register it again" in message, message


def test_registry_escaping_symlink_inside_a_registered_model(ctx):
        """The registered directory is the model's root: a symlink in it that
        leads out is refused at load, as in the model directory."""
        directory = outside_model(ctx, "sharded", size="3M", shards=3)
        other = outside_model(ctx, "other", size="1M")
        d = ctx.daemon()
        assert register(d, "sharded", directory) is None
        wait_added(ctx, "sharded")

        shard = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))[0]
        os.unlink(os.path.join(directory, shard))
        os.symlink(os.path.join(other, "model.safetensors"), os.path.join(directory, shard))
        message = expect_dbus_error(ERROR_INVALID_MODEL, d.py.load, "sharded")
        assert "leads out of " + directory in message, message
        assert d.model("sharded")["state"] == "error", d.model("sharded")


def test_registry_damaged_entry_is_an_error_not_a_crash(ctx):
        os.makedirs(os.path.join(ctx.store, REGISTRY))
        with open(os.path.join(ctx.store, REGISTRY, "damaged"), "wb") as f:
                f.write(b"relative/\xff\x00garbage")
        with open(os.path.join(ctx.store, REGISTRY, "not a name"), "w") as f:
                f.write("/x\n")
        os.makedirs(os.path.join(ctx.store, REGISTRY, "adir"))
        ctx.model("fine", size="1M")
        d = ctx.daemon()

        _, models = d.status()
        assert set(models) == {"damaged", "adir", "fine"}, models
        assert models["damaged"]["state"] == "error" and "damaged" in models["damaged"]["error"], models
        assert models["adir"]["state"] == "error", models
        assert models["damaged"]["source"] == "local", models
        assert "Ignoring" in d.log() and "names no model" in d.log(), d.log()
        expect_dbus_error(ERROR_INVALID_MODEL, d.py.load, "damaged")

        # Removing it drops the entry.
        assert remove(d, "damaged") is None
        wait_removed(ctx, "damaged")
        assert "damaged" not in registry_entries(ctx)


# ---------------------------------------------------------------------------
# Remove.

def test_registry_remove_registered_keeps_the_files(ctx):
        directory = outside_model(ctx, "llm", size="1M")
        before = files_under(directory)
        d = ctx.daemon()
        assert register(d, "llm", directory) is None
        wait_added(ctx, "llm")
        assert d.load("llm") == model_path("llm")
        d.unload("llm")

        assert remove(d, "llm") is None
        wait_removed(ctx, "llm")
        check_unknown(d, "llm")
        assert registry_entries(ctx) == []
        assert files_under(directory) == before
        expect_dbus_error(ERROR_MODEL_NOT_FOUND, remove, d, "llm")
        expect_dbus_error(ERROR_MODEL_NOT_FOUND, d.py.load, "llm")

        # And it may be registered again.
        assert register(d, "llm", directory) is None
        m = wait_until(lambda: d.model("llm"), "llm back in Status")
        assert m["source"] == "local", m


def test_registry_remove_unhides_a_folder_of_the_same_name(ctx):
        directory = outside_model(ctx, "llm")
        d = ctx.daemon()
        assert register(d, "llm", directory) is None
        wait_added(ctx, "llm")
        # A folder of that name copied in since is hidden by the registration.
        ctx.model("llm", size="2M")
        assert d.model("llm")["source"] == "local"

        assert remove(d, "llm") is None
        assert os.path.isdir(os.path.join(ctx.store, "llm")), "Remove of a registration reached the folder"
        assert files_under(directory)
        wait_until(lambda: len(added(ctx, "llm")) >= 2, "llm announced again, from the model directory")
        m = wait_until(lambda: d.model("llm"), "llm in Status again")
        assert m["source"] == "store", m


def test_registry_remove_store_model_deletes_it(ctx):
        ctx.model("acme/tiny", size="2M", shards=2)
        ctx.model("acme/other", size="1M")
        ctx.model("solo", size="1M")
        d = ctx.daemon()
        assert d.model("acme/tiny")["source"] == "store"

        assert remove(d, "acme/tiny") is None
        wait_removed(ctx, "acme/tiny")
        check_unknown(d, "acme/tiny")
        assert not os.path.exists(os.path.join(ctx.store, "acme", "tiny"))
        assert os.path.isdir(os.path.join(ctx.store, "acme", "other"))
        assert trash_is_empty(ctx), os.listdir(os.path.join(ctx.store, TRASH))
        expect_dbus_error(ERROR_MODEL_NOT_FOUND, remove, d, "acme/tiny")

        # The last model of an organisation takes its folder with it.
        assert remove(d, "acme/other") is None
        assert not os.path.exists(os.path.join(ctx.store, "acme"))
        assert remove(d, "solo") is None
        assert sorted(os.listdir(ctx.store)) in ([], [TRASH]), os.listdir(ctx.store)
        assert d.status()[1] == {}

        # Names no store holds, and bad names.
        message = expect_dbus_error(ERROR_MODEL_NOT_FOUND, remove, d, "never")
        assert "never" in message, message
        expect_dbus_error(ERROR_INVALID_ARGS, remove, d, "../etc")
        expect_dbus_error(ERROR_INVALID_ARGS, remove, d, "x", colour="red")


def test_registry_remove_hf_cache_is_refused(ctx):
        snapshot = ctx.hf_model("acme/cached", size="1M")
        before = files_under(ctx.hub)
        d = ctx.daemon(config=ctx.write_config(hub=ctx.hub))
        m = d.model("acme/cached")
        assert m["source"] == "hf-cache" and m["revision"] == os.path.basename(snapshot), m

        message = expect_dbus_error(ERROR_NOT_SUPPORTED, remove, d, "acme/cached")
        assert "Hugging Face cache" in message and "does not own" in message, message
        # Not even unloaded for it.
        d.load("acme/cached")
        expect_dbus_error(ERROR_NOT_SUPPORTED, remove, d, "acme/cached", force=True)
        assert d.model("acme/cached")["state"] == "loaded"
        assert files_under(ctx.hub) == before
        assert not removed(ctx, "acme/cached")


def test_registry_remove_busy_unless_forced(ctx):
        directory = ctx.model("alpha", size="2M")
        d = ctx.daemon()
        d.load("alpha", pin=True)

        message = expect_dbus_error(ERROR_BUSY, remove, d, "alpha")
        assert "loaded" in message and "force" in message, message
        assert d.model("alpha")["state"] == "loaded"
        assert os.path.isdir(directory)

        # force unloads (pinned too), then removes.
        assert remove(d, "alpha", force=True) is None
        unloaded = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert unloaded.args[1] == "request", unloaded
        wait_removed(ctx, "alpha")
        check_unknown(d, "alpha")
        assert not os.path.exists(directory)


def test_registry_remove_held_model(ctx):
        directory = ctx.model("held", size="1M")
        d = ctx.daemon()
        child = python_child_client(d.address, ctx)
        child.acquire("held")

        message = expect_dbus_error(ERROR_BUSY, remove, d, "held")
        assert "loaded" in message, message
        assert d.model("held")["holds"] == 1

        # With force: unloaded and deleted; the hold stays with its holder,
        # and the object goes when it lets go.
        assert remove(d, "held", force=True) is None
        ctx.monitor.wait_signal("ModelUnloaded", "held")
        assert not os.path.exists(directory)
        m = d.model("held")
        assert m is not None and m["state"] == "available" and m["holds"] == 1, m
        expect_dbus_error(ERROR_MODEL_NOT_FOUND, d.py.load, "held")
        child.release("held")
        wait_removed(ctx, "held")
        check_unknown(d, "held")


def call_in_thread(address, member, sig, args):
        """The call on a connection of its own, in a thread; returns (thread,
        outcome), outcome filled with "ok" or the error name once it ends."""
        outcome = {}

        def call():
                client = PyClient(address)
                try:
                        client.call(member, sig, args)
                        outcome["result"] = "ok"
                except dbus.exceptions.DBusException as e:
                        outcome["result"] = e.get_dbus_name()
                finally:
                        client.close()
        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        return thread, outcome


def test_registry_remove_while_loading_with_force(ctx):
        ctx.model("slow", size="4M")
        d = ctx.daemon(gates=True)
        gate = ctx.gate("slow")
        loader, loaded = call_in_thread(d.address, "Load", "sa{sv}", ("slow", load_options()))
        ctx.monitor.wait_signal("LoadProgress", "slow")

        message = expect_dbus_error(ERROR_BUSY, remove, d, "slow")
        assert "loading" in message, message
        assert d.model("slow")["state"] == "loading"

        # With force the load is cancelled, and Remove goes on once the
        # loader has let go (a cancelled load passes its gate).
        remover, removed_outcome = call_in_thread(d.address, "Remove", "sa{sv}", ("slow", load_options(force=True)))
        for thread in (loader, remover):
                thread.join(DEADLINE)
                assert not thread.is_alive()
        assert loaded["result"] == ERROR_CANCELLED, loaded
        assert removed_outcome["result"] == "ok", removed_outcome
        wait_removed(ctx, "slow")
        assert not os.path.exists(os.path.join(ctx.store, "slow"))


def test_registry_remove_pulled_model(ctx):
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M")
        d = hub_daemon(ctx, hub)

        assert pull(d, "org/tiny") == model_path("org/tiny")
        assert wait_finished(ctx, "org/tiny") == ("org/tiny", "done", "")
        # Announced when the Pull was accepted, still downloading; its
        # source and commit are known once it is in the store.
        props = wait_added(ctx, "org/tiny")
        assert props["State"] == "downloading" and props["Source"] == "hub", props
        props = d.py.get_all(model_path("org/tiny"), MODEL_IFACE)
        assert props["Source"] == "hub" and props["Revision"] == hub.commit("org/tiny"), props
        m = d.model("org/tiny")
        assert m["source"] == "hub" and m["revision"] == hub.commit("org/tiny"), m
        assert d.load("org/tiny") == model_path("org/tiny")
        assert d.model("org/tiny")["revision"] == hub.commit("org/tiny")

        expect_dbus_error(ERROR_BUSY, remove, d, "org/tiny")
        assert remove(d, "org/tiny", force=True) is None
        wait_removed(ctx, "org/tiny")
        assert not os.path.exists(os.path.join(ctx.store, "org"))
        check_unknown(d, "org/tiny")

        # Pulled again after the removal: fetched again.
        assert pull(d, "org/tiny") == model_path("org/tiny")
        assert wait_finished(ctx, "org/tiny", 2) == ("org/tiny", "done", "")
        wait_until(lambda: len(added(ctx, "org/tiny")) >= 2, "org/tiny announced again")


def test_registry_pull_of_a_registered_name_is_refused(ctx):
        """What the pull installed would lie hidden behind the registration."""
        hub = FakeHub(ctx)
        make_repo(ctx, hub, size="1M")
        d = hub_daemon(ctx, hub)
        register(d, "org/tiny", outside_model(ctx, "mine"))
        message = expect_dbus_error(ERROR_MODEL_EXISTS, pull, d, "org/tiny")
        assert "registered" in message, message
        assert not os.path.exists(os.path.join(ctx.store, "org")), os.listdir(ctx.store)
        assert d.model("org/tiny")["source"] == "local"


def test_registry_remove_source_reported_after_restart(ctx):
        """What Status says of a pulled model survives a restart (it is read
        from the model's metadata, not remembered)."""
        model = ctx.model("org/pulled", size="1M")
        commit = "0123456789abcdef0123456789abcdef01234567"
        with open(os.path.join(model, ".mpool-pull.json"), "w") as f:
                json.dump({"repo": "org/pulled", "revision": "main", "commit": commit, "files": []}, f)
        d = ctx.daemon()
        m = d.model("org/pulled")
        assert m["source"] == "hub" and m["revision"] == commit, m


# ---------------------------------------------------------------------------
# Authorization.

def chown_store(ctx):
        """The daemon runs as the service user with polkit, and must be able to
        change its store, as the package's tmpfiles snippet makes it."""
        user = pwd.getpwnam(SERVICE_USER)
        for dirpath, dirnames, filenames in os.walk(ctx.store):
                os.chown(dirpath, user.pw_uid, user.pw_gid)
                for name in filenames:
                        os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def register_call(name, path, **options):
        return call_spec("Register", ["s", "s", "a{sv}"], [name, path, variant_options(options)])


def remove_call(name, **options):
        return call_spec("Remove", ["s", "a{sv}"], [name, variant_options(options)])


def test_registry_polkit_register(ctx):
        directory = outside_model(ctx, "outside")

        def verify(d, result):
                assert result is None, result
                assert registry_entries(ctx) == ["gamma"]
                assert d.model("gamma")["source"] == "local"

        def setup(d):
                chown_store(ctx)
                assert registry_entries(ctx) == []
        check_privileged(ctx, register_call("gamma", directory), ACTION_MANAGE_MODELS, setup=setup, verify=verify)


def test_registry_polkit_remove(ctx):
        def setup(d):
                chown_store(ctx)

        def verify(d, result):
                assert result is None, result
                wait_removed(ctx, "alpha")
                assert not os.path.exists(os.path.join(ctx.store, "alpha"))
        check_privileged(ctx, remove_call("alpha"), ACTION_MANAGE_MODELS, setup=setup, verify=verify)


def test_registry_polkit_remove_with_force_changes_nothing_for_nobody(ctx):
        ctx.model("alpha", size="2M")
        d = ctx.daemon(polkit=True)
        chown_store(ctx)
        d.load("alpha")
        nobody = NobodyClient(ctx)
        for interactive, error in ((False, INTERACTIVE_REQUIRED), (True, ACCESS_DENIED)):
                assert_error(nobody.call(remove_call("alpha", force=True), interactive=interactive), error,
                             "nobody's Remove with force", ACTION_MANAGE_MODELS)
        assert d.model("alpha")["state"] == "loaded"
        assert os.path.isdir(os.path.join(ctx.store, "alpha"))
        assert not ctx.monitor.signals("ModelUnloaded", "alpha")


# ---------------------------------------------------------------------------
# mpool-client.

def test_registry_client_register_and_rm(ctx):
        ctx.model("stored", size="1M")
        ctx.hf_model("acme/cached", size="1M")
        directory = outside_model(ctx, "mine", size="2M")
        d = ctx.daemon(config=ctx.write_config(hub=ctx.hub))

        # A relative path is made absolute by the client, from its own
        # working directory.
        proc = subprocess.run(client_argv(ctx, d, "register", "mine", "elsewhere/mine"), cwd=ctx.dir,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=DEADLINE, env=client_env())
        assert proc.returncode == 0, proc
        assert proc.stdout.strip() == f"Registered mine at {directory}.", proc.stdout
        assert registered_path(ctx, "mine") == directory + "\n"
        listed = {m["name"]: m for m in run_json(ctx, d, "list")}
        assert listed["mine"]["source"] == "local" and listed["stored"]["source"] == "store", listed
        assert listed["acme/cached"]["source"] == "hf-cache", listed
        text = run(ctx, d, "list").stdout
        assert text.splitlines()[0].split() == ["NAME", "STATE", "SIZE", "SOURCE"], text
        details = run(ctx, d, "status", "mine").stdout
        assert "Source: local" in details, details
        details = run(ctx, d, "status", "acme/cached").stdout
        assert "Source: hf-cache, at " in details, details
        status = run_json(ctx, d, "status", "mine")
        assert status["models"][0]["source"] == "local" and status["models"][0]["revision"] == "", status

        # Refusals and their exit statuses.
        check_error(run(ctx, d, "register", "mine", directory, expect=EXIT_EXISTS), "exists already")
        check_error(run(ctx, d, "register", "other", os.path.join(ctx.dir, "nothing"), expect=EXIT_NOT_FOUND),
                    "does not exist")
        empty = os.path.join(ctx.dir, "empty")
        os.makedirs(empty)
        check_error(run(ctx, d, "register", "other", empty, expect=EXIT_INVALID_MODEL), "has neither")
        check_error(run(ctx, d, "register", "bad/name/x", directory, expect=EXIT_USAGE), "Invalid model name")
        check_error(run(ctx, d, "rm", "nothing", expect=EXIT_NOT_FOUND), "nothing")
        check_error(run(ctx, d, "rm", "acme/cached", expect=EXIT_FAILURE), "Hugging Face cache")
        check_error(run(ctx, d, "load", "--force", "stored", expect=EXIT_USAGE), "--force")

        d.load("stored")
        check_error(run(ctx, d, "rm", "stored", expect=EXIT_BUSY), "loaded")
        assert run_json(ctx, d, "rm", "--force", "stored") == {"name": "stored", "removed": True}
        assert not os.path.exists(os.path.join(ctx.store, "stored"))

        proc = run(ctx, d, "rm", "mine")
        assert proc.stdout.strip() == "Removed mine.", proc.stdout
        assert files_under(directory)
        assert run_json(ctx, d, "register", "mine", directory) == {"name": "mine", "path": directory}
        assert run(ctx, d, "-q", "rm", "mine").stdout == ""


def complete(ctx, line):
        """What the bash completion offers at the end of line."""
        script = os.path.join(ctx.suite.source_root, "client", "mpool-client.bash-completion")
        code = (f'source "$1"; COMP_LINE="$2"; COMP_POINT=${{#COMP_LINE}}; COMP_CWORD=1; '
                f'_mpool_client "$3"; printf "%s\\n" "${{COMPREPLY[@]}}"')
        proc = subprocess.run(["bash", "-c", code, "bash", script, line,
                               os.path.join(ctx.suite.build_dir, "mpool-client")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=DEADLINE, env=client_env())
        assert proc.returncode == 0, proc
        return sorted(w for w in proc.stdout.splitlines() if w)


def test_registry_client_completion(ctx):
        ctx.model("alpha", size="1M")
        ctx.model("acme/beta", size="1M")
        d = ctx.daemon()
        assert complete(ctx, "mpool-client r") == ["register", "rm"]
        assert complete(ctx, f"mpool-client --address={d.address} rm ") == ["acme/beta", "alpha"]
        assert complete(ctx, f"mpool-client --address={d.address} rm alpha ") == []
        elsewhere = outside_model(ctx, "mine")
        assert complete(ctx, f"mpool-client register mine {os.path.dirname(elsewhere)}/m") == [elsewhere]
