# SPDX-License-Identifier: MIT
#
# Sourced by the benchmarks in tests/bench/: a private bus and an mpoold on
# it, and their end. The caller sets $top (the source tree), $build (the
# build directory) and $dir (its own temporary directory, removed at exit).
#
#   bench_start_bus         starts the private bus in $dir/bus; sets $address
#                           and $bus_pid.
#   bench_start_mpoold CONF writes CONF to $dir/mpoold.conf, starts mpoold
#                           on $address with it (its log in $dir/log), sets
#                           $daemon, and returns once org.mpool.Manager
#                           answers.
#   bench_start CONF        both.
#   bench_cleanup           for the EXIT trap: stops mpoold and the bus,
#                           removes $dir.

# `make bench` runs every tests/bench/*.sh: run rather than sourced, this
# file has nothing to do.
[[ "${BASH_SOURCE[0]}" != "$0" ]] || exit 0

bench_start_bus() {
        address=$("$top/tests/tools/private-bus.sh" start "$dir/bus")
        bus_pid=$(cat "$dir/bus/pid")
}

bench_start_mpoold() {
        printf '%s\n' "$1" > "$dir/mpoold.conf"
        "$build/mpoold" --address="$address" --config="$dir/mpoold.conf" --no-polkit 2> "$dir/log" &
        daemon=$!
        for _ in $(seq 300); do
                busctl --address="$address" status org.mpool.Manager > /dev/null 2>&1 && break
                sleep 0.1
        done
}

bench_start() {
        bench_start_bus
        bench_start_mpoold "$1"
}

bench_cleanup() {
        # Only a pid of ours: `kill 0` would signal the whole process group,
        # make's included.
        if [[ -n "${daemon:-}" ]]; then
                kill "$daemon" 2> /dev/null || true
        fi
        wait 2> /dev/null || true
        "$top/tests/tools/private-bus.sh" stop "$dir/bus" > /dev/null 2>&1 || true
        rm -rf -- "$dir"
}
