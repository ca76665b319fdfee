# SPDX-License-Identifier: MIT
"""Model objects, properties, introspection, store layouts (shards, the
Hugging Face cache)."""

import os
import subprocess
import xml.dom.minidom

from harness import (MANAGER_IFACE, MANAGER_PATH, MODEL_IFACE, MODELS_PATH, OBJECT_MANAGER_IFACE,
                     PROPERTIES_IFACE, model_files, model_path, safetensors_data_bytes)

MODEL_PROPERTY_KEYS = {
        "Name": "name", "State": "state", "SizeBytes": "size_bytes", "MemoryBytes": "memory_bytes",
        "Pinned": "pinned", "Holds": "holds", "LoadedAt": "loaded_at_usec", "LastUsed": "last_used_usec",
        "ExpiresAt": "expires_at_usec", "RequestsTotal": "requests_total", "Source": "source", "Revision": "revision",
        "Kind": "kind", "Precision": "precision", "MemoryByPrecision": "memory_by_precision",
        "DownloadDone": "download_done", "DownloadTotal": "download_total",
}


def check_model_properties(props, status_entry, what):
        assert set(props) == set(MODEL_PROPERTY_KEYS), f"{what}: properties {sorted(props)}"
        for prop, key in MODEL_PROPERTY_KEYS.items():
                assert props[prop] == status_entry[key], \
                        f"{what}: {prop} = {props[prop]!r}, Status {key} = {status_entry[key]!r}"


def test_model_objects_and_properties(ctx):
        ctx.model("demo/tiny", size="4M")
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        assert d.load("demo/tiny") == "/org/mpool/Manager/models/demo_2ftiny"
        pool, models = d.status()

        objects = {path: interfaces for path, interfaces in d.py.managed_objects().items()
                   if path.startswith(MODELS_PATH + "/")}
        paths = {model_path(name): name for name in models}
        assert set(objects) == set(paths), f"managed objects {sorted(objects)}, Status knows {sorted(paths)}"
        for path, name in paths.items():
                assert MODEL_IFACE in objects[path], f"{path}: interfaces {sorted(objects[path])}"
                check_model_properties(objects[path][MODEL_IFACE], models[name], f"GetManagedObjects {path}")

        # The same through busctl's Properties.GetAll.
        (props,) = d.ctl.call("GetAll", "s", MODEL_IFACE, path=model_path("demo/tiny"), iface=PROPERTIES_IFACE)
        check_model_properties(props, models["demo/tiny"], "GetAll demo/tiny")
        assert props["State"] == "loaded" and props["Name"] == "demo/tiny", props

        (manager,) = d.ctl.call("GetAll", "s", MANAGER_IFACE, path=MANAGER_PATH, iface=PROPERTIES_IFACE)
        assert manager["Version"] == pool["version"], (manager, pool)
        assert manager["MemoryTotal"] == pool["memory_total"], (manager, pool)
        assert manager["MemoryLimit"] == pool["memory_limit"], (manager, pool)
        assert manager["MemoryUsed"] == pool["memory_used"], (manager, pool)
        assert manager["LoadedModels"] == ["demo/tiny"], manager
        assert manager["IdleTimeoutSec"] == pool["idle_timeout_sec"] == 300, manager

        # Loading changed the model's State and the manager's LoadedModels.
        def changed(path, iface, prop):
                def find(sigs):
                        return any(s.member == "PropertiesChanged" and s.path == path and s.args[0] == iface
                                   and (prop in s.args[1] or prop in s.args[2]) for s in sigs)
                return find
        ctx.monitor.wait(changed(model_path("demo/tiny"), MODEL_IFACE, "State"),
                         "PropertiesChanged of demo/tiny's State")
        ctx.monitor.wait(changed(MANAGER_PATH, MANAGER_IFACE, "LoadedModels"),
                         "PropertiesChanged of LoadedModels")


