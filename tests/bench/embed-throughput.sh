#!/bin/bash
# SPDX-License-Identifier: MIT
#
# embed-throughput.sh BUILD_DIR [SECONDS [ROUNDS]] — tokens per second of Embed on a
# 12-layer, hidden-384, 12-head BERT (random weights) for batches of 32
# texts of 100-128 tokens, through the real mpoold on a private bus with
# [Workers] MaxWorkers=N and N callers at once, against the same forward
# pass in Debian's python3-torch with torch.set_num_threads(N), in the same
# run. N: the CPUs. Torch runs twice, with OpenBLAS as installed and with
# OPENBLAS_CORETYPE set to the kernel mpoold chose (Status blas_core); the
# faster counts. Target: mpoold >= 1.2 x torch. Also: the share of mpoold's
# time in OpenBLAS (perf), and the GFLOP/s of its sgemm calls against a
# bare cblas_sgemm of the same shapes (sgemm-shapes.c). Prints, never
# asserts; the last line is the ratio.
set -euo pipefail

build=$(readlink -f "${1:-build}")
seconds=${2:-15}
rounds=${3:-2}
threads=$(nproc)
# shellcheck source=tests/bench/lib.sh
source "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"

# The ceiling: OpenBLAS loaded by daemon/blas.c itself.
cc -O2 -std=gnu11 -D_GNU_SOURCE -I"$top/include" -I"$top/base" -I"$top/daemon" -o "$dir/sgemm-shapes" \
        "$bench/sgemm-shapes.c" "$build/libmpoold.a" "$build/libmpool-base.a" \
        $(pkg-config --libs libsystemd) -ldl -lm -pthread

"$python" "$bench/embed-throughput.py" model "$dir/models/bench"

bench_start "[Pool]
MemoryLimit=90%
IdleTimeoutSec=3600
[Workers]
MaxWorkers=$threads"

core=$(busctl --address="$address" --json=short call org.mpool.Manager /org/mpool/Manager org.mpool.Manager Status |
        "$python" -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["blas_core"]["data"])')

"$python" "$bench/embed-throughput.py" compare "$dir/models/bench" "$address" bench > "$dir/compare.json"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$daemon/stat"; }
perf=none
if command -v perf > /dev/null && perf record -q -o /dev/null -- true > /dev/null 2>&1; then
        perf record -q -F 499 -p "$daemon" -o "$dir/perf.data" > /dev/null 2>&1 &
        perf_pid=$!
        sleep 1
        ticks0=$(cpu_ticks)
        "$python" "$bench/embed-throughput.py" mpoold "$dir/models/bench" "$address" bench "$threads" \
                "$((seconds / 2))" > "$dir/mpoold-perf.json"
        ticks1=$(cpu_ticks)
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
        perf report -q -i "$dir/perf.data" --stdio --sort dso 2> /dev/null > "$dir/perf-dso.txt" || true
        perf report -q -i "$dir/perf.data" --stdio --sort sym 2> /dev/null | head -15 > "$dir/perf-sym.txt" || true
        echo "$((ticks1 - ticks0)) $(getconf CLK_TCK)" > "$dir/ticks"
        perf=yes
fi

lengths=$("$python" -c 'import json, sys; print(" ".join(str(len(s)) for s in json.load(open(sys.argv[1]))[0]["ids"]))' \
        "$dir/models/bench/batches.json")

# The machine may be shared: each contender runs in turn, $rounds times,
# and its best run counts.
for round in $(seq "$rounds"); do
        "$python" "$bench/embed-throughput.py" mpoold "$dir/models/bench" "$address" bench "$threads" "$seconds" \
                > "$dir/mpoold-$round.json"
        env -u OPENBLAS_CORETYPE "$python" "$bench/embed-throughput.py" torch "$dir/models/bench" "$threads" \
                "$seconds" > "$dir/torch-installed-$round.json"
        OPENBLAS_CORETYPE=$core "$python" "$bench/embed-throughput.py" torch "$dir/models/bench" "$threads" \
                "$seconds" > "$dir/torch-chosen-$round.json"
        # The ceiling: the same sgemm calls alone, and N at once as the
        # workers run (two vCPUs may share a core, or memory bandwidth).
        # shellcheck disable=SC2086  # one argument per length
        "$dir/sgemm-shapes" 384 12 1536 12 3 $lengths > "$dir/sgemm-$round.txt" 2> /dev/null
        copies=()
        for n in $(seq "$threads"); do
                # shellcheck disable=SC2086
                "$dir/sgemm-shapes" 384 12 1536 12 3 $lengths > "$dir/sgemm-$round-$n.txt" 2> /dev/null &
                copies+=($!)
        done
        wait "${copies[@]}"
