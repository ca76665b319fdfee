#!/bin/bash
# A stand-in for mpool-pull in the unit tests of the daemon's side of the
# protocol (daemon/pull-process.c): behaves as --repo= says; with
# --inspect, as an inspection (the repositories named inspect-*).
set -u
repo=""
staging=""
inspect=0
for arg in "$@"; do
        case "$arg" in
        --repo=*) repo="${arg#--repo=}" ;;
        --staging=*) staging="${arg#--staging=}" ;;
        --inspect) inspect=1 ;;
        esac
done

plan_files() {
        echo "COMMIT 0123456789abcdef0123456789abcdef01234567"
        echo "FILE 100 - config.json"
        echo "FILE 4096 $(printf 'a%.0s' $(seq 64)) model.safetensors"
        echo "TOTAL 4196 2"
}

plan() {
        plan_files
        echo "READY"
}

# What the weights hold: MEMORY is model.safetensors' size in pages (the
# test passes the page size), within what the plan allows.
weights() {
        echo "TENSORS 3"
        echo "PARAMETERS 1000"
        echo "DTYPE BF16 600"
        echo "DTYPE F32 400"
        echo "MEMORY ${FAKE_PULL_MEMORY:-4096}"
}

if [ "$inspect" = 1 ]; then
        case "$repo" in
        inspect-ok)
                plan_files
                weights
                echo "DONE"
                ;;
        inspect-not-found)
                echo "FAILED not-found The repository inspect-not-found does not exist at main."
                exit 1
                ;;
        inspect-hang)
                plan_files
                trap 'kill $! 2>/dev/null; echo "FAILED cancelled The download was cancelled."; exit 1' TERM
                sleep 30 & wait
                ;;
        inspect-ready)
                plan
                weights
                echo "DONE"
                ;;
        inspect-early)
                echo "COMMIT 0123456789abcdef0123456789abcdef01234567"
                echo "TENSORS 3"
                sleep 30
                ;;
        inspect-no-memory)
                plan_files
                echo "TENSORS 3"
                echo "PARAMETERS 1000"
                echo "DTYPE F32 1000"
                echo "DONE"
                ;;
        inspect-unsorted)
                plan_files
                echo "TENSORS 3"
                echo "PARAMETERS 1000"
                echo "DTYPE F32 400"
                echo "DTYPE BF16 600"
                sleep 30
                ;;
        inspect-sum)
                plan_files
                echo "TENSORS 3"
                echo "PARAMETERS 1000"
                echo "DTYPE F32 400"
                echo "MEMORY 4096"
                sleep 30
                ;;
        inspect-dtype)
                plan_files
                echo "TENSORS 3"
                echo "PARAMETERS 1000"
                echo "DTYPE rm_-rf 1000"
                sleep 30
                ;;
        inspect-memory)
                plan_files
                echo "TENSORS 3"
                echo "PARAMETERS 1000"
                echo "DTYPE F32 1000"
                echo "MEMORY 99999999999"
                sleep 30
                ;;
        esac
        exit 0
fi

# A valid one-tensor model.safetensors (four F32 zeros), for the cases
# that complete: 8 bytes of header length, the header, 16 bytes of data.
safetensors_file() {
        local header='{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
        while [ $(( ${#header} % 8 )) -ne 0 ]; do header="$header "; done
        printf "\\x$(printf %02x ${#header})\\0\\0\\0\\0\\0\\0\\0"
        printf '%s' "$header"
        head -c 16 /dev/zero
}

# The cases of tests/unit/test-download.c, by the repository's name
# (ORG/KIND…): the daemon's downloads driven through whole pulls.
case "$repo" in
*/write*)
        # Writes a model into the staging folder, as the real helper does.
        size=$(safetensors_file | wc -c)
        echo "COMMIT 0123456789abcdef0123456789abcdef01234567"
        echo "FILE 2 - config.json"
        echo "FILE $size $(printf 'b%.0s' $(seq 64)) model.safetensors"
        echo "TOTAL $((size + 2)) 2"
        echo "READY"
        read -r answer || exit 1
        [ "$answer" = GO ] || { echo "FAILED cancelled The download was cancelled."; exit 1; }
        echo "PROGRESS 0 $((size + 2))"
        printf '{}' > "$staging/config.json"
        safetensors_file > "$staging/model.safetensors"
        echo "PROGRESS $((size + 2)) $((size + 2))"
        echo "DONE"
        exit 0
        ;;
*/hang*)
        # Runs until it is told to stop.
        plan
        trap 'kill $! 2>/dev/null; echo "FAILED cancelled The download was cancelled."; exit 1' TERM
        read -r answer
        echo "PROGRESS 1000 4196"
        sleep 60 & wait
        exit 1
        ;;
*/missing*)
        echo "FAILED not-found Repository $repo not found at main."
        exit 1
        ;;
*/huge*)
        echo "COMMIT 0123456789abcdef0123456789abcdef01234567"
        echo "FILE 1152921504606846976 $(printf 'c%.0s' $(seq 64)) model.safetensors"
        echo "TOTAL 1152921504606846976 1"
        echo "READY"
        read -r answer
        echo "FAILED cancelled The download was cancelled."
        exit 1
        ;;
