# SPDX-License-Identifier: MIT
"""Models added to and removed from the store by hand: the daemon notices
through inotify and announces them (InterfacesAdded, InterfacesRemoved)
without a Load."""

import os
import shutil
import subprocess

from harness import (ERROR_MODEL_NOT_FOUND, MODEL_IFACE, MODELS_PATH, OBJECT_MANAGER_IFACE, expect_dbus_error,
                     model_path, wait_until)


def added(ctx, name):
        return [s for s in ctx.monitor.signals(iface=OBJECT_MANAGER_IFACE)
                if s.member == "InterfacesAdded" and s.args[0] == model_path(name)]


def removed(ctx, name):
        return [s for s in ctx.monitor.signals(iface=OBJECT_MANAGER_IFACE)
                if s.member == "InterfacesRemoved" and s.args[0] == model_path(name)]


def wait_added(ctx, name):
        """Waits for the model's InterfacesAdded; returns its properties."""
        sig = wait_until(lambda: next(iter(added(ctx, name)), None), f"InterfacesAdded for {name}")
        assert MODEL_IFACE in sig.args[1], sig
        return sig.args[1][MODEL_IFACE]


def wait_removed(ctx, name):
        sig = wait_until(lambda: next(iter(removed(ctx, name)), None), f"InterfacesRemoved for {name}")
        assert MODEL_IFACE in sig.args[1], sig


def staged_model(ctx, name, size="1M"):
        """A model written outside the store, to be moved in whole."""
        directory = os.path.join(ctx.dir, "staging", name)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        ctx.mkmodel(directory, size=size)
        return directory


def marker(ctx, name):
        """Moves a model in and waits until it is announced: every change made
        to the store before has then been looked at (each look is complete)."""
        os.rename(staged_model(ctx, name), os.path.join(ctx.store, name))
        wait_added(ctx, name)


def managed_model_paths(d):
        return {str(path) for path in d.py.managed_objects() if path.startswith(MODELS_PATH + "/")}


def check_known(ctx, d, name):
        m = d.model(name)
        assert m is not None, f"{name} not in Status"
        assert model_path(name) in managed_model_paths(d), f"{name} not in GetManagedObjects"
        return m


def check_unknown(d, name):
        assert d.model(name) is None, f"{name} still in Status: {d.model(name)}"
        assert model_path(name) not in managed_model_paths(d), f"{name} still in GetManagedObjects"


def test_watch_model_moved_in_is_announced(ctx):
        ctx.model("alpha")
        d = ctx.daemon()
        os.rename(staged_model(ctx, "fresh", size="2M"), os.path.join(ctx.store, "fresh"))

        props = wait_added(ctx, "fresh")
        assert props["Name"] == "fresh" and props["State"] == "available", props
        assert props["SizeBytes"] >= 2 * 1024 * 1024, props
        m = check_known(ctx, d, "fresh")
        assert m["state"] == "available" and m["size_bytes"] == props["SizeBytes"], m
        # Announced without a load.
        assert not ctx.monitor.signals("LoadProgress", "fresh"), "announced through a load"

        assert d.load("fresh") == model_path("fresh")
        assert d.model("fresh")["state"] == "loaded"


def test_watch_model_copied_in_is_announced(ctx):
        d = ctx.daemon()
        source = staged_model(ctx, "copied", size="3M")
        subprocess.run(["cp", "-r", source, os.path.join(ctx.store, "copied")], check=True, timeout=60)

        wait_added(ctx, "copied")
        check_known(ctx, d, "copied")
        assert d.load("copied") == model_path("copied")
        assert d.model("copied")["state"] == "loaded"


def test_watch_model_removed_disappears(ctx):
        ctx.model("alpha")
        ctx.model("beta")
        d = ctx.daemon()
        check_known(ctx, d, "beta")

        shutil.rmtree(os.path.join(ctx.store, "beta"))
        wait_removed(ctx, "beta")
        check_unknown(d, "beta")
        check_known(ctx, d, "alpha")
        expect_dbus_error(ERROR_MODEL_NOT_FOUND, d.py.load, "beta")
        assert not removed(ctx, "alpha")


def test_watch_loaded_model_removed_stays_until_unloaded(ctx):
        ctx.model("alpha", size="2M")
        d = ctx.daemon()
        d.load("alpha")

        shutil.rmtree(os.path.join(ctx.store, "alpha"))
        marker(ctx, "marker")
        # Its mappings keep its data: it stays, loaded and usable.
        assert not removed(ctx, "alpha"), "a loaded model was removed while loaded"
        m = check_known(ctx, d, "alpha")
        assert m["state"] == "loaded" and m["memory_bytes"] > 0, m
        assert d.load("alpha") == model_path("alpha")

        assert d.unload("alpha") is True
        wait_removed(ctx, "alpha")
        check_unknown(d, "alpha")
        expect_dbus_error(ERROR_MODEL_NOT_FOUND, d.py.load, "alpha")


