#!/bin/bash
# SPDX-License-Identifier: MIT
#
# scale.sh BUILD_DIR [MODELS] — mpoold with a full store: MODELS models
# (default 4096, the most the daemon knows: POOL_MODELS_MAX, and
# STORE_LIST_MAX in the listing), each a folder with its own files. Measures
#   - start-up: from the exec of mpoold to its READY=1 (sd_notify, on a
#     socket of our own), best of 3 (the store just written: its folders in
#     the kernel's caches), and the CPU time it took; target <= 1 s;
#   - Status: the round trip with every model known, on one connection (a
#     small C client, bus-latency.c --read-apart, which also times reading
#     every value of the reply, the client's own cost, apart): the median of
#     40 calls, best of 3 rounds; and the CPU time mpoold and the bus daemon
#     spend on each call; target <= 20 ms;
#   - the daemon's memory (RSS, and Pss from smaps_rollup) with every model
#     known, before any Status and after the calls (the reply's buffer
#     stays with malloc), against the same daemon on an empty store.
# The same measures on an empty store come first, as the fixed cost. Prints,
# never asserts.
set -euo pipefail

build=$(readlink -f "${1:-build}")
models=${2:-4096}
starts=3
calls=40
rounds=3
# shellcheck source=tests/bench/lib.sh
source "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"
daemon=
cleanup() {
        stop_daemon
        bench_cleanup
}
stop_daemon() {
        if [[ -n "$daemon" ]]; then
                kill "$daemon" 2> /dev/null || true
                # Not our child (scale.py started it): wait for it to go.
                for _ in $(seq 600); do kill -0 "$daemon" 2> /dev/null || break; sleep 0.05; done
                daemon=
        fi
}
trap cleanup EXIT

bench_need_bus_latency
status_calls() {  # CALLS
        "$build/bus-latency" --address="$address" --method=status --read-apart --calls="$1" --warmup=0
}

"$build/mpool-mkmodel" --size=64K --tensors=4 "$dir/source" > /dev/null
mkdir -p "$dir/empty" "$dir/full"
"$python" "$bench/scale.py" store "$dir/source" "$dir/full" "$models"
bench_start_bus

# start STORE: starts mpoold on STORE, sets $daemon, $ready_ms and $ready_cpu.
start() {
        local out
        printf '[Store]\nModelDir=%s\n' "$1" > "$dir/mpoold.conf"
        out=$("$python" "$bench/scale.py" start "$dir/log" -- \
                "$build/mpoold" --address="$address" --config="$dir/mpoold.conf" --no-polkit)
        daemon=$(sed -n 's/^pid=\([0-9]*\).*/\1/p' <<< "$out")
        ready_ms=$(sed -n 's/.*ready_ms=\([0-9.]*\).*/\1/p' <<< "$out")
        ready_cpu=$(sed -n 's/.*user_ms=\([0-9]*\) system_ms=\([0-9]*\).*/\1 ms user, \2 ms system/p' <<< "$out")
}

# CPU time (user and system) of a process so far, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# field LINE KEY: the value of KEY=… in LINE.
field() { sed -n "s/.*\\b$2=\\([0-9.]*\\).*/\\1/p" <<< "$1"; }

kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/$3"; }

