/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bus-util.h"
#include "client.h"
#include "format.h"
#include "json-out.h"
#include "mpool-bus.h"
#include "pager.h"
#include "terminal.h"

/* The daemon stops an inspection after 5 minutes; a little more here, so
 * that its own answer is what the user sees. */
#define INSPECT_CALL_TIMEOUT_USEC (6 * 60 * USEC_PER_SEC)

#define LABEL_WIDTH 12

/* "7.2B", "124.4M", "512": counts of parameters as people write them. */
static char *format_count(char *buf, size_t l, uint64_t n) {
        static const char suffixes[] = "KMBT";
        uint64_t factor = 1000;

        if (n < 1000) {
                snprintf(buf, l, "%" PRIu64, n);
                return buf;
        }
        for (size_t i = 0; i < sizeof suffixes - 1; i++) {
                if (i + 1 < sizeof suffixes - 1 && n / factor >= 1000) {
                        factor *= 1000;
                        continue;
                }
                snprintf(buf, l, "%" PRIu64 ".%" PRIu64 "%c", n / factor, (n % factor) * 10 / factor, suffixes[i]);
                break;
        }
        return buf;
}
#define FORMAT_COUNT(n) format_count((char[32]){}, 32, (n))

static void print_field(FILE *f, const char *label, const char *format, ...) _printf_(3, 4);
static void print_field(FILE *f, const char *label, const char *format, ...) {
        va_list ap;

        if (label)
                fprintf(f, "%*s: ", LABEL_WIDTH, label);
        else
                fprintf(f, "%*s  ", LABEL_WIDTH, "");
        va_start(ap, format);
        vfprintf(f, format, ap);
        va_end(ap);
        fputc('\n', f);
}

static void print_summary(FILE *f, const char *repo, const char *revision, const cJSON *info) {
        const cJSON *files = cJSON_GetObjectItemCaseSensitive(info, "files");
        const cJSON *sizes = cJSON_GetObjectItemCaseSensitive(info, "file_sizes");
        const cJSON *dtypes = cJSON_GetObjectItemCaseSensitive(info, "dtypes");
        const cJSON *item;
        uint64_t memory = json_get_u64(info, "memory_bytes", 0), limit = json_get_u64(info, "memory_limit", 0),
                 pinned = json_get_u64(info, "memory_pinned", 0);
        bool fits = json_get_bool(info, "fits", false), first = true;
        int width = 0, n_files = cJSON_GetArraySize(files);
        char dtype_text[512] = "";
        size_t used = 0;

        fprintf(f, "%s%s%s (%s)\n", ansi(ANSI_BOLD), repo, ansi(ANSI_NORMAL), revision);
        print_field(f, "Commit", "%s", json_get_string(info, "commit", "?"));

        cJSON_ArrayForEach(item, files)
                if (cJSON_IsString(item) && (int) strlen(item->valuestring) > width)
                        width = (int) strlen(item->valuestring);
        cJSON_ArrayForEach(item, files) {
                if (!cJSON_IsString(item))
                        continue;
                print_field(f, first ? "Files" : NULL, "%-*s  %8s", width, item->valuestring,
                            FORMAT_BYTES(json_get_u64(sizes, item->valuestring, 0)));
                first = false;
        }
        print_field(f, "Download", "%s in %d file%s", FORMAT_BYTES(json_get_u64(info, "download_bytes", 0)),
                    n_files, n_files == 1 ? "" : "s");
        print_field(f, "Tensors", "%" PRIu64, json_get_u64(info, "tensors", 0));
        print_field(f, "Parameters", "%s (%" PRIu64 ")", FORMAT_COUNT(json_get_u64(info, "parameters", 0)),
                    json_get_u64(info, "parameters", 0));

        cJSON_ArrayForEach(item, dtypes) {
                int n = snprintf(dtype_text + used, sizeof dtype_text - used, "%s%s %s", used > 0 ? ", " : "",
                                 item->string, FORMAT_COUNT(json_get_u64(dtypes, item->string, 0)));

                if (n < 0 || (size_t) n >= sizeof dtype_text - used)
                        break;
                used += (size_t) n;
        }
        print_field(f, "Dtypes", "%s", used > 0 ? dtype_text : "-");
        print_field(f, "Memory", "%s once loaded", FORMAT_BYTES(memory));
        if (fits)
                print_field(f, "Fits", "%syes%s, within the limit of %s%s%s", ansi(ANSI_GREEN), ansi(ANSI_NORMAL),
                            FORMAT_BYTES(limit), pinned > 0 ? " beside pinned models holding " : "",
                            pinned > 0 ? FORMAT_BYTES(pinned) : "");
        else
                print_field(f, "Fits", "%sno%s, the limit of %s%s%s leaves %s", ansi(ANSI_RED), ansi(ANSI_NORMAL),
                            FORMAT_BYTES(limit), pinned > 0 ? " less pinned models holding " : "",
                            pinned > 0 ? FORMAT_BYTES(pinned) : "",
                            FORMAT_BYTES(limit > pinned ? limit - pinned : 0));
}

int verb_inspect(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL, *reply = NULL;
        _cleanup_json_ cJSON *info = NULL;
        _cleanup_pager_ Pager pager = {};
        const char *repo = argv[1], *revision = arg_revision ?: "main";
        int r;

        r = check_model_name(repo);
        if (r != 0)
                return r;
        r = client_connect(&bus);
        if (r != 0)
                return r;

        r = sd_bus_message_new_method_call(bus, &call, MPOOL_BUS_NAME, MPOOL_MANAGER_PATH, MPOOL_MANAGER_INTERFACE,
                                           "Inspect");
        if (r >= 0)
                r = arg_revision ? sd_bus_message_append(call, "sa{sv}", repo, 1, "revision", "s", arg_revision)
                                 : sd_bus_message_append(call, "sa{sv}", repo, 0);
        if (r < 0)
                return report_bus_error(NULL, r, "inspect", repo);
        /* The daemon asks the hub: that takes longer than most calls. */
        r = sd_bus_call(bus, call, arg_timeout_set ? arg_timeout_usec : INSPECT_CALL_TIMEOUT_USEC, &error, &reply);
        if (r < 0)
                return report_bus_error(&error, r, "inspect", repo);

        r = sd_bus_message_has_signature(reply, "a{sv}");
        if (r == 0)
                r = -EBADMSG;
        if (r > 0)
                r = bus_message_read_json(reply, &info);
        if (r < 0)
                return print_error_errno(r, "Cannot read the reply to Inspect: %m");

        if (arg_json != JSON_OFF) {
                if (!cJSON_AddStringToObject(info, "repo", repo) ||
                    !cJSON_AddStringToObject(info, "revision", revision))
                        return print_oom();
                return json_print(info, stdout);
        }

        r = pager_open(&pager);
        if (r < 0)
                return print_error_errno(r, "Cannot set up the output: %m");
        print_summary(pager.f, repo, revision, info);
        r = pager_close(&pager);
        if (r < 0)
                return print_error_errno(r, "Cannot write the output: %m");
        return 0;
}