def test_watch_model_in_new_org_folder(ctx):
        d = ctx.daemon()
        org = os.path.join(ctx.store, "neworg")
        os.mkdir(org)
        # Once the marker is announced, the new folder is watched too: what
        # comes into it now is noticed through its own watch.
        marker(ctx, "marker")
        os.rename(staged_model(ctx, "name"), os.path.join(org, "name"))

        props = wait_added(ctx, "neworg/name")
        assert props["Name"] == "neworg/name" and props["State"] == "available", props
        check_known(ctx, d, "neworg/name")
        assert d.load("neworg/name") == model_path("neworg/name")

        shutil.rmtree(org)
        assert d.unload("neworg/name") is True
        wait_removed(ctx, "neworg/name")
        check_unknown(d, "neworg/name")


def test_watch_huggingface_repo_added(ctx):
        os.makedirs(ctx.hub)
        d = ctx.daemon(config=ctx.write_config(hub=ctx.hub))
        staging = os.path.join(ctx.dir, "hf-staging")
        os.makedirs(staging)
        ctx.mkmodel(None, size="2M", extra=[f"--hf-cache={staging}", "--name=acme/tiny-llm"])
        ctx.mkmodel(None, size="1M", extra=[f"--hf-cache={staging}", "--name=acme/later"])

        # A whole repo folder moved in.
        os.rename(os.path.join(staging, "models--acme--tiny-llm"), os.path.join(ctx.hub, "models--acme--tiny-llm"))
        props = wait_added(ctx, "acme/tiny-llm")
        assert props["State"] == "available" and props["SizeBytes"] >= 2 * 1024 * 1024, props
        check_known(ctx, d, "acme/tiny-llm")
        assert d.load("acme/tiny-llm") == model_path("acme/tiny-llm")

        # A repo folder whose snapshot comes later, as a download leaves it:
        # not a model until then.
        repo = os.path.join(ctx.hub, "models--acme--later")
        os.rename(os.path.join(staging, "models--acme--later", "snapshots"), os.path.join(staging, "later-snapshots"))
        os.rename(os.path.join(staging, "models--acme--later"), repo)
        marker(ctx, "marker")
        assert not added(ctx, "acme/later"), "a repo without its snapshot was announced"
        assert d.model("acme/later") is None
        os.rename(os.path.join(staging, "later-snapshots"), os.path.join(repo, "snapshots"))
        wait_added(ctx, "acme/later")
        assert d.load("acme/later") == model_path("acme/later")

        # Removing a repo folder of a model that is not loaded.
        shutil.rmtree(repo)
        assert d.unload("acme/later") is True
        wait_removed(ctx, "acme/later")
        check_unknown(d, "acme/later")


def test_watch_invalid_and_hidden_names_ignored(ctx):
        d = ctx.daemon()
        bad = ["bad--name", "trailing-", "ends.", ".staging", "-lead"]
        for name in bad:
                os.rename(staged_model(ctx, name), os.path.join(ctx.store, name))
        os.makedirs(os.path.join(ctx.store, ".staging-org"))
        os.rename(staged_model(ctx, "inner"), os.path.join(ctx.store, ".staging-org", "inner"))
        marker(ctx, "marker")

        announced = [s.args[0] for s in ctx.monitor.signals("InterfacesAdded", iface=OBJECT_MANAGER_IFACE)]
        assert announced == [model_path("marker")], announced
        _, models = d.status()
        assert set(models) == {"marker"}, sorted(models)


def test_watch_model_appears_after_failed_load(ctx):
        d = ctx.daemon()
        expect_dbus_error(ERROR_MODEL_NOT_FOUND, d.py.load, "late")
        os.rename(staged_model(ctx, "late"), os.path.join(ctx.store, "late"))
        props = wait_added(ctx, "late")
        assert props["State"] == "available", props
        assert d.load("late") == model_path("late")


def test_watch_burst_of_models(ctx):
        d = ctx.daemon()
        names = [f"burst-{i:02d}" for i in range(50)]
        staged = [staged_model(ctx, name, size="64K") for name in names]
        for name, source in zip(names, staged):
                os.rename(source, os.path.join(ctx.store, name))

        # Status is answered all along.
        def all_announced():
                d.status()
                return all(added(ctx, name) for name in names)
        wait_until(all_announced, "InterfacesAdded for the 50 models", interval=0.05)
        for name in names:
                assert len(added(ctx, name)) == 1, f"{name} announced {len(added(ctx, name))} times"
        _, models = d.status()
        assert set(names) <= set(models), sorted(set(names) - set(models))
        assert all(models[name]["state"] == "available" for name in names)
        assert len(managed_model_paths(d)) == 50


def test_watch_store_root_removed_and_back(ctx):
        ctx.model("alpha")
        d = ctx.daemon()
        shutil.rmtree(ctx.store)
        wait_removed(ctx, "alpha")
        check_unknown(d, "alpha")
        assert "ModelDir=" in d.log() and "was removed" in d.log(), d.log()

        # Watched again once it is back, by its configured path.
        staged = staged_model(ctx, "beta")
        os.makedirs(os.path.dirname(staged) + "-root")
        os.rename(staged, os.path.join(os.path.dirname(staged) + "-root", "beta"))
        os.rename(os.path.dirname(staged) + "-root", ctx.store)
        wait_added(ctx, "beta")
        assert d.load("beta") == model_path("beta")
        os.rename(staged_model(ctx, "gamma"), os.path.join(ctx.store, "gamma"))
        wait_added(ctx, "gamma")
