# SPDX-License-Identifier: MIT
"""mpool-client metrics: the pool in Prometheus' text format, read back
with Debian's python3-prometheus-client parser, and checked against what
the daemon did (its signals) and said (Status): loads, unloads by reason
(request, memory-limit, idle, memory-pressure), Embed calls, the
histograms' counts, the per-model values, and counters that only grow,
across unloads."""

import json
import math

import dbus
from prometheus_client.parser import text_string_to_metric_families

import embed_fixtures
from harness import MiB, expect_dbus_error
from tests_client import run
from tests_embed import MODEL, default_case, embed
from tests_registry import complete

MODEL_NOT_FOUND = "org.mpool.Error.ModelNotFound"
UNLOAD_REASONS = ("request", "idle", "memory-limit", "memory-pressure", "shutdown", "other")
MODEL_STATES = ("available", "loading", "loaded", "unloading", "error")

# Every family the client writes, with its type; each must be there, even
# with no sample (the per-model ones before any model is known).
FAMILIES = {
        "mpool_memory_total_bytes": "gauge",
        "mpool_memory_available_bytes": "gauge",
        "mpool_memory_limit_bytes": "gauge",
        "mpool_memory_used_bytes": "gauge",
        "mpool_models_loaded": "gauge",
        "mpool_uptime_seconds": "gauge",
        "mpool_loads": "counter",
        "mpool_load_failures": "counter",
        "mpool_loads_cancelled": "counter",
        "mpool_unloads": "counter",
        "mpool_memory_pressure_events": "counter",
        "mpool_embed_requests": "counter",
        "mpool_embed_request_failures": "counter",
        "mpool_load_duration_seconds": "histogram",
        "mpool_embed_request_duration_seconds": "histogram",
        "mpool_model_state": "gauge",
        "mpool_model_memory_bytes": "gauge",
        "mpool_model_pinned": "gauge",
        "mpool_model_holds": "gauge",
        "mpool_model_requests": "counter",
        "mpool_model_tokens": "counter",
        "mpool_model_workers": "gauge",
        "mpool_model_active_requests": "gauge",
        "mpool_model_queued_requests": "gauge",
}


class Scrape:
        """One run of mpool-client metrics, parsed: samples by (name, sorted
        labels), families by name."""

        def __init__(self, ctx, d):
                proc = run(ctx, d, "metrics")
                assert proc.stderr == "", proc.stderr
                out = proc.stdout
                self.text = out
                self.families = {f.name: f for f in text_string_to_metric_families(out)}
                self.samples = {}
                for f in self.families.values():
                        assert f.documentation, f"{f.name} has no HELP"
                        for s in f.samples:
                                key = (s.name, tuple(sorted(s.labels.items())))
                                assert key not in self.samples, f"sample {key} twice"
                                assert not math.isnan(s.value), s
                                self.samples[key] = s.value
                self.check_format()

        def check_format(self):
                assert set(self.families) == set(FAMILIES), \
                        f"families {sorted(self.families)}, expected {sorted(FAMILIES)}"
                for name, kind in FAMILIES.items():
                        assert self.families[name].type == kind, (name, self.families[name].type)
                for line in self.text.splitlines():
                        assert line.startswith("mpool_") or line.startswith("# HELP mpool_") or \
                                line.startswith("# TYPE mpool_"), line
                # Every unload reason is there from the start, 0 included.
                for reason in UNLOAD_REASONS:
                        self.value("mpool_unloads_total", reason=reason)
                for h in ("mpool_load_duration_seconds", "mpool_embed_request_duration_seconds"):
                        buckets = sorted(((float(s.labels["le"]), s.value) for s in self.families[h].samples
                                          if s.name == h + "_bucket"))
                        assert buckets and buckets[-1][0] == math.inf, buckets
                        counts = [v for _, v in buckets]
                        assert counts == sorted(counts), f"{h}: buckets not cumulative: {buckets}"
                        assert counts[-1] == self.value(h + "_count"), h
                        assert self.value(h + "_sum") >= 0

        def value(self, name, **labels):
                key = (name, tuple(sorted(labels.items())))
                assert key in self.samples, f"no sample {name}{labels} in:\n{self.text}"
                return self.samples[key]

        def counters(self):
                """Every sample that may only grow: counters, and histograms'
                buckets, sums and counts."""
                out = {}
                for f in self.families.values():
                        if f.type in ("counter", "histogram"):
                                for s in f.samples:
                                        out[(s.name, tuple(sorted(s.labels.items())))] = s.value
                return out


def assert_grew(before, after):
        for key, value in before.items():
                assert key in after, f"{key} disappeared"
                assert after[key] >= value, f"{key} went down from {value} to {after[key]}"


def unloads_seen(ctx):
        ctx.sync()
        seen = {reason: 0 for reason in UNLOAD_REASONS}
        for s in ctx.monitor.signals("ModelUnloaded"):
                seen[s.args[1]] += 1
        return seen


def check_pool(scrape, d):
        pool, models = d.status()
        assert scrape.value("mpool_memory_total_bytes") == pool["memory_total"]
        assert scrape.value("mpool_memory_limit_bytes") == pool["memory_limit"]
        assert scrape.value("mpool_memory_used_bytes") == pool["memory_used"]
        assert scrape.value("mpool_models_loaded") == pool["models_loaded"]
        assert scrape.value("mpool_uptime_seconds") > 0
        for name, m in models.items():
                for state in MODEL_STATES:
                        assert scrape.value("mpool_model_state", model=name, state=state) == \
                                (1 if m["state"] == state else 0), (name, state, m["state"])
                assert scrape.value("mpool_model_memory_bytes", model=name) == m["memory_bytes"], name
                assert scrape.value("mpool_model_pinned", model=name) == (1 if m["pinned"] else 0), name
                assert scrape.value("mpool_model_holds", model=name) == m["holds"], name
                assert scrape.value("mpool_model_requests_total", model=name) == m["requests_total"], name
                assert scrape.value("mpool_model_tokens_total", model=name) == m["tokens_total"], name
                assert scrape.value("mpool_model_workers", model=name) == m["workers"], name
        return pool, models


