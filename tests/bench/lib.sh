# SPDX-License-Identifier: MIT
# shellcheck shell=bash disable=SC2034,SC2154  # sets for its callers, uses their $build
#
# Sourced by the benchmarks in tests/bench/, once $build (the build
# directory) is set:
#
#       source "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"
#
# Sets $top (the source tree), $bench (this directory), $python and $dir, a
# temporary directory that the EXIT trap, bench_cleanup, removes with the
# bus and the daemon started here; a script with more to clean up sets its
# own trap and calls bench_cleanup from it.
#
#   bench_need_bus_latency  builds $build/bus-latency if `make bench` has not.
#   bench_start_bus         starts the private bus in $dir/bus; sets $address
#                           and $bus_pid.
#   bench_start_mpoold CONF writes [Store] ModelDir=$dir/models and CONF to
#                           $dir/mpoold.conf, starts mpoold on $address with
#                           it (its log in $dir/log), sets $daemon, and
#                           returns once org.mpool.Manager answers.
#   bench_start CONF        both.
#   bench_cleanup           for the EXIT trap: stops mpoold and the bus,
#                           removes $dir.

# `make bench` runs every tests/bench/*.sh: run rather than sourced, this
# file has nothing to do.
[[ "${BASH_SOURCE[0]}" != "$0" ]] || exit 0

bench=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
top=$(cd -- "$bench/../.." && pwd -P)
python=/usr/bin/python3
dir=$(mktemp -d)
trap bench_cleanup EXIT

bench_need_bus_latency() {
        [ -x "$build/bus-latency" ] || make -C "$top" --no-print-directory B="$build" "$build/bus-latency" > /dev/null
}

bench_start_bus() {
        address=$("$top/tests/tools/private-bus.sh" start "$dir/bus")
        bus_pid=$(cat "$dir/bus/pid")
}

bench_start_mpoold() {
        printf '[Store]\nModelDir=%s/models\n%s\n' "$dir" "$1" > "$dir/mpoold.conf"
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
