/* SPDX-License-Identifier: MIT */

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-memory.h"

#include "macro.h"
#include "tokenizer-unicode.h"
#include "tokenizer.h"

#define MiB (UINT64_C(1) << 20)

static char temp_dir[] = "/tmp/test-tokenizer-XXXXXX";

static int setup_temp_dir(void **state) {
        return mkdtemp(temp_dir) ? 0 : -1;
}

static int remove_temp_dir(void **state) {
        char command[256];

        snprintf(command, sizeof command, "rm -rf '%s'", temp_dir);
        return system(command) == 0 ? 0 : -1;
}

/* A file of the fixtures (tests/unit/tokenizer/), whole, NUL-terminated. */
static char *read_fixture(const char *name, size_t *ret_length) {
        const char *source_dir = getenv("MPOOL_SOURCE_DIR");
        _cleanup_free_ char *text = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        char path[4096];
        long length;

        snprintf(path, sizeof path, "%s/tests/unit/tokenizer/%s", source_dir ?: ".", name);
        f = fopen(path, "re");
        if (!f)
                fail_msg("%s not found: run from the source tree or set MPOOL_SOURCE_DIR", path);
        assert_int_equal(fseek(f, 0, SEEK_END), 0);
        length = ftell(f);
        assert_true(length >= 0);
        rewind(f);
        text = malloc((size_t) length + 1);
        assert_non_null(text);
        assert_int_equal(fread(text, 1, (size_t) length, f), (size_t) length);
        text[length] = '\0';
        if (ret_length)
                *ret_length = (size_t) length;
        return TAKE_PTR(text);
}

static Tokenizer *load_fixture(const char *name) {
        _cleanup_free_ char *text = NULL, *error = NULL, *file = NULL;
        Tokenizer *t = NULL;
        size_t length;
        int r;

        assert_true(asprintf(&file, "%s.tokenizer.json", name) > 0);
        text = read_fixture(file, &length);
        r = tokenizer_parse(text, length, NULL, NULL, &t, &error);
        if (r < 0)
                fail_msg("%s: %d %s", file, r, strempty(error));
        return t;
}

/* Encodes and returns the number of ids, or the error. */
static int encode(const Tokenizer *t, const void *text, size_t length, TokenizerTruncation truncation, int32_t *ids,
                  size_t max_ids, size_t *ret_n) {
        return tokenizer_encode(t, text, length, truncation, ids, max_ids, ret_n);
}

static void format_ids(char *buffer, size_t size, const int32_t *ids, size_t n) {
        size_t k = 0;

        buffer[0] = '\0';
        for (size_t i = 0; i < n && k + 16 < size; i++)
                k += (size_t) snprintf(buffer + k, size - k, "%s%" PRId32, i > 0 ? " " : "", ids[i]);
}

/* ---- the reference's ids ---- */

#define FIXTURE_TOKENIZERS_MAX 32

typedef struct Loaded {
        char *name;
        Tokenizer *t;
} Loaded;

static Tokenizer *find_tokenizer(Loaded *loaded, size_t *n, const char *name) {
        for (size_t i = 0; i < *n; i++)
                if (strcmp(loaded[i].name, name) == 0)
                        return loaded[i].t;
        assert_true(*n < FIXTURE_TOKENIZERS_MAX);
        loaded[*n] = (Loaded) { .name = strdup(name), .t = load_fixture(name) };
        return loaded[(*n)++].t;
}

/* Every case of cases.json, id for id; and for each text encoded whole,
 * the limits around its length. */