*/bad*)
        plan
        read -r answer
        echo "PROGRESS 0 4196"
        echo "FAILED hash-mismatch model.safetensors does not have the sha256 the hub names."
        exit 1
        ;;
*/crash*)
        plan
        read -r answer
        kill -9 $$
        ;;
esac

case "$repo" in
inspect-ok)
        # An inspection's lines in a download: not in its protocol.
        plan
        read -r answer
        weights
        echo "DONE"
        ;;
ok)
        plan
        read -r answer || exit 3
        [ "$answer" = GO ] || { echo "FAILED cancelled The download was cancelled."; exit 1; }
        echo "PROGRESS 0 4196"
        echo "PROGRESS 4196 4196"
        echo "DONE"
        ;;
fail)
        plan
        read -r answer
        echo "FAILED hash-mismatch model.safetensors does not have the sha256 the hub names."
        exit 1
        ;;
crash)
        plan
        read -r answer
        echo "PROGRESS 10 4196"
        kill -9 $$
        ;;
done-but-exit-1)
        plan
        read -r answer
        echo "DONE"
        exit 1
        ;;
garbage)
        echo "COMMIT 0123456789abcdef0123456789abcdef01234567"
        echo "rm -rf / please"
        sleep 30
        ;;
escape)
        echo "COMMIT 0123456789abcdef0123456789abcdef01234567"
        echo "FILE 1 - ../../etc/passwd"
        sleep 30
        ;;
long)
        printf 'COMMIT '
        head -c 5000 /dev/zero | tr '\0' 'x'
        echo
        sleep 30
        ;;
fds)
        # Whether a descriptor the test left open as fd 42 without
        # O_CLOEXEC reached the helper (it must not), and the length of the
        # token on fd 3.
        n=0
        [ -e "/proc/$$/fd/42" ] && n=1
        token_length=0
        if [ -e /proc/$$/fd/3 ]; then token=$(cat <&3); token_length=${#token}; fi
        echo "COMMIT 0123456789abcdef0123456789abcdef01234567"
        echo "FILE $n - fds"
        echo "FILE $token_length - token"
        echo "TOTAL 0 2"
        echo "READY"
        read -r answer
        echo "DONE"
        ;;
env)
        # The names in the environment the helper was started with, one
        # FILE line each (sizes: their position).
        echo "COMMIT 0123456789abcdef0123456789abcdef01234567"
        n=0
        while IFS= read -r -d '' entry; do
                echo "FILE $n - ${entry%%=*}"
                n=$((n + 1))
        done < /proc/$$/environ
        echo "TOTAL 0 $n"
        echo "READY"
        read -r answer
        echo "DONE"
        ;;
die-on-term)
        # As mpool-pull does: no handler, SIGTERM ends it.
        plan
        read -r answer
        exec sleep 30
        ;;
hang)
        plan
        # Waits for its answer; a cancellation is CANCEL, then SIGTERM.
        trap 'kill $! 2>/dev/null; echo "FAILED cancelled The download was cancelled."; exit 1' TERM
        read -r answer
        sleep 30 & wait
        ;;
esac
