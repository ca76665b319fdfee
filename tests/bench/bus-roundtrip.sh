#!/bin/bash
# SPDX-License-Identifier: MIT
#
# bus-roundtrip.sh BUILD_DIR [SECONDS [ROUNDS]] — what a Status round trip
# costs with 10 small models loaded, against org.freedesktop.DBus.Peer.Ping
# to the same mpoold through the same bus daemon, timed by a C client
# (bus-latency.c, which reads every value of the Status reply). (a) One
# connection: median Status / median Ping, target <= 1.5. (b) 32
# connections at once: Status p99 / Ping p99, each under its own
# 32-connection load, target <= 2 (on 2 cores the bus daemon saturates, so
# only like is compared with like). Also, for one connection: Status with
# its reply received but not read (what the client's unmarshalling costs),
# and the CPU time per call of mpoold, dbus-daemon and the client. The
# methods alternate over ROUNDS rounds and each one's best run counts.
# Prints, never asserts; the last line is the ratio.
set -euo pipefail

build=$(readlink -f "${1:-build}")
seconds=${2:-3}
rounds=${3:-3}
models=10
many=32
# shellcheck source=tests/bench/lib.sh
source "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"

bench_need_bus_latency

for i in $(seq "$models"); do
        "$build/mpool-mkmodel" --size=1M --tensors=4 "$dir/models/bench-$i" > /dev/null
done
# No idle unloads during the run: the models stay loaded throughout.
bench_start "[Pool]
MemoryLimit=90%
IdleTimeoutSec=3600"
for i in $(seq "$models"); do
        busctl --address="$address" call org.mpool.Manager /org/mpool/Manager org.mpool.Manager \
                Load 'sa{sv}' "bench-$i" 0 > /dev/null
done
loaded=$(busctl --address="$address" --json=short call org.mpool.Manager /org/mpool/Manager org.mpool.Manager Status |
        "$python" -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["models_loaded"]["data"])')

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# The shell's children's user and system time, in clock ticks: `times`
# runs in this shell (a subshell would report its own children).
children_ticks() {
        times > "$dir/times"
        tail -n 1 "$dir/times" | awk -v hz="$(getconf CLK_TCK)" '{
                t = 0
                for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
                printf "%.0f\n", t * hz }'
}

run() {  # METHOD CONNECTIONS OUT [OPTION]
        local d0 b0 c0 d1 b1
        children_ticks > "$dir/c0"
        d0=$(ticks "$daemon") b0=$(ticks "$bus_pid")
        "$build/bus-latency" --address="$address" --method="$1" --connections="$2" --seconds="$seconds" \
                --warmup=200 ${4:+"$4"} > "$dir/line"
        d1=$(ticks "$daemon") b1=$(ticks "$bus_pid")
        children_ticks > "$dir/c1"
        echo "$(cat "$dir/line") mpoold_ticks=$((d1 - d0)) bus_ticks=$((b1 - b0))" \
                "client_ticks=$(( $(cat "$dir/c1") - $(cat "$dir/c0") ))" >> "$3"
}

# The machine may be shared: the two methods take turns, each starting a
# round in turn, and each one's best run counts.
for round in $(seq "$rounds"); do
        if (( round % 2 )); then order="ping status"; else order="status ping"; fi
        for method in $order; do
                run "$method" 1 "$dir/$method-1.txt"
        done
        run status 1 "$dir/status-noread-1.txt" --no-read
        for method in $order; do
                run "$method" "$many" "$dir/$method-$many.txt"
        done
done

"$python" - "$dir" "$many" "$loaded" "$rounds" "$seconds" "$(getconf CLK_TCK)" "$(cat /proc/loadavg)" <<'EOF'
import os, sys

d, many, loaded, rounds, seconds, hz, loadavg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], \
    sys.argv[5], int(sys.argv[6]), sys.argv[7]
def runs(name):
    return [dict(kv.split("=") for kv in line.split()) for line in open(os.path.join(d, name + ".txt"))]
def best(name, key):
    return min(runs(name), key=lambda r: float(r[key]))
def cpu_us(r, who):
    return int(r[who + "_ticks"]) * 1e6 / hz / int(r["calls"])
s1, p1, u1 = best("status-1", "median_us"), best("ping-1", "median_us"), best("status-noread-1", "median_us")
sn, pn = best("status-%d" % many, "p99_us"), best("ping-%d" % many, "p99_us")
print("bus-roundtrip: %s models loaded; best of %s rounds of %s s each; load average %s" %
      (loaded, rounds, seconds, " ".join(loadavg.split()[:3])))
fmt = "  %-22s %3d conn  median %8.1f us  p90 %8.1f us  p99 %8.1f us  max %9.1f us  %7.0f calls/s"
for label, r in (("Ping", p1), ("Status", s1), ("Status, reply not read", u1), ("Ping", pn), ("Status", sn)):
    print(fmt % (label, int(r["connections"]), float(r["median_us"]), float(r["p90_us"]), float(r["p99_us"]),
                 float(r["max_us"]), float(r["calls_per_s"])))
print("  CPU per call, 1 connection (us):  mpoold  dbus-daemon  client")
for label, r in (("Ping", p1), ("Status", s1), ("Status, reply not read", u1)):
    print("    %-30s %6.1f %12.1f %7.1f" % (label, cpu_us(r, "mpoold"), cpu_us(r, "bus"), cpu_us(r, "client")))
print("  every run (median/p99 us):")
for name in ("ping-1", "status-1", "status-noread-1", "ping-%d" % many, "status-%d" % many):
    print("    %-16s %s" % (name, "  ".join("%s/%s" % (r["median_us"], r["p99_us"]) for r in runs(name))))
print("  Status/Ping median with the reply not read: %.2f" % (float(u1["median_us"]) / float(p1["median_us"])))
median_ratio = float(s1["median_us"]) / float(p1["median_us"])
p99_ratio = float(sn["p99_us"]) / float(pn["p99_us"])
print("bus-roundtrip: ratio=%.2f (target <= 1.5; p99 at %d connections %.2f target <= 2)" %
      (median_ratio, many, p99_ratio))
EOF