static void test_reference_ids(void **state) {
        _cleanup_free_ char *json = read_fixture("cases.json", NULL);
        Loaded loaded[FIXTURE_TOKENIZERS_MAX] = {};
        size_t n_loaded = 0, n_cases = 0, n_failed = 0;
        cJSON *cases, *c;

        cases = cJSON_Parse(json);
        assert_non_null(cases);
        assert_true(cJSON_IsArray(cases));

        cJSON_ArrayForEach(c, cases) {
                const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "tokenizer"));
                const char *text_name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
                const char *hex = cJSON_GetStringValue(cJSON_GetObjectItem(c, "hex"));
                cJSON *expected = cJSON_GetObjectItem(c, "ids"), *max = cJSON_GetObjectItem(c, "max_length");
                const char *direction = cJSON_GetStringValue(cJSON_GetObjectItem(c, "direction"));
                _cleanup_free_ int32_t *ids = NULL, *want = NULL;
                _cleanup_free_ char *text = NULL;
                TokenizerTruncation truncation = TOKENIZER_TRUNCATE_NONE;
                size_t length, n_want, n = 0, max_ids;
                const Tokenizer *t;
                cJSON *item;
                int r;

                assert_non_null(name);
                assert_non_null(text_name);
                assert_non_null(expected);
                assert_non_null(hex);
                t = find_tokenizer(loaded, &n_loaded, name);

                length = strlen(hex) / 2;
                text = malloc(length + 1);
                assert_non_null(text);
                for (size_t k = 0; k < length; k++) {
                        unsigned byte;

                        assert_int_equal(sscanf(hex + 2 * k, "%2x", &byte), 1);
                        text[k] = (char) byte;
                }

                n_want = (size_t) cJSON_GetArraySize(expected);
                want = calloc(n_want + 1, sizeof *want);
                n = 0;
                cJSON_ArrayForEach(item, expected)
                        want[n++] = (int32_t) item->valueint;

                if (max) {
                        max_ids = (size_t) max->valueint;
                        truncation = direction && strcmp(direction, "left") == 0 ? TOKENIZER_TRUNCATE_LEFT : TOKENIZER_TRUNCATE_RIGHT;
                } else
                        max_ids = 65536;
                ids = calloc(max_ids, sizeof *ids);
                r = encode(t, text, length, truncation, ids, max_ids, &n);
                n_cases++;
                if (r != 0 || n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
                        char got_text[4096], want_text[4096];

                        format_ids(got_text, sizeof got_text, ids, r == 0 ? n : 0);
                        format_ids(want_text, sizeof want_text, want, n_want);
                        print_error("%s / %s (max %zu, %s): r=%d\n  got  %s\n  want %s\n", name, text_name, max_ids,
                                    direction ?: "none", r, got_text, want_text);
                        n_failed++;
                        continue;
                }
                if (max)
                        continue;

                /* Exactly long enough: the same ids, whichever truncation. */
                for (TokenizerTruncation k = TOKENIZER_TRUNCATE_NONE; k <= TOKENIZER_TRUNCATE_LEFT; k++) {
                        assert_int_equal(encode(t, text, length, k, ids, n_want, &n), 0);
                        assert_int_equal(n, n_want);
                        assert_memory_equal(ids, want, n * sizeof *ids);
                }
                /* One short: an error without truncation, else the first
                 * or last ones. */
                if (n_want > tokenizer_n_special_ids(t)) {
                        /* The fixtures' special tokens: one before, one after, or none. */
                        size_t before = tokenizer_n_special_ids(t) > 0 ? 1 : 0;
                        size_t content = n_want - tokenizer_n_special_ids(t);

                        assert_int_equal(encode(t, text, length, TOKENIZER_TRUNCATE_NONE, ids, n_want - 1, &n), -E2BIG);
                        assert_int_equal(encode(t, text, length, TOKENIZER_TRUNCATE_RIGHT, ids, n_want - 1, &n), 0);
                        assert_int_equal(n, n_want - 1);
                        assert_memory_equal(ids, want, (n_want - 1 - before) * sizeof *ids);
                        assert_int_equal(encode(t, text, length, TOKENIZER_TRUNCATE_LEFT, ids, n_want - 1, &n), 0);
                        assert_int_equal(n, n_want - 1);
                        assert_memory_equal(ids + before, want + before + 1, (content - 1) * sizeof *ids);
                }
        }

        for (size_t i = 0; i < n_loaded; i++) {
                free(loaded[i].name);
                tokenizer_free(loaded[i].t);
        }
        cJSON_Delete(cases);
        if (n_failed > 0)
                fail_msg("%zu of %zu cases differ from the reference", n_failed, n_cases);
        /* Every variant and text came through. */
        assert_true(n_cases > 500);
}

/* ---- every code point ---- */

static bool unknown_to_icu(int32_t c) {
        /* Lowercase mappings of characters newer than ICU's Unicode (15.0)
         * cannot be had: ICU leaves what it does not know as it is, and
         * says it is no letter. */
        int32_t out[TU_LOWERCASE_MAX];

        return tu_lowercase(c, out) == 1 && out[0] == c && !tu_is_word(c);
}

/* The set written as ranges on the line, into a bitmap of all code points. */
static void parse_set(const char *line, uint8_t *bits) {
        const char *p = strchr(line, ' ');

        memset(bits, 0, 0x110000 / 8);
        while (p && *p) {
                unsigned long a, b;
                char *end;

                while (*p == ' ')
                        p++;
                if (*p == '\0' || *p == '\n')
                        break;
                a = strtoul(p, &end, 16);
                b = a;
                if (*end == '-')
                        b = strtoul(end + 1, &end, 16);
                for (unsigned long c = a; c <= b && c < 0x110000; c++)
                        bits[c / 8] |= (uint8_t) (1U << (c % 8));
                p = end;
        }
}

static bool in_set(const uint8_t *bits, int32_t c) {
        return bits[c / 8] & (1U << (c % 8));
}

/* What BertNormalizer's accent stripping makes of one character. */
static size_t strip(int32_t c, int32_t *out) {
        int32_t d[TU_DECOMPOSITION_MAX];
        size_t n = tu_decompose(c, d), k = 0;

        for (size_t i = 0; i < n; i++)
                if (!tu_is_nonspacing_mark(d[i]))
                        out[k++] = d[i];
        return k;
}

