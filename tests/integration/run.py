#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Integration tests of mpoold: the real daemon on a private system-type bus,
driven through busctl and python-dbus.

    /usr/bin/python3 tests/integration/run.py --build=build [--filter=SUBSTRING] [--keep]

Each test is a function test_NAME(ctx) in one of the modules below; it gets a
fresh TestContext (own temp directory, store, config, signal monitor) and
starts its own mpoold. Prints "ok NAME" or "FAIL NAME" with the traceback and
the daemon's log, then "N passed, M failed"; exits non-zero if any failed.
A report of a sanitized build (`make check SANITIZE=1`) fails its test."""

import argparse
import os
import signal
import sys
import time
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import tests_callers  # noqa: E402
import tests_client  # noqa: E402
import tests_embed  # noqa: E402
import tests_embed_client  # noqa: E402
import tests_embedding_model  # noqa: E402
import tests_errors  # noqa: E402
import tests_files  # noqa: E402
import tests_holds  # noqa: E402
import tests_idle  # noqa: E402
import tests_index  # noqa: E402
import tests_inspect  # noqa: E402
import tests_lifecycle  # noqa: E402
import tests_load  # noqa: E402
import tests_memory  # noqa: E402
import tests_metrics  # noqa: E402
import tests_names  # noqa: E402
import tests_objects  # noqa: E402
import tests_openfiles  # noqa: E402
import tests_polkit  # noqa: E402
import tests_probe  # noqa: E402
import tests_pull  # noqa: E402
import tests_pull_daemon  # noqa: E402
import tests_pull_state  # noqa: E402
import tests_queue  # noqa: E402
import tests_registry  # noqa: E402
import tests_signals  # noqa: E402
import tests_stress  # noqa: E402
import tests_watch  # noqa: E402

MODULES = [tests_load, tests_idle, tests_memory, tests_holds, tests_errors, tests_files, tests_objects,
           tests_lifecycle, tests_probe, tests_index, tests_queue, tests_client, tests_polkit, tests_callers,
           tests_names, tests_signals, tests_watch, tests_pull, tests_pull_daemon, tests_registry,
           tests_openfiles, tests_inspect, tests_embed_client, tests_embedding_model,
           tests_embed, tests_metrics, tests_pull_state, tests_stress]


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
        args = parser.parse_args()

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

        print(f"# {time.monotonic() - started:.1f} s", flush=True)
        print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""), flush=True)
        return 1 if failed else 0


if __name__ == "__main__":
        sys.exit(main())
