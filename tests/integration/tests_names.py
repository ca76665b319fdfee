# SPDX-License-Identifier: MIT
"""Model names follow the Hugging Face hub's rules for repository names: no
".." or "--" anywhere, no '.' or '-' at the end of a segment; a name that
breaks them is InvalidArgs whose message says which rule, even when a
directory of that name sits in the store."""

from harness import ERROR_INVALID_ARGS, BusctlError, expect_dbus_error, model_path

REFUSED = {
        "a..b": "'a..b': must not contain '..'",
        "org/x..y": "segment 2 of 'org/x..y': must not contain '..'",
        "a--b": "'a--b': must not contain '--'",
        "org--x/y": "segment 1 of 'org--x/y': must not contain '--'",
        "a-": "'a-': must not end with '-'",
        "org/b.": "segment 2 of 'org/b.': must not end with '.'",
}


def test_names_breaking_hub_rules_are_invalid_args(ctx):
        # Directories of those names exist: the daemon must not serve them.
        for name in REFUSED:
                ctx.model(name, size="1M")
        ctx.model("a.b-c_d", size="1M")
        ctx.model("org/x.-y_", size="1M")
        d = ctx.daemon()

        failures = []
        for name, problem in REFUSED.items():
                calls = {
                        "Load": lambda: d.py.load(name),
                        "Unload": lambda: d.py.unload(name),
                        "Acquire": lambda: d.py.call("Acquire", "s", (name,)),
                        "Release": lambda: d.py.call("Release", "s", (name,)),
                }
                for method, call in calls.items():
                        try:
                                message = expect_dbus_error(ERROR_INVALID_ARGS, call)
                                assert message == f"Invalid model name: {problem}", message
                        except AssertionError as e:
                                failures.append(f"{method}({name!r}): {e}")
                # busctl, the other client, gets the same message.
                try:
                        d.load(name)
                        failures.append(f"busctl Load({name!r}) succeeded")
                except BusctlError as e:
                        if problem not in e.message:
                                failures.append(f"busctl Load({name!r}): {e.message}")
        assert not failures, "\n".join(failures)

        _, models = d.status()
        assert sorted(models) == ["a.b-c_d", "org/x.-y_"], sorted(models)

        # Names close to the edge are still fine.
        assert d.load("a.b-c_d") == model_path("a.b-c_d")
        assert d.load("org/x.-y_") == model_path("org/x.-y_")