static void test_unicode_table(void **state) {
        _cleanup_free_ char *table = read_fixture("unicode.txt", NULL);
        _cleanup_free_ uint8_t *bits = malloc(0x110000 / 8);
        _cleanup_free_ int32_t *strip_length = calloc(0x110000, sizeof(int32_t));
        _cleanup_free_ int32_t *lower_length = calloc(0x110000, sizeof(int32_t));
        size_t n_failed = 0, n_sets = 0, n_maps = 0;
        char *line, *save = NULL;

        assert_non_null(bits);
        assert_non_null(strip_length);
        assert_non_null(lower_length);

        for (line = strtok_r(table, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                const char *names[] = { "removed", "space", "whitespace", "punctuation", "combining" };
                int set = -1;

                if (line[0] == '#')
                        continue;
                for (int k = 0; k < (int) ELEMENTSOF(names); k++)
                        if (strncmp(line, names[k], strlen(names[k])) == 0 && line[strlen(names[k])] == ' ')
                                set = k;

                if (set >= 0) {
                        n_sets++;
                        parse_set(line, bits);
                        for (int32_t c = 0; c < 0x110000; c++) {
                                bool want = in_set(bits, c), got;

                                if (c >= 0xd800 && c <= 0xdfff)
                                        continue;
                                switch (set) {
                                case 0:
                                        got = c == 0 || c == 0xfffd ||
                                                (c != '\t' && c != '\n' && c != '\r' && tu_is_other(c));
                                        break;
                                case 1:
                                        got = c != ' ' && !(c == 0 || c == 0xfffd ||
                                                            (c != '\t' && c != '\n' && c != '\r' && tu_is_other(c))) &&
                                                (c == '\t' || c == '\n' || c == '\r' || tu_is_whitespace(c));
                                        break;
                                case 2:
                                        got = tu_is_whitespace(c);
                                        break;
                                case 3:
                                        got = !tu_is_whitespace(c) && tu_is_punctuation(c);
                                        break;
                                default:
                                        got = tu_is_combining_mark(c);
                                }
                                if (got != want) {
                                        print_error("%s U+%04" PRIX32 ": reference %d, here %d\n", names[set], c,
                                                    want, got);
                                        n_failed++;
                                }
                        }
                        continue;
                }

                /* "strip XXXX -> YYYY ZZZZ" or "lower ..." */
                bool is_strip = strncmp(line, "strip ", 6) == 0;
                assert_true(is_strip || strncmp(line, "lower ", 6) == 0);
                char *p = line + 6, *end;
                int32_t c = (int32_t) strtol(p, &end, 16), want[8], got[8];
                size_t n_want = 0, n_got;

                assert_true(strncmp(end, " ->", 3) == 0);
                p = end + 3;
                while (*p == ' ' && isxdigit((unsigned char) p[1]) && n_want < ELEMENTSOF(want)) {
                        want[n_want++] = (int32_t) strtol(p + 1, &end, 16);
                        p = end;
                }
                n_maps++;
                (is_strip ? strip_length : lower_length)[c] = (int32_t) n_want + 1;
                n_got = is_strip ? strip(c, got) : tu_lowercase(c, got);
                if ((n_got != n_want || memcmp(got, want, n_want * sizeof *got) != 0) &&
                    !(!is_strip && unknown_to_icu(c))) {
                        print_error("%s U+%04" PRIX32 ": reference gives %zu characters, here %zu (U+%04" PRIX32 ")\n",
                                    line, c, n_want, n_got, n_got > 0 ? got[0] : 0);
                        n_failed++;
                }
        }

        /* What the table leaves out is left as it is, here too. */
        for (int32_t c = 0; c < 0x110000; c++) {
                int32_t out[8];
                size_t n;

                if (c >= 0xd800 && c <= 0xdfff)
                        continue;
                if (strip_length[c] == 0 && !(c >= 0xac00 && c <= 0xd7a3)) {
                        n = strip(c, out);
                        if (n != 1 || out[0] != c) {
                                print_error("strip U+%04" PRIX32 ": the reference leaves it, here it changes\n", c);
                                n_failed++;
                        }
                }
                if (lower_length[c] == 0) {
                        n = tu_lowercase(c, out);
                        if (n != 1 || out[0] != c) {
                                print_error("lower U+%04" PRIX32 ": the reference leaves it, here it changes\n", c);
                                n_failed++;
                        }
                }
        }

        assert_int_equal(n_sets, 5);
        assert_true(n_maps > 3000);
        if (n_failed > 0)
                fail_msg("%zu code points differ from the reference", n_failed);
}

/* ---- files that are not right ---- */

/* A small valid tokenizer.json, made wrong by replacing one piece. */
static const char valid[] =
        "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,\n"
        " \"added_tokens\": [{\"id\": 0, \"content\": \"[PAD]\", \"single_word\": false, \"lstrip\": false,"
        " \"rstrip\": false, \"normalized\": false, \"special\": true},"
        " {\"id\": 1, \"content\": \"[UNK]\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false,"
        " \"normalized\": false, \"special\": true}],\n"
        " \"normalizer\": {\"type\": \"BertNormalizer\", \"clean_text\": true, \"handle_chinese_chars\": true,"
        " \"strip_accents\": null, \"lowercase\": true},\n"
        " \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"},\n"
        " \"post_processor\": {\"type\": \"TemplateProcessing\","
        " \"single\": [{\"SpecialToken\": {\"id\": \"[CLS]\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}},"
        " {\"SpecialToken\": {\"id\": \"[SEP]\", \"type_id\": 0}}],"
        " \"pair\": [],"
        " \"special_tokens\": {\"[CLS]\": {\"id\": \"[CLS]\", \"ids\": [2], \"tokens\": [\"[CLS]\"]},"
        " \"[SEP]\": {\"id\": \"[SEP]\", \"ids\": [3], \"tokens\": [\"[SEP]\"]}}},\n"
        " \"decoder\": {\"type\": \"WordPiece\", \"prefix\": \"##\", \"cleanup\": true},\n"
        " \"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", \"continuing_subword_prefix\": \"##\","
        " \"max_input_chars_per_word\": 100,"
        " \"vocab\": {\"[PAD]\": 0, \"[UNK]\": 1, \"[CLS]\": 2, \"[SEP]\": 3, \"secret\": 4, \"##s\": 5, \"a\": 6}}}\n";