# measure NAME STORE: sets NAME_ready (the best start) and NAME_ready_cpu, the
# memory before any Status (NAME_rss0, NAME_pss0) and after (NAME_rss,
# NAME_pss), NAME_status (bus-latency's line), NAME_cpu and NAME_bus_cpu (µs
# a call), NAME_bytes (the reply's size) and NAME_known (models found).
measure() {
        local name=$1 store=$2 best= best_cpu=
        for _ in $(seq "$starts"); do
                start "$store"
                if [[ -z "$best" ]] || awk -v a="$ready_ms" -v b="$best" 'BEGIN { exit !(a < b) }'; then
                        best=$ready_ms best_cpu=$ready_cpu
                fi
                stop_daemon
        done
        start "$store"
        printf -v "${name}_ready" '%s' "$best"
        printf -v "${name}_ready_cpu" '%s' "$best_cpu"
        # Once the loop has settled (the look at the store that follows the
        # start: a call waits for it), before any Status.
        sleep 0.5
        busctl --address="$address" call org.mpool.Manager /org/mpool/Manager org.freedesktop.DBus.Peer Ping
        printf -v "${name}_rss0" '%s' "$(kib "$daemon" VmRSS status)"
        printf -v "${name}_pss0" '%s' "$(kib "$daemon" Pss smaps_rollup)"
        status_calls 3 > /dev/null
        # The CPU time mpoold and the bus daemon spend on the calls: the
        # round trip's split between them, less moved by other tenants'
        # load than the wall clock. Rounds, the best median counting, as in
        # the other benchmarks: other tenants' load only ever adds.
        local d0 b0 line best_line= best_median=
        d0=$(ticks "$daemon") b0=$(ticks "$bus_pid")
        for _ in $(seq "$rounds"); do
                line=$(status_calls "$calls")
                if [[ -z "$best_median" ]] ||
                   awk -v a="$(field "$line" median_us)" -v b="$best_median" 'BEGIN { exit !(a < b) }'; then
                        best_line=$line best_median=$(field "$line" median_us)
                fi
        done
        printf -v "${name}_status" '%s' "$best_line"
        printf -v "${name}_cpu" '%s' "$(( ($(ticks "$daemon") - d0) * 1000000 / hz / (calls * rounds) ))"
        printf -v "${name}_bus_cpu" '%s' "$(( ($(ticks "$bus_pid") - b0) * 1000000 / hz / (calls * rounds) ))"
        printf -v "${name}_rss" '%s' "$(kib "$daemon" VmRSS status)"
        printf -v "${name}_pss" '%s' "$(kib "$daemon" Pss smaps_rollup)"
        printf -v "${name}_bytes" '%s' "$("$python" "$bench/scale.py" reply-size "$address")"
        printf -v "${name}_known" '%s' "$(sed -n 's/.*Found \([0-9]*\) model(s).*/\1/p' "$dir/log" | tail -n 1)"
        stop_daemon
}

: > "$dir/log"
measure empty "$dir/empty"
: > "$dir/log"
measure full "$dir/full"

echo "scale: $models models in the store ($full_known found), mpoold best of $starts starts, Status best of $rounds rounds of $calls calls"
printf '  %-34s %12s %12s\n' "" "empty store" "$models models"
printf '  %-34s %9s ms %9s ms\n' "start-up to READY=1" "$empty_ready" "$full_ready"
printf '  %-34s %s; %s\n' "  its CPU time (empty; full)" "$empty_ready_cpu" "$full_ready_cpu"
for k in min_us median_us p90_us read_median_us; do
        printf '  %-34s %9.2f ms %9.2f ms\n' "Status $k (round trip)" \
                "$(awk -v v="$(field "$empty_status" "$k")" 'BEGIN { print v / 1000 }')" \
                "$(awk -v v="$(field "$full_status" "$k")" 'BEGIN { print v / 1000 }')"
done | sed 's/ read_median_us (round trip)/ median, reading the reply/; s/_us / /'
printf '  %-34s %9.2f ms %9.2f ms\n' "mpoold CPU per Status" "$(awk -v v="$empty_cpu" 'BEGIN { print v / 1000 }')" \
        "$(awk -v v="$full_cpu" 'BEGIN { print v / 1000 }')"
printf '  %-34s %9.2f ms %9.2f ms\n' "dbus-daemon CPU per Status" "$(awk -v v="$empty_bus_cpu" 'BEGIN { print v / 1000 }')" \
        "$(awk -v v="$full_bus_cpu" 'BEGIN { print v / 1000 }')"
printf '  %-34s %9s B  %9s B\n' "Status reply on the wire" "$empty_bytes" "$full_bytes"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
printf '  %-34s %8s MiB %8s MiB\n' "mpoold RSS, before any Status" "$(mib "$empty_rss0")" "$(mib "$full_rss0")"
printf '  %-34s %8s MiB %8s MiB\n' "mpoold Pss, before any Status" "$(mib "$empty_pss0")" "$(mib "$full_pss0")"
printf '  %-34s %8s MiB %8s MiB\n' "mpoold RSS, after the calls" "$(mib "$empty_rss")" "$(mib "$full_rss")"
printf '  %-34s %8s MiB %8s MiB\n' "mpoold Pss, after the calls" "$(mib "$empty_pss")" "$(mib "$full_pss")"
awk -v m="$models" -v er="$empty_rss0" -v fr="$full_rss0" 'BEGIN {
        printf "  %-34s %8.1f MiB (%.2f KiB a model)\n", "the models known (RSS, before)", (fr - er) / 1024, (fr - er) / m
}'
median=$(field "$full_status" median_us)
awk -v s="$median" -v r="$full_ready" -v m="$models" -v rss="$full_rss0" -v e="$empty_rss0" 'BEGIN {
        printf "scale: ratio=%.2f (20 ms / Status median %.2f ms, target >= 1; READY=1 in %.0f ms, target <= 1000; RSS %.1f MiB with %d models, %.1f empty)\n",
               20000 / s, s / 1000, r, rss / 1024, m, e / 1024
}'