def test_metrics_count_loads_unloads_and_embeds(ctx):
        ctx.model("alpha", size="16M")
        ctx.model("beta", size="16M")
        ctx.model("gamma", size="1M")
        embed_fixtures.install_model(ctx.store, MODEL)
        d = ctx.daemon(MemoryLimit="24M")

        first = Scrape(ctx, d)
        for name in ("mpool_loads_total", "mpool_load_failures_total", "mpool_embed_requests_total",
                     "mpool_load_duration_seconds_count", "mpool_embed_request_duration_seconds_count"):
                assert first.value(name) == 0, name
        assert first.value("mpool_memory_limit_bytes") == 24 * MiB
        check_pool(first, d)

        # beta does not fit beside alpha: alpha is evicted for the limit.
        d.load("alpha")
        d.load("beta")
        evicted = ctx.monitor.wait_signal("ModelUnloaded", "alpha")
        assert evicted.args[1] == "memory-limit", evicted
        d.unload("beta")
        # An idle unload, on gamma's own short keep-alive.
        d.load("gamma", keep_alive_sec=1)
        assert ctx.monitor.wait_signal("ModelUnloaded", "gamma").args[1] == "idle"

        # Embed: the first call loads the model; one names no model.
        client = d.py
        c = default_case()
        embed(client, MODEL, c["texts"])
        embed(client, MODEL, c["texts"][:1])
        embed(client, MODEL, c["texts"][:2])
        expect_dbus_error(MODEL_NOT_FOUND, embed, client, "no-such-model", ["text"])

        second = Scrape(ctx, d)
        ctx.sync()
        loaded = len(ctx.monitor.signals("ModelLoaded"))
        assert loaded == 4, ctx.monitor.signals("ModelLoaded")
        assert second.value("mpool_loads_total") == loaded
        assert second.value("mpool_load_duration_seconds_count") == loaded
        assert second.value("mpool_load_duration_seconds_sum") > 0
        for reason, n in unloads_seen(ctx).items():
                assert second.value("mpool_unloads_total", reason=reason) == n, (reason, n)
        assert second.value("mpool_unloads_total", reason="memory-limit") == 1
        assert second.value("mpool_unloads_total", reason="request") == 1
        assert second.value("mpool_unloads_total", reason="idle") == 1
        # The name that is no model failed as a load, too.
        assert second.value("mpool_load_failures_total") == 1
        assert second.value("mpool_embed_requests_total") == 4
        assert second.value("mpool_embed_request_failures_total") == 1
        assert second.value("mpool_embed_request_duration_seconds_count") == 4
        _, models = check_pool(second, d)
        assert models[MODEL]["state"] == "loaded" and models[MODEL]["tokens_total"] > 0, models[MODEL]
        assert second.value("mpool_model_memory_bytes", model=MODEL) > 0
        assert_grew(first.counters(), second.counters())

        # An unload lowers no counter: the model's requests and tokens stay.
        d.unload(MODEL)
        third = Scrape(ctx, d)
        assert_grew(second.counters(), third.counters())
        assert third.value("mpool_unloads_total", reason="request") == 2
        assert third.value("mpool_model_tokens_total", model=MODEL) == \
                second.value("mpool_model_tokens_total", model=MODEL)
        assert third.value("mpool_model_memory_bytes", model=MODEL) == 0
        assert third.value("mpool_model_state", model=MODEL, state="available") == 1
        check_pool(third, d)

        # The same figures for scripts, as the daemon's keys.
        j = json.loads(run(ctx, d, "--json", "metrics").stdout)
        assert j["loads_total"] == loaded and j["unloads_total"]["request"] == 2, j
        assert j["models"][MODEL]["tokens_total"] == models[MODEL]["tokens_total"], j
        assert len(j["load_duration_buckets"]) == len(j["load_duration_bounds_usec"]) + 1, j


def test_metrics_count_memory_pressure(ctx):
        """MemoryAvailableMin=100% keeps the host "short": each check counts
        a pressure event, and idle models go for it."""
        ctx.model("alpha", size="4M")
        d = ctx.daemon(MemoryAvailableMin="100%")
        d.load("alpha")
        assert ctx.monitor.wait_signal("ModelUnloaded", "alpha").args[1] == "memory-pressure"
        scrape = Scrape(ctx, d)
        assert scrape.value("mpool_memory_pressure_events_total") >= 1
        assert scrape.value("mpool_unloads_total", reason="memory-pressure") == 1
        later = Scrape(ctx, d)
        assert_grew(scrape.counters(), later.counters())


def test_metrics_usage_completion_and_unreachable(ctx):
        ctx.model("alpha", size="1M")
        d = ctx.daemon()
        assert complete(ctx, "mpool-client me") == ["metrics"]
        assert complete(ctx, f"mpool-client --address={d.address} metrics ") == []
        assert run(ctx, d, "metrics", "extra", expect=2).stderr.strip(), "no error message"
        assert run(ctx, d, "metrics").stdout.endswith("\n")
        d.stop()
        # Nothing written when the daemon cannot be asked: a redirection to
        # the collector's file must not leave a half-written one.
        out = run(ctx, d, "metrics", expect=7).stdout
        assert out == "", out
