#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Integration tests of mpoold: the real daemon on a private system-type bus,
driven through busctl and python-dbus.

    /usr/bin/python3 tests/integration/run.py --build=build [--filter=SUBSTRING] [--keep] [--valgrind]

Each test is a function test_NAME(ctx) in one of the modules below; it gets a
fresh TestContext (own temp directory, store, config, signal monitor) and
starts its own mpoold. Prints "ok NAME" or "FAIL NAME" with the traceback and
the daemon's log, then "N passed, M failed"; exits non-zero if any failed.
A report of a sanitized build (`make check SANITIZE=1`) fails its test, and so
does, with --valgrind (`make check-valgrind`), an error or a definite leak
valgrind found in a daemon the test ran."""

import argparse
import importlib
import os
import signal
import sys
import time
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The test modules are imported once the arguments are read (load_modules()):
# --valgrind changes the harness's deadlines, which the tests take as they are
# imported.
MODULE_NAMES = ["tests_load", "tests_idle", "tests_memory", "tests_holds", "tests_errors", "tests_files",
                "tests_objects", "tests_lifecycle", "tests_probe", "tests_index", "tests_queue", "tests_client",
                "tests_polkit", "tests_callers", "tests_names", "tests_signals", "tests_watch", "tests_pull",
                "tests_pull_daemon", "tests_registry", "tests_openfiles", "tests_inspect", "tests_embed_client",
                "tests_embedding_model", "tests_embed", "tests_metrics", "tests_pull_state"]
MODULES = []
harness = None


def load_modules(valgrind):
        global harness
        if valgrind:
                os.environ["MPOOL_TEST_VALGRIND"] = "1"
        harness = importlib.import_module("harness")
        MODULES.extend(importlib.import_module(name) for name in MODULE_NAMES)


def collect(name_filter):
        tests = []
        for module in MODULES:
                for name, fn in vars(module).items():
                        if name.startswith("test_") and callable(fn):
                                if name_filter is None or name_filter in name:
                                        tests.append((name, fn))
        return tests


def terminate(signum, frame):
        raise KeyboardInterrupt


def main():
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--build", default="build", help="the build directory (mpoold, mpool-mkmodel)")
        parser.add_argument("--filter", default=None, help="run only tests whose name contains this")
        parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
        parser.add_argument("--list", action="store_true", help="list the tests and exit")
        parser.add_argument("--valgrind", action="store_true",
                            help="run every mpoold under valgrind's memcheck; any error or definite leak fails")
        parser.add_argument("--durations", type=int, default=0, metavar="N",
                            help="list the N slowest tests at the end")
        args = parser.parse_args()
        load_modules(args.valgrind)

        source_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        build_dir = os.path.abspath(args.build)
        tests = collect(args.filter)
        if args.list:
                for name, _ in tests:
                        print(name)
                return 0
        if not tests:
                print(f"no test matches --filter={args.filter}", file=sys.stderr)
                return 2

        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGHUP, terminate)
        suite = harness.Suite(source_root, build_dir, keep=args.keep)
        passed = failed = skipped = 0
        durations = []
        started = time.monotonic()
        try:
                try:
                        suite.start()
                except Exception as e:  # noqa: BLE001 - reported as a failure
                        print(f"FAIL setup: {e}", flush=True)
                        print(f"0 passed, {len(tests)} failed", flush=True)
                        return 1

                for name, fn in tests:
                        ctx = harness.TestContext(suite, name)
                        test_started = time.monotonic()
                        failure = skip = None
                        try:
                                fn(ctx)
                        except KeyboardInterrupt:
                                ctx.teardown()
                                raise
                        except harness.Skip as e:
                                skip = str(e)
                        except Exception:  # noqa: BLE001 - the test's failure
                                failure = traceback.format_exc()
                        teardown_errors = ctx.teardown()
                        if skip is not None and not teardown_errors:
                                skipped += 1
                                print(f"skip {name}: {skip}", flush=True)
                                ctx.remove()
                                continue
                        if failure is None and teardown_errors:
                                failure = "\n".join(teardown_errors) + "\n"
                        elif teardown_errors:
                                failure += "also at teardown:\n" + "\n".join(teardown_errors) + "\n"
                        elapsed = time.monotonic() - test_started
                        durations.append((elapsed, name))
                        if failure is None:
                                passed += 1
                                print(f"ok {name}", flush=True)
                                ctx.remove()
                        else:
                                failed += 1
                                print(f"FAIL {name} ({elapsed:.1f} s)", flush=True)
                                print(failure.rstrip(), flush=True)
                                print(ctx.diagnostics(), flush=True)
                                if args.keep:
                                        print(f"--- kept {ctx.dir}", flush=True)
                                else:
                                        ctx.remove()

                # A program that outlived its test (killed at teardown, it
                # may still be writing its report) is caught here.
                late = suite.take_sanitizer_reports()
                if late:
                        failed += 1
                        print("FAIL sanitizer reports after the tests", flush=True)
                        print("\n".join(late), flush=True)
        except KeyboardInterrupt:
                print("interrupted", file=sys.stderr, flush=True)
                failed += 1
        finally:
                suite.stop()

        if args.durations:
                print(f"# the {args.durations} slowest tests:", flush=True)
                for elapsed, name in sorted(durations, reverse=True)[:args.durations]:
                        print(f"#   {elapsed:6.1f} s  {name}", flush=True)
        print(f"# {time.monotonic() - started:.1f} s", flush=True)
        print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""), flush=True)
        return 1 if failed else 0


if __name__ == "__main__":
        sys.exit(main())