/* valid with the first occurrence of from replaced by to. */
static char *replace(const char *from, const char *to) {
        const char *at = strstr(valid, from);
        char *s;

        if (!at)
                fail_msg("\"%s\" is not in the valid file", from);
        assert_true(asprintf(&s, "%.*s%s%s", (int) (at - valid), valid, to, at + strlen(from)) > 0);
        return s;
}

static void assert_refused_text(const char *text, size_t length, int error, const char *fact) {
        _cleanup_free_ char *message = NULL;
        Tokenizer *t = (Tokenizer *) 0x1;

        assert_int_equal(tokenizer_parse(text, length, NULL, NULL, &t, &message), error);
        /* Left alone on failure. */
        assert_ptr_equal(t, (Tokenizer *) 0x1);
        assert_non_null(message);
        if (!strstr(message, fact))
                fail_msg("message \"%s\" does not contain \"%s\"", message, fact);
        /* Messages never quote the file. */
        if (strstr(message, "secret") || strstr(message, "[CLS]") || strstr(message, "[UNK]"))
                fail_msg("message \"%s\" quotes the file", message);
        /* Without a place for the message, the same verdict. */
        assert_int_equal(tokenizer_parse(text, length, NULL, NULL, &t, NULL), error);
}

static void assert_refused(const char *from, const char *to, int error, const char *fact) {
        _cleanup_free_ char *text = replace(from, to);

        assert_refused_text(text, strlen(text), error, fact);
}

