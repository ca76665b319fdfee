#!/bin/bash
# SPDX-License-Identifier: MIT
#
# run-dev.sh BUILD_DIR — what `make run` executes after building.
#
# Creates a demo model store (once), writes a development config, starts a
# private system-like bus and runs BUILD_DIR/mpoold on it in the foreground.
# Ctrl-C or SIGTERM stops mpoold and then the bus.

set -euo pipefail

die() {
        echo "run-dev.sh: $*" >&2
        exit 1
}

[[ $# -eq 1 ]] || { echo "usage: run-dev.sh BUILD_DIR" >&2; exit 2; }

script_dir=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
build_dir=$(cd -- "$1" 2> /dev/null && pwd -P) || die "no such build directory: $1"
readonly script_dir build_dir
readonly mpoold="$build_dir/mpoold"
readonly mkmodel="$build_dir/mpool-mkmodel"
readonly private_bus="$script_dir/private-bus.sh"

[[ -x $mpoold ]] || die "$mpoold not found; build it first (make)"

readonly dev_dir="${XDG_RUNTIME_DIR:-/tmp}/mpool-dev-$UID"
readonly store_dir="$dev_dir/models"
readonly config="$dev_dir/mpoold.conf"
readonly bus_dir="$dev_dir/bus"

# /tmp is shared: refuse a directory someone else planted for us.
if [[ -e $dev_dir || -L $dev_dir ]]; then
        [[ -d $dev_dir && ! -L $dev_dir && -O $dev_dir ]] ||
                die "$dev_dir exists but is not a directory owned by $(id -un)"
else
        mkdir -m 0755 -- "$dev_dir" || die "cannot create $dev_dir"
fi

if [[ ! -d $store_dir ]]; then
        [[ -x $mkmodel ]] || die "$mkmodel not found; build it first (make)"
        echo "Creating the demo store in $store_dir ..."
        # Built aside and renamed, so an interrupted run leaves no half store
        # that later runs would take as complete.
        staging="$dev_dir/models.new"
        rm -rf -- "$staging"
        mkdir -p -- "$staging/demo"
        "$mkmodel" --size=64M --tensors=8 "$staging/demo/tiny" ||
                die "mpool-mkmodel failed for demo/tiny"
        "$mkmodel" --size=256M "$staging/demo/small" ||
                die "mpool-mkmodel failed for demo/small"
        mv -T -- "$staging" "$store_dir"
fi

printf '[Store]\nModelDir=%s\n[Pool]\nIdleTimeoutSec=60\n' "$store_dir" > "$config.new"
mv -f -- "$config.new" "$config"

bus_args=(start "$bus_dir")
if [[ $EUID -ne 0 ]]; then
        bus_args+=("--allow-own-user=$(id -un)")
fi
address=$("$private_bus" "${bus_args[@]}") ||
        die "could not start the private bus in $bus_dir. If it is left over from an earlier run" \
            "and no other 'make run' is active, stop it with: $private_bus stop '$bus_dir'"
trap '"$private_bus" stop "$bus_dir" || true' EXIT

cat <<EOF

mpool development instance
  store:   $store_dir (demo/tiny, demo/small)
  config:  $config
  bus:     $address

From a second terminal:
  export DBUS_SYSTEM_BUS_ADDRESS='$address'
  busctl --address='$address' call org.mpool.Manager /org/mpool/Manager org.mpool.Manager Load 'sa{sv}' demo/tiny 0
  busctl --address='$address' call org.mpool.Manager /org/mpool/Manager org.mpool.Manager Status
  busctl --address='$address' monitor org.mpool.Manager
  busctl --address='$address' tree org.mpool.Manager

Ctrl-C stops mpoold and the bus.

EOF

# mpoold runs as a background job so this shell can act on SIGTERM while it
# runs (a foreground child would defer the trap until it exits). Background
# jobs of a non-interactive shell ignore SIGINT, hence the reset: Ctrl-C
# reaches mpoold directly, as it shares our process group.
( trap - INT QUIT; exec "$mpoold" --address="$address" --config="$config" --no-polkit ) &
daemon_pid=$!

interrupted=0
# shellcheck disable=SC2317  # called from the trap below
forward_stop() {
        interrupted=1
        kill -TERM "$daemon_pid" 2> /dev/null || true
}
trap forward_stop INT TERM HUP

# `wait` returns early whenever a trapped signal arrives; keep waiting until
# mpoold itself has exited so the bus outlives it.
while :; do
        interrupted=0
        status=0
        wait "$daemon_pid" || status=$?
        (( interrupted )) || break
done

exit "$status"
