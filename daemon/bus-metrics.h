/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-bus.h>

/* Metrics() → a{sv} on org.mpool.Manager: the pool's counters (metrics.h),
 * histograms and gauges, and each known model's, for monitoring
 * (`mpool-client metrics` renders them for Prometheus). Open to every local
 * user, as Status is, and never counts as use; userdata is the Manager. */
int bus_method_metrics(sd_bus_message *message, void *userdata, sd_bus_error *error);
