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
import re
import signal
import subprocess
import sys
import threading
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
                "tests_embedding_model", "tests_embed", "tests_metrics", "tests_pull_state", "tests_stress"]
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


SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$")


def run_shards(args, jobs):
        """run.py once per shard, at once (each starts its own bus, so their
        daemons never meet); their lines as they come, each marked with its
        shard, then the sums. Worth it where the time goes to waiting (a
        daemon under valgrind starting up) rather than to the processors."""
        started = time.monotonic()
        argv = [sys.executable, os.path.abspath(__file__), f"--build={args.build}"] + \
                (["--valgrind"] if args.valgrind else []) + (["--keep"] if args.keep else []) + \
                ([f"--filter={args.filter}"] if args.filter else []) + \
                ([f"--durations={args.durations}"] if args.durations else [])
        procs = [subprocess.Popen(argv + [f"--shard={k}/{jobs}"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for k in range(1, jobs + 1)]
        totals = [0, 0, 0]
        lock = threading.Lock()

        def relay(k, proc):
                for line in proc.stdout:
                        line = line.rstrip("\n")
                        found = SUMMARY.match(line)
                        with lock:
                                if found:
                                        for i in range(3):
                                                totals[i] += int(found.group(i + 1) or 0)
                                print(f"[{k}] {line}", flush=True)
        threads = [threading.Thread(target=relay, args=(k, p)) for k, p in enumerate(procs, 1)]
        for t in threads:
                t.start()
        try:
                for t in threads:
                        t.join()
                codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
                for p in procs:
                        p.terminate()
                raise
        passed, failed, skipped = totals
        if any(codes) and not failed:
                failed = 1   # a shard that failed without saying what (setup, interrupted)
        print(f"# {time.monotonic() - started:.1f} s in {jobs} shards", flush=True)
        print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""), flush=True)
        return 1 if failed or any(codes) else 0


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
        parser.add_argument("--shard", default=None, metavar="K/N",
                            help="run only every Nth test, from the Kth on (K from 1)")
        parser.add_argument("--jobs", type=int, default=1, metavar="N",
                            help="run the tests in N shards at once, each with its own bus")
        args = parser.parse_args()
        load_modules(args.valgrind)

        source_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        build_dir = os.path.abspath(args.build)
        tests = collect(args.filter)
        if args.shard and args.jobs > 1:
                parser.error("--shard and --jobs do not go together")
        if args.shard:
                k, n = (int(x) for x in args.shard.split("/"))
                if not 1 <= k <= n:
                        parser.error(f"--shard={args.shard}: K must be from 1 to N")
                tests = tests[k - 1::n]
        if args.list:
                for name, _ in tests:
                        print(name)
                return 0
        if not tests:
                print(f"no test matches --filter={args.filter}", file=sys.stderr)
                return 2
        if args.jobs > 1 and len(tests) > 1:
                return run_shards(args, min(args.jobs, len(tests)))

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
