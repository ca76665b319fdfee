#!/bin/bash
# SPDX-License-Identifier: MIT
#
# load-throughput.sh BUILD_DIR [SIZE] — how fast mpoold loads a model that is
# already in the page cache, against `cat FILE > /dev/null` measured in the
# same run on the same file. Target: ratio >= 0.90 (the load includes the
# D-Bus round trip, header validation and mlock). Against what a Python user
# without mpoold does to have the file in memory, with Debian's numpy
# (numpy.fromfile) and torch 1.13 (no safetensors package in Debian 12: the
# bytes read into a tensor, torch.empty then readinto, one copy, the fastest
# way torch offers; torch.from_file maps the file lazily and loads nothing),
# each timed around that call alone, without the interpreter's start or
# imports: target mpoold >= 1.5 x faster than each. Then once with the page
# cache dropped (as root, where /proc/sys/vm/drop_caches can be written),
# Load against cat (and dd in 32 MiB reads), each from a cold cache. Prints,
# never asserts.
set -euo pipefail

build=$(readlink -f "${1:-build}")
size=${2:-2G}
rounds=5
# shellcheck source=tests/bench/lib.sh
source "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"

"$build/mpool-mkmodel" --size="$size" --tensors=16 "$dir/models/bench" > /dev/null
file="$dir/models/bench/model.safetensors"
bench_start "[Pool]
MemoryLimit=90%"

now() { date +%s%N; }
call() { busctl --address="$address" call org.mpool.Manager /org/mpool/Manager org.mpool.Manager "$@" > /dev/null; }

cat "$file" > /dev/null    # into the page cache
best_cat=0 best_load=0 best_call=0
for _ in $(seq "$rounds"); do
        # What any call costs (starting busctl, connecting): not the load's.
        t0=$(now); call Status; t1=$(now)
        (( best_call == 0 || t1 - t0 < best_call )) && best_call=$((t1 - t0))
        t0=$(now); cat "$file" > /dev/null; t1=$(now)
        (( best_cat == 0 || t1 - t0 < best_cat )) && best_cat=$((t1 - t0))
        t0=$(now); call Load 'sa{sv}' bench 0; t1=$(now)
        (( best_load == 0 || t1 - t0 < best_load )) && best_load=$((t1 - t0))
        call Unload 'sa{sv}' bench 0
done

# What a Python user does instead: the best of $rounds calls, each a fresh
# array filled from the page cache.
python_best() {
        "$python" - "$file" "$rounds" "$1" <<'EOF'
import sys, time

path, rounds, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if how == "numpy":
    import numpy

    def load():
        return numpy.fromfile(path, dtype=numpy.uint8)
else:
    import os
    import torch

    def load():
        t = torch.empty(os.path.getsize(path), dtype=torch.uint8)
        view = memoryview(t.numpy())
        with open(path, "rb", buffering=0) as f:
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise EOFError(path)
                done += n
        return t
best = None
for _ in range(rounds):
    t0 = time.perf_counter_ns()
    data = load()
    t1 = time.perf_counter_ns()
    del data
    best = t1 - t0 if best is None else min(best, t1 - t0)
print(best)
EOF
}
best_numpy=$(python_best numpy)
best_torch=$(python_best torch)

# From disk: the page cache dropped before each, the tools' own files read
# back in first so that only the model's file comes cold. Also dd in reads
# of 32 MiB, the size of the chunks the loader locks at once: on a virtual
# disk, cat's 128 KiB reads can be what bounds it.
cold_cat=0 cold_dd=0 cold_load=0
drop_caches() { sync && echo 3 > /proc/sys/vm/drop_caches; } 2> /dev/null
if drop_caches; then
        cat /dev/null
        t0=$(now); cat "$file" > /dev/null; t1=$(now)
        cold_cat=$((t1 - t0))
        drop_caches
        dd if=/dev/null of=/dev/null status=none
        t0=$(now); dd if="$file" of=/dev/null bs=32M status=none; t1=$(now)
        cold_dd=$((t1 - t0))
        drop_caches
        call Status
        t0=$(now); call Load 'sa{sv}' bench 0; t1=$(now)
        cold_load=$((t1 - t0))
        call Unload 'sa{sv}' bench 0
fi

bytes=$(stat -c %s "$file")
awk -v b="$bytes" -v c="$best_cat" -v l="$best_load" -v s="$best_call" -v np="$best_numpy" -v pt="$best_torch" \
    -v cc="$cold_cat" -v cd="$cold_dd" -v cl="$cold_load" 'BEGIN {
        printf "load-throughput: %.2f GiB file, best of '"$rounds"'\n", b / 2^30
        printf "  cat > /dev/null  %8.1f ms  %6.2f GB/s\n", c / 1e6, b / c
        printf "  mpoold Load      %8.1f ms  %6.2f GB/s\n", l / 1e6, b / l
        printf "  busctl Status    %8.1f ms  (the cost of any call)\n", s / 1e6
        printf "  numpy.fromfile   %8.1f ms  %6.2f GB/s  (the call alone)\n", np / 1e6, b / np
        printf "  torch, readinto  %8.1f ms  %6.2f GB/s  (the calls alone)\n", pt / 1e6, b / pt
        printf "  ratio (load/cat) %8.2f   end to end\n", c / l
        printf "  ratio (load/cat) %8.2f   without the call cost (target >= 0.90)\n", c / (l - s)
        printf "  numpy / Load     %8.2f   Load end to end (target >= 1.5)\n", np / l
        printf "  torch / Load     %8.2f   Load end to end (target >= 1.5)\n", pt / l
        if (cc > 0) {
                printf "  cold: cat        %8.1f ms  %6.2f GB/s\n", cc / 1e6, b / cc
                printf "  cold: dd bs=32M  %8.1f ms  %6.2f GB/s\n", cd / 1e6, b / cd
                printf "  cold: Load       %8.1f ms  %6.2f GB/s  ratio (load/cat) %.2f, (load/dd) %.2f\n", cl / 1e6,
                       b / cl, cc / cl, cd / cl
                cold = sprintf("%.2f, vs dd bs=32M %.2f", cc / cl, cd / cl)
        } else {
                printf "  cold: skipped, the page cache cannot be dropped here (needs root and a writable /proc/sys)\n"
                cold = "skipped"
        }
        printf "load-throughput: ratio=%.2f (target >= 0.90; vs numpy %.2f target >= 1.5; vs torch %.2f target >= 1.5;" \
               " cold %s)\n", c / (l - s), np / l, pt / l, cold
}'
