#!/bin/bash
# SPDX-License-Identifier: MIT
#
# responsiveness.sh BUILD_DIR [SECONDS [ROUNDS]] — whether mpoold keeps
# answering while it works: the p99 of Status round trips (bus-latency.c,
# one connection, back to back, the whole reply read) at rest, against the
# same while a 2 GiB model loads (Load and Unload in a loop, its file
# dropped from the page cache before each Load so that the loader reads
# the disk; then again from the page cache), and while every worker of an
# embedding model is busy (the BERT of embed-throughput.sh, MaxWorkers=2,
# twice as many callers as workers, each calling Embed back to back).
# Target: each p99 <= 2 x the p99 at rest. The phases take turns, ROUNDS
# times, SECONDS each, and each phase's best run counts. Prints, never
# asserts; the last line is the worst ratio.
set -euo pipefail

build=$(readlink -f "${1:-build}")
seconds=${2:-4}
rounds=${3:-3}
workers=2
callers=$((2 * workers))
# shellcheck source=tests/bench/lib.sh
source "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"

bench_need_bus_latency

"$build/mpool-mkmodel" --size=2G --tensors=16 "$dir/models/big" > /dev/null
"$python" "$bench/embed-throughput.py" model "$dir/models/bert"
bench_start "[Pool]
MemoryLimit=90%
IdleTimeoutSec=3600
[Workers]
MaxWorkers=$workers"
# Loaded in every phase, so that Status says as much in each.
busctl --address="$address" call org.mpool.Manager /org/mpool/Manager org.mpool.Manager Load 'sa{sv}' bert 0 > /dev/null

status() {  # OUT
        "$build/bus-latency" --address="$address" --method=status --seconds="$seconds" --warmup=200 >> "$1"
}

# Status while FILE loads again and again, cold or warm.
loading() {  # cold|warm
        local file="$dir/models/big/model.safetensors"
        rm -f "$dir/stop" "$dir/ready"
        [ "$1" = warm ] && cat "$file" > /dev/null
        "$python" "$bench/responsiveness.py" loads "$address" big "$file" "$1" "$dir/ready" "$dir/stop" \
                >> "$dir/loads-$1.json" &
        local pid=$!
        for _ in $(seq 600); do [ -e "$dir/ready" ] && break; sleep 0.01; done
        status "$dir/status-$1.txt"
        touch "$dir/stop"
        wait "$pid"
}

embedding() {
        rm -f "$dir/stop" "$dir/ready"
        "$python" "$bench/responsiveness.py" embed "$dir/models/bert" "$address" bert "$callers" "$dir/ready" \
                "$dir/stop" >> "$dir/embed.json" &
        local pid=$!
        for _ in $(seq 600); do [ -e "$dir/ready" ] && break; sleep 0.1; done
        status "$dir/status-embed.txt"
        touch "$dir/stop"
        wait "$pid"
}

for _ in $(seq "$rounds"); do
        status "$dir/status-rest.txt"
        loading cold
        loading warm
        embedding
done

"$python" - "$dir" "$rounds" "$seconds" "$workers" "$callers" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, os, sys

d, rounds, seconds, workers, callers, load = sys.argv[1:7]
def runs(name):
    return [dict(kv.split("=") for kv in line.split()) for line in open(os.path.join(d, "status-%s.txt" % name))]
def jsons(name):
    return [json.loads(line) for line in open(os.path.join(d, name))]
best = {name: min(runs(name), key=lambda r: float(r["p99_us"])) for name in ("rest", "cold", "warm", "embed")}
print("responsiveness: Status round trips, 1 connection, %s s per run, best p99 of %s rounds; load average %s"
      % (seconds, rounds, load))
labels = {"rest": "at rest", "cold": "2 GiB loading, cold", "warm": "2 GiB loading, cached",
          "embed": "%s workers busy" % workers}
for name, r in best.items():
    print("  %-24s median %7.1f us  p90 %7.1f us  p99 %8.1f us  max %9.1f us  %6.0f calls/s  p99/rest %5.2f"
          % (labels[name], float(r["median_us"]), float(r["p90_us"]), float(r["p99_us"]), float(r["max_us"]),
             float(r["calls_per_s"]), float(r["p99_us"]) / float(best["rest"]["p99_us"])))
for mode in ("cold", "warm"):
    loads = jsons("loads-%s.json" % mode)
    n = sum(x["loads"] for x in loads)
    mean = sum(x["mean_s"] * x["loads"] for x in loads) / max(1, n)
    print("  loads %s: %d, %.2f s each on average; share of the file cached before a load %.0f%% to %.0f%%"
          % (mode, n, mean, 100 * min(x["cached_before_min"] for x in loads),
             100 * max(x["cached_before_max"] for x in loads)))
emb = jsons("embed.json")
print("  Embed: %d calls of 8 texts from %s callers, %.2f s each on average"
      % (sum(x["calls"] for x in emb), callers, sum(x["mean_s"] * x["calls"] for x in emb) / sum(x["calls"] for x in emb)))
print("  every run (median/p99 us):")
for name in best:
    print("    %-6s %s" % (name, "  ".join("%s/%s" % (r["median_us"], r["p99_us"]) for r in runs(name))))
worst = max(("cold", "warm", "embed"), key=lambda n: float(best[n]["p99_us"]))
print("responsiveness: ratio=%.2f (target <= 2; worst: %s)"
      % (float(best[worst]["p99_us"]) / float(best["rest"]["p99_us"]), labels[worst]))
PY
