#!/bin/bash
# SPDX-License-Identifier: MIT
#
# install-check.sh — `make install` into a scratch DESTDIR with Debian's
# paths must produce exactly the tree a packager would ship.
set -euo pipefail

cd "$(dirname -- "$(readlink -f -- "$0")")/../.."
dest=$(mktemp -d)
trap 'rm -rf -- "$dest"' EXIT

make --no-print-directory -s install DESTDIR="$dest" PREFIX=/usr > /dev/null

expected=$(cat <<'LIST'
/etc/mpool/mpoold.conf
/lib/systemd/system/mpoold.service
/usr/bin/mpool-client
/usr/lib/sysusers.d/mpool.conf
/usr/lib/tmpfiles.d/mpool.conf
/usr/libexec/mpool/mpool-pull
/usr/sbin/mpoold
/usr/share/bash-completion/completions/mpool-client
/usr/share/dbus-1/interfaces/org.mpool.Manager.xml
/usr/share/dbus-1/system-services/org.mpool.Manager.service
/usr/share/dbus-1/system.d/org.mpool.Manager.conf
/usr/share/man/man1/mpool-client.1
/usr/share/polkit-1/actions/org.mpool.policy
LIST
)
actual=$(cd "$dest" && find . -type f -o -type l | sed 's|^\.||' | sort)

if [[ $actual != "$expected" ]]; then
        echo "install-check: the installed tree differs from the expected one:" >&2
        diff <(echo "$expected") <(echo "$actual") >&2 || true
        exit 1
fi

grep -q '^ExecStart=/usr/sbin/mpoold --system$' "$dest/lib/systemd/system/mpoold.service" || {
        echo "install-check: the installed unit does not start /usr/sbin/mpoold" >&2
        exit 1
}
for f in usr/sbin/mpoold usr/bin/mpool-client usr/libexec/mpool/mpool-pull; do
        [[ -x $dest/$f ]] || { echo "install-check: $f is not executable" >&2; exit 1; }
done
echo "install-check: $(echo "$expected" | wc -l) files installed where Debian expects them."