static void test_valid_file(void **state) {
        _cleanup_(tokenizer_freep) Tokenizer *t = NULL;
        int32_t ids[8];
        size_t n;

        assert_int_equal(tokenizer_parse(valid, strlen(valid), NULL, NULL, &t, NULL), 0);
        assert_int_equal(tokenizer_n_special_ids(t), 2);
        assert_int_equal(tokenizer_id_limit(t), 7);
        assert_int_equal(tokenizer_token_to_id(t, "[PAD]"), 0);
        assert_int_equal(tokenizer_token_to_id(t, "##s"), 5);
        assert_int_equal(tokenizer_token_to_id(t, "nothing"), -ENOENT);

        assert_int_equal(tokenizer_encode(t, "Secrets, a", 10, TOKENIZER_TRUNCATE_NONE, ids, ELEMENTSOF(ids), &n), 0);
        assert_int_equal(n, 6);
        assert_int_equal(ids[0], 2);
        assert_int_equal(ids[1], 4);    /* secret */
        assert_int_equal(ids[2], 5);    /* ##s */
        assert_int_equal(ids[3], 1);    /* , is not in the vocabulary */
        assert_int_equal(ids[4], 6);
        assert_int_equal(ids[5], 3);

        /* Too small for the special tokens. */
        assert_int_equal(tokenizer_encode(t, "a", 1, TOKENIZER_TRUNCATE_RIGHT, ids, 1, &n), -EINVAL);
        /* Just the special tokens. */
        assert_int_equal(tokenizer_encode(t, "a a a", 5, TOKENIZER_TRUNCATE_LEFT, ids, 2, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(ids[0], 2);
        assert_int_equal(ids[1], 3);
        assert_int_equal(tokenizer_encode(t, "a", 1, TOKENIZER_TRUNCATE_NONE, ids, 2, &n), -E2BIG);
        assert_int_equal(tokenizer_encode(t, NULL, 0, TOKENIZER_TRUNCATE_NONE, ids, 2, &n), 0);
        assert_int_equal(n, 2);

        /* "type" may come after the other members. */
        _cleanup_free_ char *late_type = replace("{\"type\": \"BertNormalizer\", \"clean_text\": true,",
                                                 "{\"clean_text\": true, \"type\": \"BertNormalizer\",");
        _cleanup_(tokenizer_freep) Tokenizer *u = NULL;
        assert_int_equal(tokenizer_parse(late_type, strlen(late_type), NULL, NULL, &u, NULL), 0);
}

static void test_bad_json(void **state) {
        size_t n = strlen(valid);

        /* Cut anywhere, the file is refused, never read past its end. */
        for (size_t cut = 0; cut < n - 1; cut++) {
                _cleanup_free_ char *copy = malloc(MAX(cut, (size_t) 1));
                _cleanup_free_ char *message = NULL;
                Tokenizer *t = NULL;
                int r;

                memcpy(copy, valid, cut);
                r = tokenizer_parse(copy, cut, NULL, NULL, &t, &message);
                if (r != -EBADMSG)
                        fail_msg("cut at %zu: %d (%s)", cut, r, strempty(message));
                assert_null(t);
                assert_non_null(message);
        }
        assert_refused_text("", 0, -EBADMSG, "not valid JSON");
        assert_refused_text("[]", 2, -EBADMSG, "the file is an array, not an object");
        assert_refused_text("{} x", 4, -EBADMSG, "more than whitespace");
        assert_refused_text("{}", 2, -EBADMSG, "the file has no model");
        assert_refused("\"version\": \"1.0\"", "\"version\": \"2.0\"", -EOPNOTSUPP, "version is not 1.0");
        assert_refused("\"truncation\": null", "\"padding\": 1, \"truncation\": null", -EBADMSG,
                       "padding appears more than once");
}

static void test_bad_model(void **state) {
        assert_refused("\"type\": \"WordPiece\", \"unk", "\"type\": \"BPE\", \"unk", -EOPNOTSUPP,
                       "model is of type BPE, which is not supported");
        assert_refused("\"type\": \"WordPiece\", \"unk", "\"type\": \"Mystery\", \"unk", -EBADMSG,
                       "model is of an unknown type");
        assert_refused("\"vocab\": {", "\"vocab\": [], \"x\": {", -EBADMSG, "model.vocab is an array, not an object");
        assert_refused("\"secret\": 4", "\"secret\": \"4\"", -EBADMSG, "model.vocab entry 4 is a string, not a number");
        assert_refused("\"secret\": 4", "\"secret\": 4.0", -EBADMSG, "model.vocab entry 4 is not a whole number");
        assert_refused("\"secret\": 4", "\"secret\": -4", -EBADMSG, "not a whole number");
        assert_refused("\"secret\": 4", "\"secret\": 99999999999999999999999", -EBADMSG,
                       "model.vocab entry 4 is too large");
        assert_refused("\"secret\": 4", "\"secret\": 1073741824", -EBADMSG, "beyond the largest id allowed");
        assert_refused("\"secret\": 4", "\"secret\": 3", -EBADMSG, "model.vocab gives id 3 to two tokens");
        assert_refused("\"secret\": 4", "\"a\": 4", -EBADMSG, "model.vocab has the same token twice");
        assert_refused("\"[UNK]\": 1, ", "", -EBADMSG, "model.unk_token is not in model.vocab");
        assert_refused("\"unk_token\": \"[UNK]\", ", "", -EBADMSG, "model.unk_token is missing");
        assert_refused("\"max_input_chars_per_word\": 100", "\"max_input_chars_per_word\": true", -EBADMSG,
                       "model.max_input_chars_per_word is a boolean, not a number");
        assert_refused("\"continuing_subword_prefix\": \"##\"", "\"continuing_subword_prefix\": null", -EBADMSG,
                       "model.continuing_subword_prefix is null, not a string");
        assert_refused("\"vocab\": {\"[PAD]\": 0, \"[UNK]\": 1, \"[CLS]\": 2, \"[SEP]\": 3, \"secret\": 4, \"##s\": 5, \"a\": 6}",
                       "\"vocab\": {}", -EBADMSG, "model.vocab is empty");
}

static void test_bad_normalizer(void **state) {
        assert_refused("\"type\": \"BertNormalizer\"", "\"type\": \"NFKC\"", -EOPNOTSUPP,
                       "normalizer is of type NFKC, which is not supported");
        assert_refused("\"type\": \"BertNormalizer\"", "\"type\": 7", -EBADMSG,
                       "normalizer.type is a number, not a string");
        assert_refused("\"type\": \"BertNormalizer\", ", "", -EBADMSG, "normalizer has no type");
        assert_refused("\"clean_text\": true", "\"clean_text\": 1", -EBADMSG,
                       "normalizer.clean_text is a number, not a boolean");
        assert_refused("\"lowercase\": true", "\"lowercase\": true, \"lowercase\": false", -EBADMSG,
                       "normalizer.lowercase appears more than once");
        assert_refused("\"clean_text\": true, ", "", -EBADMSG, "normalizer.clean_text is missing");
        assert_refused("{\"type\": \"BertNormalizer\", \"clean_text\": true, \"handle_chinese_chars\": true,"
                       " \"strip_accents\": null, \"lowercase\": true}",
                       "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFD\"}, {\"type\": \"Replace\"}]}",
                       -EOPNOTSUPP, "normalizer.normalizers[1] is of type Replace, which is not supported");
        assert_refused("{\"type\": \"BertNormalizer\", \"clean_text\": true, \"handle_chinese_chars\": true,"
                       " \"strip_accents\": null, \"lowercase\": true}",
                       "{\"type\": \"Sequence\"}", -EBADMSG, "normalizer.normalizers is missing");
        /* Sequences in sequences, but not without end. */
        assert_refused("{\"type\": \"BertNormalizer\", \"clean_text\": true, \"handle_chinese_chars\": true,"
                       " \"strip_accents\": null, \"lowercase\": true}",
                       "{\"type\": \"Sequence\", \"normalizers\": ["
                       "{\"type\": \"NFD\"}, {\"type\": \"NFD\"}, {\"type\": \"NFD\"}, {\"type\": \"NFD\"},"
                       "{\"type\": \"NFD\"}, {\"type\": \"NFD\"}, {\"type\": \"NFD\"}, {\"type\": \"NFD\"},"
                       "{\"type\": \"NFD\"}, {\"type\": \"NFD\"}, {\"type\": \"NFD\"}, {\"type\": \"NFD\"},"
                       "{\"type\": \"NFD\"}, {\"type\": \"NFD\"}, {\"type\": \"NFD\"}, {\"type\": \"NFD\"}]}",
                       -EBADMSG, "more than 16 normalizers");
        assert_refused("{\"type\": \"BertPreTokenizer\"}", "{\"type\": \"Whitespace\"}", -EOPNOTSUPP,
                       "pre_tokenizer is of type Whitespace, which is not supported");
        assert_refused("{\"type\": \"BertPreTokenizer\"}", "[]", -EBADMSG, "pre_tokenizer is an array, not an object");
}

static void test_bad_post_processor(void **state) {
        assert_refused("\"ids\": [2]", "\"ids\": [5]", -EBADMSG,
                       "post_processor.special_tokens entry 0 gives id 5 to a token whose id is 2");
        assert_refused("\"[CLS]\": 2, ", "", -EBADMSG,
                       "post_processor.special_tokens entry 0: token 0 is not in the vocabulary");
        assert_refused("\"[SEP]\": 3, ", "", -EBADMSG,
                       "post_processor.special_tokens entry 1: token 0 is not in the vocabulary");
        assert_refused("\"ids\": [2]", "\"ids\": [2, 3]", -EBADMSG, "has 2 ids but 1 tokens");
        assert_refused("\"ids\": [2]", "\"ids\": [1e3]", -EBADMSG, "ids[0] is not a whole number");
        assert_refused("{\"SpecialToken\": {\"id\": \"[CLS]\", \"type_id\": 0}}, {\"Sequence",
                       "{\"SpecialToken\": {\"id\": \"[XYZ]\", \"type_id\": 0}}, {\"Sequence", -EBADMSG,
                       "post_processor.single[0] names a token that post_processor.special_tokens does not define");
        assert_refused("{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}", "{\"Sequence\": {\"id\": \"A\", \"type_id\": 1}}",
                       -EOPNOTSUPP, "post_processor.single[1].Sequence.type_id is not 0");
        assert_refused("{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}", "{\"Sequence\": {\"id\": \"B\", \"type_id\": 0}}",
                       -EBADMSG, "post_processor.single[1] is a sequence other than A");
        assert_refused("{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}", "{\"Other\": {}}", -EBADMSG,
                       "neither a Sequence nor a SpecialToken");
        assert_refused(", {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}", "", -EBADMSG,
                       "post_processor.single does not have the text");
        assert_refused("\"type\": \"TemplateProcessing\"", "\"type\": \"RobertaProcessing\"", -EOPNOTSUPP,
                       "post_processor is of type RobertaProcessing, which is not supported");

        /* BertProcessing: [token, id] twice. */
        static const char template[] =
                "{\"type\": \"TemplateProcessing\","
                " \"single\": [{\"SpecialToken\": {\"id\": \"[CLS]\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}},"
                " {\"SpecialToken\": {\"id\": \"[SEP]\", \"type_id\": 0}}],"
                " \"pair\": [],"
                " \"special_tokens\": {\"[CLS]\": {\"id\": \"[CLS]\", \"ids\": [2], \"tokens\": [\"[CLS]\"]},"
                " \"[SEP]\": {\"id\": \"[SEP]\", \"ids\": [3], \"tokens\": [\"[SEP]\"]}}}";
        assert_refused(template, "{\"type\": \"BertProcessing\", \"sep\": [\"[SEP]\", 3], \"cls\": [\"[CLS]\"]}",
                       -EBADMSG, "post_processor.cls has 1 elements, not 2");
        assert_refused(template, "{\"type\": \"BertProcessing\", \"sep\": [\"[SEP]\", 3]}", -EBADMSG,
                       "post_processor.cls is missing");
        assert_refused(template, "{\"type\": \"BertProcessing\", \"sep\": [\"[SEP]\", 3], \"cls\": [\"[CLS]\", 4]}",
                       -EBADMSG, "post_processor.cls gives id 4 to a token whose id is 2");

        _cleanup_free_ char *bert = replace(template,
                                            "{\"type\": \"BertProcessing\", \"sep\": [\"[SEP]\", 3], \"cls\": [\"[CLS]\", 2]}");
        _cleanup_(tokenizer_freep) Tokenizer *t = NULL;
        int32_t ids[4];
        size_t n;

        assert_int_equal(tokenizer_parse(bert, strlen(bert), NULL, NULL, &t, NULL), 0);
        assert_int_equal(tokenizer_encode(t, "a", 1, TOKENIZER_TRUNCATE_NONE, ids, 4, &n), 0);
        assert_int_equal(n, 3);
        assert_int_equal(ids[0], 2);
        assert_int_equal(ids[1], 6);
        assert_int_equal(ids[2], 3);
}

static void test_bad_added_tokens(void **state) {
        assert_refused("\"added_tokens\": [", "\"added_tokens\": {}, \"x\": [", -EBADMSG,
                       "added_tokens is an object, not an array");
        assert_refused("{\"id\": 0, \"content\": \"[PAD]\",", "{\"id\": 0,", -EBADMSG, "added_tokens[0].content is missing");
        assert_refused("{\"id\": 0, \"content\": \"[PAD]\",", "{\"content\": \"[PAD]\",", -EBADMSG,
                       "added_tokens[0].id is missing");
        assert_refused("{\"id\": 0, \"content\": \"[PAD]\",", "{\"id\": 0, \"content\": \"[UNK]\",", -EBADMSG,
                       "added_tokens has the same content twice");
        assert_refused("{\"id\": 0, \"content\": \"[PAD]\", \"single_word\": false",
                       "{\"id\": 0, \"content\": \"[PAD]\", \"single_word\": \"no\"", -EBADMSG,
                       "added_tokens[0].single_word is a string, not a boolean");
        assert_refused("{\"id\": 0, \"content\": \"[PAD]\", \"single_word\": false, \"lstrip\": false,"
                       " \"rstrip\": false, \"normalized\": false",
                       "{\"id\": 0, \"content\": \"\\u0301\", \"single_word\": false, \"lstrip\": false,"
                       " \"rstrip\": false, \"normalized\": true",
                       -EOPNOTSUPP, "added_tokens[0] is nothing once normalized");
        assert_refused("{\"id\": 0, \"content\": \"[PAD]\", \"single_word\": false, \"lstrip\": false,"
                       " \"rstrip\": false, \"normalized\": false",
                       "{\"id\": 0, \"content\": \"A\", \"single_word\": false, \"lstrip\": false,"
                       " \"rstrip\": false, \"normalized\": true}, {\"id\": 0, \"content\": \"a\", \"normalized\": true",
                       -EOPNOTSUPP, "the same once normalized");
}

static void test_bounds(void **state) {
        _cleanup_free_ char *long_token = malloc(TOKENIZER_TOKEN_MAX + 16), *text = NULL;

        memset(long_token, 'x', TOKENIZER_TOKEN_MAX + 1);
        long_token[TOKENIZER_TOKEN_MAX + 1] = '\0';
        assert_true(asprintf(&text, "\"%s\": 4", long_token) > 0);
        assert_refused("\"secret\": 4", text, -EBADMSG, "model.vocab entry 4 is longer than 1024 bytes");

        /* Nested deeper than the JSON reader goes. */
        _cleanup_free_ char *deep = malloc(400), *nested = NULL;
        size_t k = 0;
        for (int i = 0; i < 130; i++)
                deep[k++] = '[';
        for (int i = 0; i < 130; i++)
                deep[k++] = ']';
        deep[k] = '\0';
        assert_true(asprintf(&nested, "\"decoder\": %s, \"x\"", deep) > 0);
        assert_refused("\"decoder\"", nested, -EBADMSG, "nested more than 127 deep");
}

/* ---- reading from a file ---- */

static int write_file(const char *name, const char *text, size_t length) {
        char path[512];
        int fd;

        snprintf(path, sizeof path, "%s/%s", temp_dir, name);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, length), (ssize_t) length);
        return fd;
}

