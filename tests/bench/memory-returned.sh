#!/bin/bash
# SPDX-License-Identifier: MIT
#
# memory-returned.sh BUILD_DIR [CYCLES] — whether mpoold gives back what a
# model took once it is unloaded, and whether what it reports while the
# model is loaded is what it holds. The daemon's RSS before each Load and
# after the matching Unload, over CYCLES (10) cycles of a 512 MiB model
# mapped in place (the file's pages, mlocked: RssFile) and CYCLES of a
# 1-layer, hidden-384 BERT converted to q8 at load (anonymous memory:
# RssAnon) with max_workers=4, each cycle running 4 Embed calls of 8 texts
# of 512 tokens at once, so that 4 workers start and compute, each filling
# the scratch it is charged for (4096 tokens). Targets: RSS after the last
# Unload − RSS before the first Load ≤ 2 MiB in each series; Status's
# memory_bytes within 5% of the rise of RSS while loaded. Prints, never
# asserts; the last line is the ratio 2 MiB / the worse growth.
set -euo pipefail

build=$(readlink -f "${1:-build}")
cycles=${2:-10}
# shellcheck source=tests/bench/lib.sh
source "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"

"$build/mpool-mkmodel" --size=512M --tensors=16 "$dir/models/weights" > /dev/null
"$python" "$bench/memory-returned.py" model "$dir/models/bert"
cat "$dir/models/weights/model.safetensors" "$dir/models/bert/model.safetensors" > /dev/null

# Workers stay until the unload (no cooldown within a cycle), as many as asked.
bench_start "[Pool]
MemoryLimit=90%
IdleTimeoutSec=3600
[Workers]
MaxWorkers=4
CooldownSec=1d"

"$python" "$bench/memory-returned.py" "$address" "$daemon" weights bert "$dir/models/bert" "$cycles" > "$dir/cycles.json"

"$python" - "$dir/cycles.json" "$cycles" <<'EOF'
import json, sys

out, cycles = json.load(open(sys.argv[1])), int(sys.argv[2])
MiB = 1 << 20
print("memory-returned: the daemon's RSS around %d cycles of each model (MiB; anon/file in brackets)" % cycles)
worst_growth, worst_steady, worst_gap = 0, 0, 0.0
for series, title in (("weights", "512 MiB of weights, mapped in place"),
                      ("embedding", "1-layer BERT (hidden 384) at q8, max_workers=4, 4 Embed calls at once of 8 texts"
                                    " of 512 tokens")):
    runs = out[series]
    print("  %s (%.1f s)" % (title, out["seconds"][series]))
    print("    cycle  before (anon/file)       loaded (anon/file)       after  threads  rise    memory_bytes"
          "  memory_used  gap    workers")
    for n, c in enumerate(runs):
        b, l, a = c["before"], c["loaded"], c["after"]
        rise = l["rss"] - b["rss"]
        gap = (c["memory_bytes"] - rise) / rise if rise else float("inf")
        worst_gap = max(worst_gap, abs(gap))
        workers = "%d (%d computed)" % (c["workers"], c["workers_computed"]) if series == "embedding" else "-"
        print("    %5d  %7.2f (%6.2f/%6.2f)  %7.2f (%6.2f/%6.2f)  %7.2f  %2d/%2d  %7.2f  %10.2f  %10.2f  %+5.1f%%  %s" % (
            n + 1, b["rss"] / MiB, b["anon"] / MiB, b["file"] / MiB, l["rss"] / MiB, l["anon"] / MiB, l["file"] / MiB,
            a["rss"] / MiB, l["threads"], a["threads"], rise / MiB, c["memory_bytes"] / MiB,
            c["memory_used"] / MiB, 100 * gap, workers))
    growth = runs[-1]["after"]["rss"] - runs[0]["before"]["rss"]
    steady = runs[-1]["after"]["rss"] - runs[0]["after"]["rss"]
    if growth >= worst_growth:
        worst_growth, worst_steady = growth, steady
    print("    growth: %+.2f MiB over the %d cycles (target <= 2 MiB); %+.2f MiB after the first cycle's"
          " (anon %+.2f, file %+.2f)" % (growth / MiB, cycles, steady / MiB,
                                        (runs[-1]["after"]["anon"] - runs[0]["before"]["anon"]) / MiB,
                                        (runs[-1]["after"]["file"] - runs[0]["before"]["file"]) / MiB))
ratio = 2 * MiB / worst_growth if worst_growth > 0 else float("inf")
print("memory-returned: ratio=%.2f (target >= 1; worst growth %+.2f MiB of 2 MiB, %+.2f MiB after the first cycle;"
      " memory_bytes within %.1f%% of the RSS rise, target <= 5%%)" % (ratio, worst_growth / MiB, worst_steady / MiB,
                                                                      100 * worst_gap))
EOF
