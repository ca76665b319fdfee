#!/bin/bash
# SPDX-License-Identifier: MIT
#
# A private bus that behaves like the system bus, for development and tests.
#
#   private-bus.sh start DIR [--allow-own-user=USER]
#       Writes DIR/bus.conf, starts dbus-daemon listening on
#       DIR/system_bus_socket, writes DIR/address and DIR/pid and prints the
#       address. The policy is the system bus's strict default plus
#       /usr/share/dbus-1/system.d and this checkout's
#       dbus/org.mpool.Manager.conf, so the shipped policy is what gets tested.
#       --allow-own-user=USER additionally lets USER own org.mpool.Manager
#       (and monitor the bus), so a non-root developer can run mpoold on it.
#
#   private-bus.sh stop DIR
#       Stops the bus started in DIR.

set -euo pipefail

readonly BUS_NAME="org.mpool.Manager"
readonly SYSTEM_POLICY_DIR="/usr/share/dbus-1/system.d"

script_dir=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
source_root=$(cd -- "$script_dir/../.." && pwd -P)
readonly source_root
readonly service_policy="$source_root/dbus/org.mpool.Manager.conf"

die() {
        echo "private-bus.sh: $*" >&2
        exit 1
}

usage() {
        echo "usage: private-bus.sh start DIR [--allow-own-user=USER]" >&2
        echo "       private-bus.sh stop DIR" >&2
        exit 2
}

xml_escape() {
        local s=$1
        s=${s//&/&amp;}
        s=${s//</&lt;}
        s=${s//>/&gt;}
        s=${s//\"/&quot;}
        s=${s//\'/&apos;}
        printf '%s' "$s"
}

# D-Bus address values may only carry [-0-9A-Za-z_/.\*] literally;
# every other byte is %-escaped.
dbus_address_escape() {
        local LC_ALL=C s=$1 out="" c i
        for (( i = 0; i < ${#s}; i++ )); do
                c=${s:i:1}
                case $c in
                        [-0-9A-Za-z_/.\\*]) out+=$c ;;
                        *) out+=$(printf '%%%02x' "'$c") ;;
                esac
        done
        printf '%s' "$out"
}

# True if PID is a dbus-daemon started with the config file in DIR, so a
# stale pid file never makes us signal an unrelated process.
is_our_daemon() {
        local pid=$1 dir=$2 cmdline
        [[ $pid =~ ^[1-9][0-9]*$ ]] || return 1
        cmdline=$(tr '\0' '\n' 2>/dev/null < "/proc/$pid/cmdline") || return 1
        grep -qxF -- "--config-file=$dir/bus.conf" <<< "$cmdline"
}

write_config() {
        local dir=$1 own_user=$2 socket address
        socket="$dir/system_bus_socket"
        address="unix:path=$(dbus_address_escape "$socket")"

        {
                cat <<EOF
<?xml version="1.0" encoding="UTF-8"?> <!-- -*- XML -*- -->

<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">

<!-- Written by tests/tools/private-bus.sh: a private bus with the system bus's policy. -->
<busconfig>
  <type>system</type>
  <listen>$(xml_escape "$address")</listen>
  <auth>EXTERNAL</auth>

  <policy context="default">
    <allow user="*"/>

    <deny own="*"/>
    <deny send_type="method_call"/>

    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>

    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>

    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>

  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>

  <includedir>$(xml_escape "$SYSTEM_POLICY_DIR")</includedir>
  <include>$(xml_escape "$service_policy")</include>
EOF
                if [[ -n $own_user ]]; then
                        cat <<EOF

  <!-- Development only: lets a non-root developer run mpoold and busctl monitor here. -->
  <policy user="$(xml_escape "$own_user")">
    <allow own="$BUS_NAME"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
EOF
                fi
                echo "</busconfig>"
        } > "$dir/bus.conf.tmp"
        mv -f -- "$dir/bus.conf.tmp" "$dir/bus.conf"
}

cmd_start() {
        local dir="" own_user="" arg output address pid
        for arg in "$@"; do
                case $arg in
                        --allow-own-user=*) own_user=${arg#--allow-own-user=} ;;
                        -*) usage ;;
                        *) [[ -z $dir ]] || usage; dir=$arg ;;
                esac
        done
        [[ -n $dir ]] || usage

        command -v dbus-daemon > /dev/null || die "dbus-daemon not found (Debian package dbus-daemon)"
        [[ -r $service_policy ]] || die "service policy $service_policy not readable"
        if [[ -n $own_user ]]; then
                [[ $own_user =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$ ]] || die "invalid user name '$own_user'"
                id -u -- "$own_user" > /dev/null 2>&1 || die "no such user '$own_user'"
        fi

        mkdir -p -- "$dir" || die "cannot create $dir"
        dir=$(cd -- "$dir" && pwd -P) || die "cannot enter $dir"
        # Unprivileged test users must be able to reach the socket.
        chmod 0755 -- "$dir" || die "cannot chmod $dir"

        if [[ -e $dir/pid ]] && is_our_daemon "$(< "$dir/pid")" "$dir"; then
                die "a bus is already running in $dir (pid $(< "$dir/pid")); stop it first"
        fi
        rm -f -- "$dir/pid" "$dir/address" "$dir/system_bus_socket"

        write_config "$dir" "$own_user"

        # With --fork the parent prints the address and the pid (one per line)
        # once the bus is listening, then exits.
        if ! output=$(dbus-daemon --config-file="$dir/bus.conf" --fork \
                                  --print-address=1 --print-pid=1 2> "$dir/dbus-daemon.log"); then
                die "dbus-daemon failed to start: $(cat -- "$dir/dbus-daemon.log")"
        fi
        address=$(sed -n 1p <<< "$output")
        pid=$(sed -n 2p <<< "$output")
        [[ $address == unix:* ]] || die "dbus-daemon printed no address: $output"
        [[ $pid =~ ^[1-9][0-9]*$ ]] || die "dbus-daemon printed no pid: $output"

        echo "$pid" > "$dir/pid"
        echo "$address" > "$dir/address"
        echo "$address"
}

cmd_stop() {
        local dir pid i
        [[ $# -eq 1 ]] || usage
        dir=$(cd -- "$1" 2> /dev/null && pwd -P) || die "no such directory $1"
        [[ -r $dir/pid ]] || die "no bus running in $dir (no pid file)"
        pid=$(< "$dir/pid")

        if is_our_daemon "$pid" "$dir"; then
                kill -TERM "$pid" 2> /dev/null || true
                for (( i = 0; i < 50; i++ )); do
                        is_our_daemon "$pid" "$dir" || break
                        sleep 0.1
                done
                if is_our_daemon "$pid" "$dir"; then
                        kill -KILL "$pid" 2> /dev/null || true
                        sleep 0.1
                        ! is_our_daemon "$pid" "$dir" || die "bus (pid $pid) did not exit"
                fi
        else
                echo "private-bus.sh: bus in $dir (pid $pid) was not running" >&2
        fi
        rm -f -- "$dir/pid" "$dir/address" "$dir/system_bus_socket"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        *) usage ;;
esac