static void test_load_fd(void **state) {
        _cleanup_(tokenizer_freep) Tokenizer *t = NULL;
        _cleanup_free_ char *error = NULL, *bad = replace("\"[UNK]\": 1, ", "");
        _cleanup_close_ int fd = -1, bad_fd = -1, big_fd = -1, dir_fd = -1;

        fd = write_file("tokenizer.json", valid, strlen(valid));
        assert_int_equal(tokenizer_load_fd(fd, "org/m/tokenizer.json", NULL, NULL, &t, &error), 0);
        assert_null(error);
        assert_int_equal(tokenizer_token_to_id(t, "a"), 6);

        bad_fd = write_file("bad.json", bad, strlen(bad));
        assert_int_equal(tokenizer_load_fd(bad_fd, "org/m/tokenizer.json", NULL, NULL, &t, &error), -EBADMSG);
        assert_string_equal(error, "org/m/tokenizer.json: model.unk_token is not in model.vocab.");
        free(error);
        error = NULL;

        big_fd = write_file("big.json", "{", 1);
        assert_int_equal(ftruncate(big_fd, (off_t) TOKENIZER_FILE_SIZE_MAX + 1), 0);
        assert_int_equal(tokenizer_load_fd(big_fd, "big.json", NULL, NULL, &t, &error), -EFBIG);
        assert_string_equal(error, "big.json: larger than 64 MiB.");
        free(error);
        error = NULL;

        dir_fd = open(temp_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(dir_fd >= 0);
        assert_int_equal(tokenizer_load_fd(dir_fd, "dir", NULL, NULL, &t, &error), -EBADMSG);
        assert_string_equal(error, "dir: not a regular file.");
}

static bool cancel_always(void *userdata) {
        (*(unsigned *) userdata)++;
        return true;
}

static void test_cancel(void **state) {
        Tokenizer *t = NULL;
        unsigned calls = 0;

        assert_int_equal(tokenizer_parse(valid, strlen(valid), cancel_always, &calls, &t, NULL), -ECANCELED);
        assert_null(t);
        assert_true(calls > 0);
}

/* ---- encoding ---- */

/* For every limit, right truncation keeps the first ids and left the last,
 * and without truncation only the full length goes. */
static void test_truncation(void **state) {
        _cleanup_(tokenizer_freep) Tokenizer *t = load_fixture("uncased");
        _cleanup_free_ char *text = read_fixture("cases.json", NULL);
        int32_t all[8192], ids[8192];
        size_t n_all, n;

        /* Some 5 kB of what the fixtures hold: texts, names, numbers. */
        text[5000] = 0;
        assert_int_equal(encode(t, text, strlen(text), TOKENIZER_TRUNCATE_NONE, all, ELEMENTSOF(all), &n_all), 0);
        assert_true(n_all > 1000);
        for (size_t max = 2; max <= n_all + 1; max += max < 64 ? 1 : 97) {
                size_t content = MIN(max, n_all) - 2;

                assert_int_equal(encode(t, text, strlen(text), TOKENIZER_TRUNCATE_RIGHT, ids, max, &n), 0);
                assert_int_equal(n, content + 2);
                assert_memory_equal(ids, all, (content + 1) * sizeof *ids);
                assert_int_equal(ids[n - 1], all[n_all - 1]);

                assert_int_equal(encode(t, text, strlen(text), TOKENIZER_TRUNCATE_LEFT, ids, max, &n), 0);
                assert_int_equal(n, content + 2);
                assert_int_equal(ids[0], all[0]);
                assert_memory_equal(ids + 1, all + n_all - 1 - content, (content + 1) * sizeof *ids);

                assert_int_equal(encode(t, text, strlen(text), TOKENIZER_TRUNCATE_NONE, ids, max, &n),
                                 max >= n_all ? 0 : -E2BIG);
        }
}

typedef struct Worker {
        const Tokenizer *t;
        const char *text;
        const int32_t *want;
        size_t n_want;
        bool ok;
} Worker;

static void *work(void *userdata) {
        Worker *w = userdata;
        int32_t ids[8192];
        size_t n;

        w->ok = true;
        for (int i = 0; i < 20; i++)
                if (encode(w->t, w->text, strlen(w->text), TOKENIZER_TRUNCATE_LEFT, ids, ELEMENTSOF(ids), &n) != 0 ||
                    n != w->n_want || memcmp(ids, w->want, n * sizeof *ids) != 0)
                        w->ok = false;
        return NULL;
}

/* One tokenizer, several threads: each gets the ids it would get alone. */
static void test_threads(void **state) {
        _cleanup_(tokenizer_freep) Tokenizer *t = load_fixture("added-tokens");
        _cleanup_free_ char *json = read_fixture("cases.json", NULL);
        static int32_t want[8192];
        pthread_t threads[4];
        Worker workers[4];
        size_t n;

        assert_int_equal(encode(t, json, strlen(json), TOKENIZER_TRUNCATE_LEFT, want, ELEMENTSOF(want), &n), 0);
        for (size_t i = 0; i < ELEMENTSOF(threads); i++) {
                workers[i] = (Worker) { .t = t, .text = json, .want = want, .n_want = n };
                assert_int_equal(pthread_create(&threads[i], NULL, work, &workers[i]), 0);
        }
        for (size_t i = 0; i < ELEMENTSOF(threads); i++) {
                assert_int_equal(pthread_join(threads[i], NULL), 0);
                assert_true(workers[i].ok);
        }
}

/* A text of one kind of character, 1 MiB of it, in a child: its peak
 * memory is its own, and limits on its CPU time and address space stop an
 * encoder that is not linear long before the test would hang. */
static void encode_bounded(const Tokenizer *t, const char *unit, TokenizerTruncation truncation) {
        size_t unit_length = strlen(unit), length = 0;
        int status;
        pid_t pid;

        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                _cleanup_free_ char *text = malloc(MiB + 8);
                uint64_t before, peak;
                struct rlimit cpu = { .rlim_cur = 60, .rlim_max = 60 };
                int32_t ids[512];
                size_t n;
                int r;

                if (!text || setrlimit(RLIMIT_CPU, &cpu) < 0)
                        _exit(10);
                while (length + unit_length <= MiB) {
                        memcpy(text + length, unit, unit_length);
                        length += unit_length;
                }

                before = proc_status_bytes("VmRSS");
                r = tokenizer_encode(t, text, length, truncation, ids, ELEMENTSOF(ids), &n);
                peak = proc_status_bytes("VmHWM");
                if (r != 0 && !(r == -E2BIG && truncation == TOKENIZER_TRUNCATE_NONE)) {
                        fprintf(stderr, "encoding failed: %d\n", r);
                        _exit(11);
                }
                /* A few times the text for the longest piece that cannot
                 * be cut, and nothing that grows faster. */
                if (peak > before + 64 * MiB) {
                        fprintf(stderr, "peak RSS rose by %" PRIu64 " MiB for 1 MiB of \"%s\"\n", (peak - before) / MiB,
                                unit);
                        _exit(13);
                }
                _exit(0);
        }

        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail_msg("the child failed on 1 MiB of \"%s\" (status 0x%x); see its message above", unit, status);
}

