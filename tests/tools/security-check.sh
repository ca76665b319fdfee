#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Checks systemd/mpoold.service the way CI does:
#
#   security-check.sh [THRESHOLD]
#
#   1. `systemd-analyze verify` must accept the unit without a word about it.
#      verify also insists that ExecStart='s program exists; on a build
#      machine /usr/sbin/mpoold usually does not, so a copy of the unit is
#      verified whose ExecStart= names the built daemon instead
#      ($MPOOLD_BINARY, default build/mpoold; the unit as shipped when
#      /usr/sbin/mpoold is installed and no build is there).
#   2. `systemd-analyze security --offline=true` must rate the shipped unit
#      at or below THRESHOLD (default 2.0; systemd-hostnamed.service scores
#      1.5). Needs no running systemd.
#
# Exits 0 when both pass; otherwise 1, with systemd-analyze's output shown.
# Debian package: systemd (systemd-analyze).

set -euo pipefail

readonly INSTALLED_BINARY="/usr/sbin/mpoold"

script_dir=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
source_root=$(cd -- "$script_dir/../.." && pwd -P)
readonly source_root
readonly unit="$source_root/systemd/mpoold.service"

die() {
        echo "security-check.sh: $*" >&2
        exit 1
}

[[ $# -le 1 ]] || { echo "usage: security-check.sh [THRESHOLD]" >&2; exit 2; }
threshold=${1:-2.0}
# systemd-analyze shows exposure in tenths (0.0 to 10.0) but takes its
# --threshold= as a whole number of tenths (0 to 100).
[[ $threshold =~ ^([0-9]|10)(\.([0-9]))?$ ]] || die "THRESHOLD must be 0.0 to 10.0 in steps of 0.1, not '$threshold'"
threshold_tenths=$(( BASH_REMATCH[1] * 10 + ${BASH_REMATCH[3]:-0} ))
(( threshold_tenths <= 100 )) || die "THRESHOLD must be at most 10.0, not '$threshold'"

command -v systemd-analyze > /dev/null || die "systemd-analyze not found (Debian package systemd)"
[[ -r $unit ]] || die "$unit not readable"

work_dir=$(mktemp -d) || die "cannot create a temporary directory"
trap 'rm -rf -- "$work_dir"' EXIT

binary=${MPOOLD_BINARY:-$source_root/build/mpoold}
if [[ -x $binary ]]; then
        binary=$(readlink -f -- "$binary")
        # ExecStart= takes the path as is; one with spaces or specifiers would need quoting.
        [[ $binary =~ ^/[A-Za-z0-9_./+-]+$ ]] || die "cannot name $binary in ExecStart= (unusual characters)"
        grep -q "^ExecStart=$INSTALLED_BINARY " "$unit" || die "$unit has no 'ExecStart=$INSTALLED_BINARY …' line"
        sed "s|^ExecStart=$INSTALLED_BINARY |ExecStart=$binary |" "$unit" > "$work_dir/mpoold.service"
        verified="$work_dir/mpoold.service"
        echo "verify: $unit, with ExecStart=$binary"
elif [[ -x $INSTALLED_BINARY ]]; then
        verified=$unit
        echo "verify: $unit as shipped"
else
        die "neither $binary nor $INSTALLED_BINARY exists; build mpoold first (make) or set MPOOLD_BINARY"
fi

failed=0

# verify may warn about other units on the host; only what concerns ours counts.
if ! output=$(systemd-analyze verify "$verified" 2>&1); then
        echo "FAIL: systemd-analyze verify:"
        echo "$output"
        failed=1
elif grep -q 'mpoold\.service' <<< "$output"; then
        echo "FAIL: systemd-analyze verify warns about the unit:"
        echo "$output"
        failed=1
else
        echo "PASS: systemd-analyze verify"
fi

if ! output=$(systemd-analyze security --offline=true --threshold="$threshold_tenths" "$unit" 2>&1); then
        echo "$output"
        echo "FAIL: systemd-analyze security: exposure above $threshold (see above)"
        failed=1
else
        echo "PASS: systemd-analyze security: $(grep -F 'Overall exposure level' <<< "$output" || echo "$output")"
fi

exit "$failed"
