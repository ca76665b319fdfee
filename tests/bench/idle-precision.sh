#!/bin/bash
# SPDX-License-Identifier: MIT
#
# idle-precision.sh BUILD_DIR [ROUNDS] — how close to its expiry each model
# is unloaded for idleness: 20 small models per round loaded at random
# instants with keep_alive_sec 1, 2 or 3 (a third of them also held and
# released), each ModelUnloaded timed on arrival against the model's expiry
# (its last use, the Load or the Release, plus its keep-alive: the expiry
# the daemon states, checked against the client's own bounds, the call and
# the reply; idle-precision.py says how). Target: at most 100 ms late,
# never early. Prints, never asserts; the last line is the ratio
# 100 ms / the largest lateness.
set -euo pipefail

build=$(readlink -f "${1:-build}")
rounds=${2:-3}
models=20
# shellcheck source=tests/bench/lib.sh
source "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"

for i in $(seq 0 $((models - 1))); do
        "$build/mpool-mkmodel" --size=64K "$dir/models/$(printf 'm%02d' "$i")" > /dev/null
done
# The pool's own timeout stays out of the way: each Load sets its keep-alive.
bench_start "[Pool]
MemoryLimit=50%
IdleTimeoutSec=3600"

"$python" "$bench/idle-precision.py" "$address" "$models" "$rounds" > "$dir/result.json"

"$python" - "$dir/result.json" "$models" "$rounds" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, sys

r = json.load(open(sys.argv[1]))
models, rounds, load = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print("idle-precision: %d models per round, keep-alive 1-3 s, %d rounds; load average %s" % (models, rounds, load))
for f in r["failures"]:
    print("  FAILED: %s" % f)
if r["not_idle"]:
    print("  unloaded for another reason than idle: %s" % ", ".join(r["not_idle"]))
for line in r["rounds"]:
    print("  " + line)
print("  unloads timed %d of %d; the daemon's stated expiry within the client's bounds for %d%s"
      % (r["measured"], r["models"], r["stated"],
         "" if not r["outside"] else " (outside for %s)" % " ".join(r["outside"])))
print("  lateness: median %.1f ms, min %.1f ms, max %.1f ms" % (r["median_late_ms"], r["min_late_ms"],
                                                            r["max_late_ms"]))
print("  the client's bounds alone: from the reply + keep-alive min %.1f ms, max %.1f ms (%d arrived before);"
      % (r["reply_min_ms"], r["reply_max_ms"], r["before_reply"]))
print("    from the call + keep-alive max %.1f ms (%d arrived before); longest call %.1f ms"
      % (r["call_max_ms"], r["before_call"], r["span_max_ms"]))
worst = max(r["max_late_ms"], 0.001)
print("idle-precision: ratio=%.2f (target >= 1; early: %d)" % (100.0 / worst, r["early"]))
PY