static void test_bounded(void **state) {
        static const char * const units[] = {
                "a", "a ", ".", "a.", " ", "\xe5\xad\x97" /* CJK */, "\xcc\x81" /* combining acute */,
                "e\xcc\x81", "\xcc\x81\xcc\x96", "\xef\xbc\x8e" /* fullwidth full stop */, "\xff", "\xc3",
                "\xe2\x80\x8b" /* zero width space */, "##", "[CLS]", "a[CLS]", "\xc4\xb0" /* I with dot */,
        };
        _cleanup_(tokenizer_freep) Tokenizer *uncased = load_fixture("uncased");
        _cleanup_(tokenizer_freep) Tokenizer *added = load_fixture("added-tokens");
        _cleanup_(tokenizer_freep) Tokenizer *whole = load_fixture("no-pre-tokenizer");

        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                for (TokenizerTruncation k = TOKENIZER_TRUNCATE_NONE; k <= TOKENIZER_TRUNCATE_LEFT; k++) {
                        encode_bounded(uncased, units[i], k);
                        encode_bounded(added, units[i], k);
                }
        encode_bounded(whole, "a", TOKENIZER_TRUNCATE_LEFT);
        encode_bounded(whole, "ab ", TOKENIZER_TRUNCATE_LEFT);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_reference_ids),
                cmocka_unit_test(test_unicode_table),
                cmocka_unit_test(test_valid_file),
                cmocka_unit_test(test_bad_json),
                cmocka_unit_test(test_bad_model),
                cmocka_unit_test(test_bad_normalizer),
                cmocka_unit_test(test_bad_post_processor),
                cmocka_unit_test(test_bad_added_tokens),
                cmocka_unit_test(test_bounds),
                cmocka_unit_test(test_load_fd),
                cmocka_unit_test(test_cancel),
                cmocka_unit_test(test_truncation),
                cmocka_unit_test(test_threads),
                cmocka_unit_test(test_bounded),
        };

        return cmocka_run_group_tests(tests, setup_temp_dir, remove_temp_dir);
}