def test_model_added_after_start_is_announced(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        ctx.model("late", size="1M")
        assert d.load("late") == model_path("late")

        def announced(sigs):
                return any(s.interface == OBJECT_MANAGER_IFACE and s.member == "InterfacesAdded"
                           and s.args[0] == model_path("late") and MODEL_IFACE in s.args[1] for s in sigs)
        ctx.monitor.wait(announced, "InterfacesAdded for late")
        assert model_path("late") in d.py.managed_objects()


def test_sharded_model(ctx):
        directory = ctx.model("sharded", size="24M", shards=3)
        shards = model_files(directory)
        assert len(shards) == 3, f"mpool-mkmodel --shards=3 made {shards}"
        assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
        d = ctx.daemon()
        d.load("sharded")
        m = d.model("sharded")
        data = sum(safetensors_data_bytes(f) for f in shards)
        assert m["state"] == "loaded" and m["memory_bytes"] >= data, (m, data)
        assert m["size_bytes"] >= sum(os.stat(f).st_size for f in shards), m
        loaded = ctx.monitor.wait_signal("ModelLoaded", "sharded")
        assert loaded.args[1] == m["memory_bytes"]
        progress = ctx.monitor.signals("LoadProgress", "sharded")
        assert progress and progress[-1].args[1] == progress[-1].args[2] >= data, progress


def test_huggingface_cache_model(ctx):
        snapshot = ctx.hf_model("acme/tiny-llm", size="4M")
        d = ctx.daemon(config=ctx.write_config(hub=ctx.hub))
        assert not os.path.exists(os.path.join(ctx.store, "acme"))
        assert d.load("acme/tiny-llm") == "/org/mpool/Manager/models/acme_2ftiny_2dllm"
        m = d.model("acme/tiny-llm")
        data = sum(safetensors_data_bytes(f) for f in model_files(snapshot))
        assert m["state"] == "loaded" and m["memory_bytes"] >= data > 0, (m, data)
        assert d.unload("acme/tiny-llm") is True


# ---------------------------------------------------------------------------
# Introspection against dbus/org.mpool.Manager.xml.

def describe_interface(iface):
        """Members of an <interface> element in a comparable form."""
        def args(element, default_direction):
                return [(a.getAttribute("name"), a.getAttribute("type"),
                         a.getAttribute("direction") or default_direction)
                        for a in element.getElementsByTagName("arg")]
        out = {}
        for method in iface.getElementsByTagName("method"):
                out["method " + method.getAttribute("name")] = args(method, "in")
        for sig in iface.getElementsByTagName("signal"):
                # Signal arguments have no direction (or "out").
                out["signal " + sig.getAttribute("name")] = [(n, t, "out") for n, t, _ in args(sig, "out")]
        for prop in iface.getElementsByTagName("property"):
                # Whether PropertiesChanged follows a change: "true" when
                # not said, as the D-Bus specification has it.
                emits = "true"
                for annotation in prop.getElementsByTagName("annotation"):
                        if annotation.getAttribute("name") == "org.freedesktop.DBus.Property.EmitsChangedSignal":
                                emits = annotation.getAttribute("value")
                out["property " + prop.getAttribute("name")] = (prop.getAttribute("type"), prop.getAttribute("access"),
                                                                emits)
        return out


def interfaces_of(xml_text):
        doc = xml.dom.minidom.parseString(xml_text)
        return {i.getAttribute("name"): describe_interface(i) for i in doc.getElementsByTagName("interface")}


def runtime_xml(d, path):
        proc = subprocess.run(["busctl", f"--address={d.address}", "introspect", "--xml-interface",
                               "org.mpool.Manager", path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=60)
        assert proc.returncode == 0, f"busctl introspect {path}: {proc.stderr}"
        return proc.stdout


def compare_interface(name, documented, runtime):
        problems = []
        for member in sorted(set(documented) | set(runtime)):
                if member not in runtime:
                        problems.append(f"{name}: {member} documented but not at run time")
                elif member not in documented:
                        problems.append(f"{name}: {member} at run time but not documented")
                elif documented[member] != runtime[member]:
                        problems.append(f"{name}: {member}: documented {documented[member]}, "
                                        f"run time {runtime[member]}")
        return problems


def test_introspection_matches_interface_file(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        d.load("alpha")
        with open(ctx.suite.interface_xml) as f:
                documented = interfaces_of(f.read())
        manager = interfaces_of(runtime_xml(d, MANAGER_PATH))
        model = interfaces_of(runtime_xml(d, model_path("alpha")))
        problems = []
        for name, runtime in ((MANAGER_IFACE, manager), (MODEL_IFACE, model)):
                assert name in documented, f"{name} missing from {ctx.suite.interface_xml}"
                assert name in runtime, f"{name} not introspectable at run time"
                problems += compare_interface(name, documented[name], runtime[name])
        assert OBJECT_MANAGER_IFACE in manager, "the manager object has no ObjectManager"
        assert not problems, "\n".join(problems)