done


"$python" - "$dir" "$threads" "$core" "$perf" "$rounds" <<'EOF'
import json, os, sys

d, threads, core, perf, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
load = lambda name: json.load(open(os.path.join(d, name)))
best_of = lambda name: max((load("%s-%d.json" % (name, r + 1)) for r in range(rounds)),
                           key=lambda x: x["tokens_per_second"])
m, t_inst, t_chosen, cmp = best_of("mpoold"), best_of("torch-installed"), best_of("torch-chosen"), load("compare.json")
best = max(t_inst["tokens_per_second"], t_chosen["tokens_per_second"])
print("embed-throughput: 12 layers, hidden 384, 12 heads, intermediate 1536; batches of 32 texts of 100-128 tokens;"
      " %d threads; OpenBLAS kernels in mpoold: %s; best of %d rounds" % (threads, core, rounds))
print("  mpoold Embed, %d callers      %8.0f tokens/s  (%d calls in %.1f s; the callers' own CPU: %.2f%%"
      " of the time)" % (threads, m["tokens_per_second"], m["calls"], m["seconds"], 100 * m["client_cpu_share"]))
print("  torch, OpenBLAS as installed %8.0f tokens/s  (torch threads %d)" % (t_inst["tokens_per_second"],
                                                                           t_inst["threads"]))
print("  torch, OPENBLAS_CORETYPE=%-8s%6.0f tokens/s" % (core, t_chosen["tokens_per_second"]))
print("  mpoold against torch: max abs difference %.2g, min cosine %.7f" % (cmp["max_abs_difference"],
                                                                              cmp["min_cosine"]))
parse = lambda name: dict(kv.split("=") for kv in open(os.path.join(d, name)).read().split())
bare = max((parse("sgemm-%d.txt" % (r + 1)) for r in range(rounds)), key=lambda b: float(b["gflops"]))
together = max(([parse("sgemm-%d-%d.txt" % (r + 1, n + 1)) for n in range(threads)] for r in range(rounds)),
               key=lambda t: sum(float(b["gflops"]) for b in t))
ceiling = sum(int(b["tokens"]) / float(b["seconds"]) for b in together)
gflops_together = sum(float(b["gflops"]) for b in together) / threads
print("  bare cblas_sgemm, same shapes: alone %.1f GFLOP/s (projections %s, attention %s); %d at once %.1f"
      " GFLOP/s each: ceiling %.0f tokens/s" % (float(bare["gflops"]), bare["linear_gflops"],
                                                 bare["attention_gflops"], threads, gflops_together, ceiling))
if perf == "yes":
    share = 0.0
    for line in open(os.path.join(d, "perf-dso.txt")):
        parts = line.split()
        if len(parts) >= 2 and "openblas" in parts[1]:
            share += float(parts[0].rstrip("%")) / 100
    ticks, hz = map(int, open(os.path.join(d, "ticks")).read().split())
    mp = load("mpoold-perf.json")
    cpu = ticks / hz
    gflops = mp["flops"] / (cpu * share) * 1e-9 if share > 0 else 0
    print("  mpoold under perf: %.0f tokens/s, %.1f CPU-s; %.1f%% of its samples in OpenBLAS;"
          " sgemm at %.1f GFLOP/s per worker (bare, %d at once: %.1f)" % (mp["tokens_per_second"], cpu, 100 * share,
                                                                            gflops, threads, gflops_together))
    print("  mpoold's hottest symbols:")
    for line in open(os.path.join(d, "perf-sym.txt")):
        if line.strip():
            print("    " + line.strip())
else:
    print("  (perf unavailable: no sgemm share)")
print("embed-throughput: ratio=%.2f (target >= 1.2; mpoold %.0f tokens/s / torch %.0f tokens/s)" %
      (m["tokens_per_second"] / best, m["tokens_per_second"], best))
EOF
