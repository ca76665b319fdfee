# SPDX-License-Identifier: MIT
"""The text-level fixtures of Embed (tests/fixtures/embed/, written by
tests/tools/make-embed-fixtures.py), for the integration tests: the cases,
the model folders to copy into a store, and the comparison of what mpoold
returned with the reference, with the issue's bounds (cosine at least
0.99999, no component more than 1e-4 off).

Pure Python (json, math, os, shutil): importing it needs no D-Bus.

expected.json holds
  models   per model folder: dtype, dimensions, pooling, normalize (the
           default), max_length, do_lower_case, prompts,
           default_prompt_name, and for some precision_cosine_min (the
           bounds of a load in f16, q8, q4 against these F32 vectors);
  cases    each with name ("MODEL/CASE"), model, texts, options (Embed's, as
           JSON: booleans, strings, and dimensions as a number), and either
           embeddings (one vector per text) with the inputs and ids the
           reference ran, or error (a D-Bus error name) with error_index
           when one text is at fault."""

import json
import math
import os
import shutil

FIXTURES = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "embed"))
EXPECTED = os.path.join(FIXTURES, "expected.json")

COSINE_MIN = 0.99999
ABS_ERROR_MAX = 1e-4

# Embed's options and their D-Bus types.
OPTION_TYPES = {"normalize": "b", "truncate": "b", "truncation_direction": "s", "prompt_name": "s",
                "dimensions": "u"}


def load(path=EXPECTED):
        with open(path, encoding="utf-8") as f:
                return json.load(f)


def cases(fixtures, model=None, errors=None):
        """The cases, of one model if named; errors True: only those that
        expect an error, False: only those that expect vectors."""
        out = []
        for c in fixtures["cases"]:
                if model is not None and c["model"] != model:
                        continue
                if errors is not None and ("error" in c) != errors:
                        continue
                out.append(c)
        return out


def case(fixtures, name):
        for c in fixtures["cases"]:
                if c["name"] == name:
                        return c
        raise KeyError(name)


def model_directory(model):
        return os.path.join(FIXTURES, model)


def install_model(store, model, name=None):
        """Copies the fixture's model folder into the store as name (default:
        the model's own), as a pulled model would sit there; returns the
        folder."""
        target = os.path.join(store, name or model)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copytree(model_directory(model), target)
        return target


def dbus_options(options):
        """The options as dbus-python sends them, each with its D-Bus type."""
        import dbus  # noqa: PLC0415 - only for the callers that talk D-Bus

        wrap = {"b": dbus.Boolean, "s": dbus.String, "u": dbus.UInt32}
        return dbus.Dictionary({k: wrap[OPTION_TYPES[k]](v) for k, v in options.items()}, signature="sv")


def client_flags(options):
        """The options as mpool-client embed's flags."""
        flags = []
        for key, value in sorted(options.items()):
                if key == "normalize":
                        flags.append("--normalize" if value else "--no-normalize")
                elif key == "truncate":
                        if not value:
                                flags.append("--no-truncate")
                elif key == "truncation_direction":
                        flags.append(f"--truncation-direction={value}")
                elif key == "prompt_name":
                        flags.append(f"--prompt-name={value}")
                elif key == "dimensions":
                        flags.append(f"--dimensions={value}")
                else:
                        raise ValueError(f"unknown option {key}")
        return flags


def compare(expected, actual, cosine_min=COSINE_MIN, abs_error_max=ABS_ERROR_MAX):
        """What is wrong with the vector actual against expected, in words, or
        None when it is within the bounds (abs_error_max None: cosine only)."""
        if len(actual) != len(expected):
                return f"{len(actual)} components, not {len(expected)}"
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in actual):
                return "a component is not a finite number"
        dot = sum(a * b for a, b in zip(actual, expected))
        norms = math.sqrt(sum(a * a for a in actual)) * math.sqrt(sum(b * b for b in expected))
        cosine = dot / norms if norms > 0 else (1.0 if not any(actual) and not any(expected) else 0.0)
        worst = max((abs(a - b) for a, b in zip(actual, expected)), default=0.0)
        problems = []
        if not cosine >= cosine_min:
                problems.append(f"cosine {cosine:.7f} < {cosine_min}")
        if abs_error_max is not None and not worst <= abs_error_max:
                problems.append(f"a component {worst:.3g} off (> {abs_error_max})")
        return ", ".join(problems) or None


def check_vectors(c, vectors, cosine_min=COSINE_MIN, abs_error_max=ABS_ERROR_MAX):
        """Raises AssertionError, naming the case and each text at fault, unless
        vectors (one list of numbers per text) match the case's embeddings."""
        assert "embeddings" in c, f"{c['name']} expects the error {c.get('error')}, not vectors"
        assert len(vectors) == len(c["embeddings"]), \
                f"{c['name']}: {len(vectors)} vectors for {len(c['embeddings'])} texts"
        faults = []
        for i, (want, got) in enumerate(zip(c["embeddings"], vectors)):
                problem = compare(want, got, cosine_min, abs_error_max)
                if problem:
                        faults.append(f"text {i} ({c['text_names'][i]}, {c['texts'][i][:40]!r}): {problem}")
        assert not faults, f"{c['name']} with {c['options']}:\n  " + "\n  ".join(faults)


def check_error(c, error_name, message=""):
        """Raises AssertionError unless the D-Bus error matches what the case
        expects; a text at fault must be named by its index in the message."""
        assert "error" in c, f"{c['name']} expects vectors, not the error {error_name}: {message}"
        assert error_name == c["error"], f"{c['name']}: {error_name} ({message}), not {c['error']}"
        if "error_index" in c:
                assert str(c["error_index"]) in message, \
                        f"{c['name']}: the message does not name text {c['error_index']}: {message!r}"
