/* SPDX-License-Identifier: MIT */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unicode/unorm2.h>
#include <unistd.h>

#include "json-scan.h"
#include "macro.h"
#include "tokenizer-internal.h"
#include "tokenizer.h"

/* The room a message takes: it quotes nothing of the file, so its length
 * is known. */
#define DETAIL_MAX 256U
#define PATH_LENGTH_MAX 128U
#define TEMPLATE_PIECES_MAX 32U
#define SPECIAL_TOKENS_MAX 256U

typedef struct AddedSpec {
        JsonString content;
        bool single_word, lstrip, rstrip, normalized;
} AddedSpec;

/* A special token of the post-processor: its ids, and the tokens they
 * must be. */
typedef struct SpecialSpec {
        JsonString name;
        uint32_t ids[TOKENIZER_SPECIAL_IDS_MAX];
        JsonString tokens[TOKENIZER_SPECIAL_IDS_MAX];
        size_t n_ids, n_tokens;
} SpecialSpec;

typedef struct Piece {
        bool sequence;          /* the text itself, or a special token: */
        JsonString name;        /* named (TemplateProcessing) */
        size_t special;         /* or given (BertProcessing), SIZE_MAX if named */
        const char *what;       /* how messages call the given one */
} Piece;

typedef struct Reader {
        JsonScan json;
        Tokenizer *t;
        char detail[DETAIL_MAX];
        unsigned n_normalizers;

        AddedSpec *added;
        size_t n_added;

        JsonString unk_token, subword_prefix;
        bool have_unk_token, have_subword_prefix, have_max_chars, have_vocab;

        bool have_post_processor;
        Piece pieces[TEMPLATE_PIECES_MAX];
        size_t n_pieces;
        SpecialSpec *specials;
        size_t n_specials;
} Reader;

_printf_(3, 4) static int fail(Reader *x, int error, const char *format, ...) {
        va_list ap;

        if (x->detail[0] == '\0') {
                va_start(ap, format);
                vsnprintf(x->detail, sizeof x->detail, format, ap);
                va_end(ap);
        }
        return error;
}

/* A member's path, for messages: cut if it must be. */
_printf_(2, 3) static void make_path(char buffer[static PATH_LENGTH_MAX], const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        vsnprintf(buffer, PATH_LENGTH_MAX, format, ap);
        va_end(ap);
}

/* The index of key in keys (NULL-terminated), or -1. */
static int key_index(const Reader *x, const JsonString *key, const char * const *keys) {
        for (int i = 0; keys[i]; i++)
                if (json_string_equal(&x->json, key, keys[i]))
                        return i;
        return -1;
}

/* Marks key k of an object seen; a second time is an error: readers
 * differ on which one counts. */
static int see(Reader *x, unsigned *seen, int k, const char *path, const char * const *keys) {
        if (k < 0)
                return 0;
        if (*seen & (1U << k))
                return path ? fail(x, -EBADMSG, "%s.%s appears more than once", path, keys[k])
                            : fail(x, -EBADMSG, "%s appears more than once", keys[k]);
        *seen |= 1U << k;
        return 0;
}

static int read_kind(Reader *x, const char *path, JsonKind want, uint64_t *ret_number, JsonString *ret_string,
                     bool *ret_true) {
        size_t at = x->json.pos;
        JsonKind kind;
        int r;

        r = json_read_value(&x->json, &kind, ret_number, ret_string);
        if (r < 0)
                return r;
        if (kind == JSON_HUGE && want == JSON_WHOLE)
                return fail(x, -EBADMSG, "%s is too large", path);
        if ((kind == JSON_NEGATIVE || kind == JSON_FRACTIONAL) && want == JSON_WHOLE)
                return fail(x, -EBADMSG, "%s is not a whole number", path);
        if (kind != want)
                return fail(x, -EBADMSG, "%s is %s, not %s", path, json_kind_to_string(kind),
                            json_kind_to_string(want));
        if (ret_true)
                *ret_true = x->json.text[at] == 't';
        return 0;
}

static int read_bool(Reader *x, const char *path, bool *ret) {
        return read_kind(x, path, JSON_BOOLEAN, NULL, NULL, ret);
}

static int read_string(Reader *x, const char *path, JsonString *ret) {
        int r;

        r = read_kind(x, path, JSON_STRING, NULL, ret, NULL);
        if (r < 0)
                return r;
        if (json_string_length(&x->json, ret) > TOKENIZER_TOKEN_MAX)
                return fail(x, -EBADMSG, "%s is longer than %u bytes", path, TOKENIZER_TOKEN_MAX);
        return 0;
}

static int read_id(Reader *x, const char *path, uint32_t *ret) {
        uint64_t id;
        int r;

        r = read_kind(x, path, JSON_WHOLE, &id, NULL, NULL);
        if (r < 0)
                return r;
        if (id >= TOKENIZER_ID_LIMIT)
                return fail(x, -EBADMSG, "%s is %" PRIu64 ", beyond the largest id allowed (%" PRIu32 ")", path,
                            id, TOKENIZER_ID_LIMIT - 1);
        *ret = (uint32_t) id;
        return 0;
}

/* Decodes a string the reader checked (at most TOKENIZER_TOKEN_MAX bytes). */
static size_t decode(const Reader *x, const JsonString *s, char buffer[static TOKENIZER_TOKEN_MAX + 1]) {
        return MIN(json_string_decode(&x->json, s, buffer, TOKENIZER_TOKEN_MAX + 1), (size_t) TOKENIZER_TOKEN_MAX);
}

/* Opens the object at pos, which must be one. */
static int enter_object(Reader *x, const char *path) {
        if (json_peek(&x->json) != '{')
                return read_kind(x, path, JSON_OBJECT, NULL, NULL, NULL);
        return json_enter(&x->json);
}

static int enter_array(Reader *x, const char *path) {
        if (json_peek(&x->json) != '[')
                return read_kind(x, path, JSON_ARRAY, NULL, NULL, NULL);
        return json_enter(&x->json);
}

/* The "type" of the object at pos, read ahead without moving: 1 and the
 * string, or 0 when it has none. The reference accepts it anywhere among
 * the members. */
static int peek_type(Reader *x, const char *path, JsonString *ret) {
        size_t pos = x->json.pos, n = 0;
        unsigned depth = x->json.depth;
        char type_path[PATH_LENGTH_MAX];
        bool found = false;
        JsonString key;
        int r;

        make_path(type_path, "%s.type", path);
        r = enter_object(x, path);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                if (json_string_equal(&x->json, &key, "type") && !found) {
                        r = read_string(x, type_path, ret);
                        found = true;
                } else
                        r = json_read_value(&x->json, NULL, NULL, NULL);
        }
        if (r < 0)
                return r;

        x->json.pos = pos;
        x->json.depth = depth;
        return found;
}

/* Types the reference knows but this tokenizer does not run: named in
 * messages, since they are not the file's own words. */
static const char *known_type(const Reader *x, const JsonString *type, const char * const *names) {
        for (size_t i = 0; names[i]; i++)
                if (json_string_equal(&x->json, type, names[i]))
                        return names[i];
        return NULL;
}

static int unsupported_type(Reader *x, const char *path, const JsonString *type, const char * const *names) {
        const char *name = known_type(x, type, names);

        if (name)
                return fail(x, -EOPNOTSUPP, "%s is of type %s, which is not supported", path, name);
        return fail(x, -EBADMSG, "%s is of an unknown type", path);
}

static int add_step(Reader *x, const char *path, Step step) {
        if (x->t->n_steps >= STEPS_MAX)
                return fail(x, -EBADMSG, "%s: too many normalizers", path);
        x->t->steps[x->t->n_steps++] = step;
        return 0;
}

static int read_normalizer(Reader *x, const char *path);

static int read_bert_normalizer(Reader *x, const char *path) {
        static const char * const keys[] = { "clean_text", "handle_chinese_chars", "strip_accents", "lowercase",
                                             NULL };
        bool values[4] = {}, strip_null = false;
        unsigned seen = 0;
        JsonString key;
        size_t n = 0;
        int r;

        r = enter_object(x, path);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                char member[PATH_LENGTH_MAX];
                int k = key_index(x, &key, keys);

                r = see(x, &seen, k, path, keys);
                if (r < 0)
                        return r;
                if (k < 0) {
                        r = json_read_value(&x->json, NULL, NULL, NULL);
                        continue;
                }
                make_path(member, "%s.%s", path, keys[k]);
                if (k == 2 && json_peek(&x->json) == 'n') {
                        strip_null = true;
                        r = json_read_value(&x->json, NULL, NULL, NULL);
                } else
                        r = read_bool(x, member, &values[k]);
        }
        if (r < 0)
                return r;

        /* strip_accents may be left out (null); the others may not. */
        for (int k = 0; k < 4; k++)
                if (k != 2 && !(seen & (1U << k)))
                        return fail(x, -EBADMSG, "%s.%s is missing", path, keys[k]);
        if (!(seen & (1U << 2)))
                strip_null = true;

        if (values[0] && (r = add_step(x, path, STEP_CLEAN)) < 0)
                return r;
        if (values[1] && (r = add_step(x, path, STEP_CHINESE)) < 0)
                return r;
        if (strip_null ? values[3] : values[2]) {
                r = add_step(x, path, STEP_NFD);
                if (r < 0)
                        return r;
                r = add_step(x, path, STEP_STRIP_NONSPACING);
                if (r < 0)
                        return r;
        }
        if (values[3] && (r = add_step(x, path, STEP_LOWERCASE)) < 0)
                return r;
        return 0;
}

static int read_normalizer_sequence(Reader *x, const char *path) {
        bool have_normalizers = false;
        JsonString key;
        size_t n = 0;
        int r;

        r = enter_object(x, path);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                char member[PATH_LENGTH_MAX];
                size_t m = 0;

                if (!json_string_equal(&x->json, &key, "normalizers")) {
                        r = json_read_value(&x->json, NULL, NULL, NULL);
                        continue;
                }
                if (have_normalizers)
                        return fail(x, -EBADMSG, "%s.normalizers appears more than once", path);
                have_normalizers = true;

                make_path(member, "%s.normalizers", path);
                r = enter_array(x, member);
                while (r >= 0 && (r = json_array_next(&x->json, &m)) > 0) {
                        char element[PATH_LENGTH_MAX];

                        make_path(element, "%s[%zu]", member, m - 1);
                        r = read_normalizer(x, element);
                }
        }
        if (r < 0)
                return r;
        if (!have_normalizers)
                return fail(x, -EBADMSG, "%s.normalizers is missing", path);
        return 0;
}

static int read_normalizer(Reader *x, const char *path) {
        static const char * const unsupported[] = { "NFC", "NFKC", "NFKD", "Strip", "Replace", "Prepend",
                                                    "Precompiled", "Nmt", "ByteLevel", NULL };
        JsonString type;
        Step step;
        int r;

        if (++x->n_normalizers > TOKENIZER_NORMALIZERS_MAX)
                return fail(x, -EBADMSG, "%s: more than %u normalizers", path, TOKENIZER_NORMALIZERS_MAX);

        r = peek_type(x, path, &type);
        if (r < 0)
                return r;
        if (r == 0)
                return fail(x, -EBADMSG, "%s has no type", path);

        if (json_string_equal(&x->json, &type, "BertNormalizer"))
                return read_bert_normalizer(x, path);
        if (json_string_equal(&x->json, &type, "Sequence"))
                return read_normalizer_sequence(x, path);
        if (json_string_equal(&x->json, &type, "NFD"))
                step = STEP_NFD;
        else if (json_string_equal(&x->json, &type, "Lowercase"))
                step = STEP_LOWERCASE;
        else if (json_string_equal(&x->json, &type, "StripAccents"))
                step = STEP_STRIP_MARKS;
        else
                return unsupported_type(x, path, &type, unsupported);

        r = json_read_value(&x->json, NULL, NULL, NULL);
        if (r < 0)
                return r;
        return add_step(x, path, step);
}

static int read_pre_tokenizer(Reader *x) {
        static const char * const unsupported[] = { "ByteLevel", "Whitespace", "WhitespaceSplit", "Metaspace",
                                                    "Split", "Punctuation", "Sequence", "CharDelimiterSplit",
                                                    "Digits", "UnicodeScripts", "FixedLength", NULL };
        JsonString type;
        int r;

        r = peek_type(x, "pre_tokenizer", &type);
        if (r < 0)
                return r;
        if (r == 0)
                return fail(x, -EBADMSG, "pre_tokenizer has no type");
        if (!json_string_equal(&x->json, &type, "BertPreTokenizer"))
                return unsupported_type(x, "pre_tokenizer", &type, unsupported);
        x->t->split_words = true;
        return json_read_value(&x->json, NULL, NULL, NULL);
}

/* [string, id], as BertProcessing gives its tokens. */
static int read_token_pair(Reader *x, const char *path, size_t *ret_special) {
        SpecialSpec *s;
        size_t n = 0;
        int r;

        assert(x->n_specials < 2);
        s = &x->specials[x->n_specials];
        *s = (SpecialSpec) { .n_ids = 1, .n_tokens = 1 };

        r = enter_array(x, path);
        while (r >= 0 && (r = json_array_next(&x->json, &n)) > 0) {
                char element[PATH_LENGTH_MAX];

                make_path(element, "%s[%zu]", path, n - 1);
                if (n == 1)
                        r = read_string(x, element, &s->tokens[0]);
                else if (n == 2)
                        r = read_id(x, element, &s->ids[0]);
                else
                        return fail(x, -EBADMSG, "%s has more than 2 elements", path);
        }
        if (r < 0)
                return r;
        if (n != 2)
                return fail(x, -EBADMSG, "%s has %zu elements, not 2", path, n);
        *ret_special = x->n_specials++;
        return 0;
}

static int read_bert_processing(Reader *x) {
        static const char * const keys[] = { "cls", "sep", NULL };
        size_t cls = 0, sep = 0, n = 0;
        unsigned seen = 0;
        JsonString key;
        int r;

        x->specials = calloc(2, sizeof *x->specials);
        if (!x->specials)
                return -ENOMEM;

        r = enter_object(x, "post_processor");
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                int k = key_index(x, &key, keys);

                r = see(x, &seen, k, "post_processor", keys);
                if (r < 0)
                        return r;
                if (k == 0)
                        r = read_token_pair(x, "post_processor.cls", &cls);
                else if (k == 1)
                        r = read_token_pair(x, "post_processor.sep", &sep);
                else
                        r = json_read_value(&x->json, NULL, NULL, NULL);
        }
        if (r < 0)
                return r;
        for (int k = 0; k < 2; k++)
                if (!(seen & (1U << k)))
                        return fail(x, -EBADMSG, "post_processor.%s is missing", keys[k]);

        x->pieces[0] = (Piece) { .special = cls, .what = "post_processor.cls" };
        x->pieces[1] = (Piece) { .sequence = true };
        x->pieces[2] = (Piece) { .special = sep, .what = "post_processor.sep" };
        x->n_pieces = 3;
        return 0;
}

/* {"SpecialToken": {"id": "[CLS]", "type_id": 0}} or
 * {"Sequence": {"id": "A", "type_id": 0}} */
static int read_piece(Reader *x, const char *path, Piece *ret) {
        static const char * const keys[] = { "id", "type_id", NULL };
        bool sequence = false, named = false;
        JsonString key, id = {};
        size_t n = 0, m;
        int r;

        r = enter_object(x, path);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                char member[PATH_LENGTH_MAX];
                unsigned seen = 0;

                if (n > 1)
                        return fail(x, -EBADMSG, "%s has more than one member", path);
                sequence = json_string_equal(&x->json, &key, "Sequence");
                if (!sequence && !json_string_equal(&x->json, &key, "SpecialToken"))
                        return fail(x, -EBADMSG, "%s is neither a Sequence nor a SpecialToken", path);

                make_path(member, "%s.%s", path, sequence ? "Sequence" : "SpecialToken");
                m = 0;
                r = enter_object(x, member);
                while (r >= 0 && (r = json_object_next(&x->json, &m, &key)) > 0) {
                        char field[PATH_LENGTH_MAX];
                        int k = key_index(x, &key, keys);
                        uint32_t type_id;

                        r = see(x, &seen, k, member, keys);
                        if (r < 0)
                                return r;
                        if (k < 0) {
                                r = json_read_value(&x->json, NULL, NULL, NULL);
                                continue;
                        }
                        make_path(field, "%s.%s", member, keys[k]);
                        if (k == 0) {
                                r = read_string(x, field, &id);
                                named = true;
                        } else {
                                r = read_id(x, field, &type_id);
                                /* The forward pass has no token types. */
                                if (r >= 0 && type_id != 0)
                                        return fail(x, -EOPNOTSUPP, "%s is not 0, which is not supported",
                                                    field);
                        }
                }
        }
        if (r < 0)
                return r;
        if (n == 0 || !named)
                return fail(x, -EBADMSG, "%s has no id", path);
        if (sequence && !json_string_equal(&x->json, &id, "A"))
                return fail(x, -EBADMSG, "%s is a sequence other than A", path);

        *ret = (Piece) { .sequence = sequence, .name = id, .special = SIZE_MAX };
        return 0;
}

static int read_special_token(Reader *x, const char *path, SpecialSpec *s) {
        static const char * const keys[] = { "id", "ids", "tokens", NULL };
        unsigned seen = 0;
        JsonString key;
        size_t n = 0;
        int r;

        r = enter_object(x, path);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                char member[PATH_LENGTH_MAX];
                int k = key_index(x, &key, keys);
                size_t m = 0;

                r = see(x, &seen, k, path, keys);
                if (r < 0)
                        return r;
                if (k <= 0) {
                        /* "id" repeats the key. */
                        r = json_read_value(&x->json, NULL, NULL, NULL);
                        continue;
                }
                make_path(member, "%s.%s", path, keys[k]);
                r = enter_array(x, member);
                while (r >= 0 && (r = json_array_next(&x->json, &m)) > 0) {
                        char element[PATH_LENGTH_MAX];

                        if (m > TOKENIZER_SPECIAL_IDS_MAX)
                                return fail(x, -EBADMSG, "%s has more than %u elements", member,
                                            TOKENIZER_SPECIAL_IDS_MAX);
                        make_path(element, "%s[%zu]", member, m - 1);
                        if (k == 1)
                                r = read_id(x, element, &s->ids[s->n_ids++]);
                        else
                                r = read_string(x, element, &s->tokens[s->n_tokens++]);
                }
        }
        if (r < 0)
                return r;
        if (!(seen & 2U) || !(seen & 4U))
                return fail(x, -EBADMSG, "%s.%s is missing", path, !(seen & 2U) ? "ids" : "tokens");
        if (s->n_ids != s->n_tokens)
                return fail(x, -EBADMSG, "%s has %zu ids but %zu tokens", path, s->n_ids, s->n_tokens);
        return 0;
}

static int read_template_processing(Reader *x) {
        static const char * const keys[] = { "single", "special_tokens", NULL };
        unsigned seen = 0;
        JsonString key;
        size_t n = 0;
        int r;

        r = enter_object(x, "post_processor");
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                int k = key_index(x, &key, keys);
                size_t m = 0;

                r = see(x, &seen, k, "post_processor", keys);
                if (r < 0)
                        return r;
                if (k < 0) {
                        /* "pair", for pairs of texts, which embeddings do not use. */
                        r = json_read_value(&x->json, NULL, NULL, NULL);
                        continue;
                }
                if (k == 0) {
                        r = enter_array(x, "post_processor.single");
                        while (r >= 0 && (r = json_array_next(&x->json, &m)) > 0) {
                                char element[PATH_LENGTH_MAX];

                                if (m > TEMPLATE_PIECES_MAX)
                                        return fail(x, -EBADMSG, "post_processor.single has more than %u pieces",
                                                    TEMPLATE_PIECES_MAX);
                                make_path(element, "post_processor.single[%zu]", m - 1);
                                r = read_piece(x, element, &x->pieces[x->n_pieces++]);
                        }
                        continue;
                }

                r = enter_object(x, "post_processor.special_tokens");
                while (r >= 0 && (r = json_object_next(&x->json, &m, &key)) > 0) {
                        char element[PATH_LENGTH_MAX];

                        if (m > SPECIAL_TOKENS_MAX)
                                return fail(x, -EBADMSG, "post_processor.special_tokens has more than %u entries",
                                            SPECIAL_TOKENS_MAX);
                        if (!x->specials) {
                                x->specials = calloc(SPECIAL_TOKENS_MAX, sizeof *x->specials);
                                if (!x->specials)
                                        return -ENOMEM;
                        }
                        make_path(element, "post_processor.special_tokens entry %zu", m - 1);
                        x->specials[x->n_specials] = (SpecialSpec) { .name = key };
                        r = read_special_token(x, element, &x->specials[x->n_specials++]);
                }
        }
        if (r < 0)
                return r;
        if (!(seen & 1U))
                return fail(x, -EBADMSG, "post_processor.single is missing");
        return 0;
}

static int read_post_processor(Reader *x) {
        static const char * const unsupported[] = { "RobertaProcessing", "ByteLevel", "Sequence", NULL };
        JsonString type;
        int r;

        r = peek_type(x, "post_processor", &type);
        if (r < 0)
                return r;
        if (r == 0)
                return fail(x, -EBADMSG, "post_processor has no type");
        x->have_post_processor = true;
        if (json_string_equal(&x->json, &type, "TemplateProcessing"))
                return read_template_processing(x);
        if (json_string_equal(&x->json, &type, "BertProcessing"))
                return read_bert_processing(x);
        return unsupported_type(x, "post_processor", &type, unsupported);
}

static int read_added_token(Reader *x, const char *path, AddedSpec *a) {
        static const char * const keys[] = { "id", "content", "single_word", "lstrip", "rstrip", "normalized",
                                             "special", NULL };
        unsigned seen = 0;
        bool special;
        JsonString key;
        uint32_t id;
        size_t n = 0;
        int r;

        /* The reference's defaults where a flag is left out. */
        *a = (AddedSpec) { .normalized = true };

        r = enter_object(x, path);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                char member[PATH_LENGTH_MAX];
                int k = key_index(x, &key, keys);

                r = see(x, &seen, k, path, keys);
                if (r < 0)
                        return r;
                if (k < 0) {
                        r = json_read_value(&x->json, NULL, NULL, NULL);
                        continue;
                }
                make_path(member, "%s.%s", path, keys[k]);
                switch (k) {
                case 0:
                        /* Checked, not used: the reference gives an added token
                         * the id the vocabulary gives it, if any. */
                        r = read_id(x, member, &id);
                        break;
                case 1:
                        r = read_string(x, member, &a->content);
                        break;
                case 2:
                        r = read_bool(x, member, &a->single_word);
                        break;
                case 3:
                        r = read_bool(x, member, &a->lstrip);
                        break;
                case 4:
                        r = read_bool(x, member, &a->rstrip);
                        break;
                case 5:
                        r = read_bool(x, member, &a->normalized);
                        break;
                case 6:
                        r = read_bool(x, member, &special);
                        break;
                }
        }
        if (r < 0)
                return r;
        if (!(seen & 1U) || !(seen & 2U))
                return fail(x, -EBADMSG, "%s.%s is missing", path, !(seen & 1U) ? "id" : "content");
        return 0;
}

static int read_added_tokens(Reader *x) {
        size_t n = 0;
        int r;

        r = enter_array(x, "added_tokens");
        while (r >= 0 && (r = json_array_next(&x->json, &n)) > 0) {
                char element[PATH_LENGTH_MAX];

                if (n > TOKENIZER_ADDED_TOKENS_MAX)
                        return fail(x, -EBADMSG, "added_tokens has more than %u entries", TOKENIZER_ADDED_TOKENS_MAX);
                if (!x->added) {
                        x->added = calloc(TOKENIZER_ADDED_TOKENS_MAX, sizeof *x->added);
                        if (!x->added)
                                return -ENOMEM;
                }
                make_path(element, "added_tokens[%zu]", n - 1);
                r = read_added_token(x, element, &x->added[x->n_added++]);
        }
        return r;
}

static int read_vocab(Reader *x) {
        JsonString key;
        size_t n = 0;
        int r;

        r = enter_object(x, "model.vocab");
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                char token[TOKENIZER_TOKEN_MAX + 1], path[PATH_LENGTH_MAX];
                size_t length;
                uint32_t id;

                if (n > TOKENIZER_VOCAB_MAX)
                        return fail(x, -EBADMSG, "model.vocab has more than %u entries", TOKENIZER_VOCAB_MAX);
                make_path(path, "model.vocab entry %zu", n - 1);
                r = read_id(x, path, &id);
                if (r < 0)
                        return r;
                if (json_string_length(&x->json, &key) > TOKENIZER_TOKEN_MAX)
                        return fail(x, -EBADMSG, "%s is longer than %u bytes", path, TOKENIZER_TOKEN_MAX);
                length = decode(x, &key, token);
                r = token_set_add(&x->t->vocab, token, length, id);
        }
        return r;
}

static int read_model(Reader *x) {
        static const char * const keys[] = { "type", "unk_token", "continuing_subword_prefix",
                                             "max_input_chars_per_word", "vocab", NULL };
        static const char * const unsupported[] = { "BPE", "Unigram", "WordLevel", NULL };
        unsigned seen = 0;
        JsonString key, type;
        size_t n = 0;
        int r;

        r = peek_type(x, "model", &type);
        if (r < 0)
                return r;
        /* The reference takes a model without a type for a WordPiece. */
        if (r > 0 && !json_string_equal(&x->json, &type, "WordPiece"))
                return unsupported_type(x, "model", &type, unsupported);

        r = enter_object(x, "model");
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                int k = key_index(x, &key, keys);

                r = see(x, &seen, k, "model", keys);
                if (r < 0)
                        return r;
                switch (k) {
                case 1:
                        r = read_string(x, "model.unk_token", &x->unk_token);
                        break;
                case 2:
                        r = read_string(x, "model.continuing_subword_prefix", &x->subword_prefix);
                        break;
                case 3:
                        r = read_kind(x, "model.max_input_chars_per_word", JSON_WHOLE, &x->t->max_chars_per_word,
                                      NULL, NULL);
                        break;
                case 4:
                        r = read_vocab(x);
                        break;
                default:
                        r = json_read_value(&x->json, NULL, NULL, NULL);
                }
        }
        if (r < 0)
                return r;
        for (int k = 1; keys[k]; k++)
                if (!(seen & (1U << k)))
                        return fail(x, -EBADMSG, "model.%s is missing", keys[k]);
        return 0;
}

static int read_top(Reader *x) {
        static const char * const keys[] = { "version", "truncation", "padding", "added_tokens", "normalizer",
                                             "pre_tokenizer", "post_processor", "decoder", "model", NULL };
        unsigned seen = 0;
        JsonString key;
        size_t n = 0;
        int r;

        r = json_skip_whitespace(&x->json);
        if (r < 0)
                return r;
        if (json_peek(&x->json) != '{') {
                JsonKind kind;

                r = json_read_value(&x->json, &kind, NULL, NULL);
                if (r < 0)
                        return r;
                return fail(x, -EBADMSG, "the file is %s, not an object", json_kind_to_string(kind));
        }

        r = json_enter(&x->json);
        while (r >= 0 && (r = json_object_next(&x->json, &n, &key)) > 0) {
                int k = key_index(x, &key, keys);
                JsonString version;
                bool null = json_peek(&x->json) == 'n';

                r = see(x, &seen, k, NULL, keys);
                if (r < 0)
                        return r;
                switch (k) {
                case 0:
                        r = read_string(x, "version", &version);
                        if (r >= 0 && !json_string_equal(&x->json, &version, "1.0"))
                                return fail(x, -EOPNOTSUPP, "version is not 1.0");
                        break;
                case 3:
                        r = read_added_tokens(x);
                        break;
                case 4:
                        r = null ? json_read_value(&x->json, NULL, NULL, NULL) : read_normalizer(x, "normalizer");
                        break;
                case 5:
                        r = null ? json_read_value(&x->json, NULL, NULL, NULL) : read_pre_tokenizer(x);
                        break;
                case 6:
                        r = null ? json_read_value(&x->json, NULL, NULL, NULL) : read_post_processor(x);
                        break;
                case 8:
                        r = read_model(x);
                        break;
                default:
                        r = json_read_value(&x->json, NULL, NULL, NULL);
                }
        }
        if (r < 0)
                return r;

        r = json_skip_whitespace(&x->json);
        if (r < 0)
                return r;
        if (x->json.pos < x->json.length)
                return json_syntax_error_at(&x->json, x->json.pos, "more than whitespace after the JSON value");
        if (!(seen & (1U << 8)))
                return fail(x, -EBADMSG, "the file has no model");
        return 0;
}

/* ---- putting it together ---- */

static int compare_ids(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;

        return x < y ? -1 : x > y ? 1 : 0;
}

static int resolve_vocab(Reader *x) {
        Tokenizer *t = x->t;
        char token[TOKENIZER_TOKEN_MAX + 1];
        uint32_t previous;
        size_t i, length;
        _cleanup_free_ uint32_t *ids = NULL;

        if (t->vocab.n == 0)
                return fail(x, -EBADMSG, "model.vocab is empty");
        if (token_set_build(&t->vocab, &previous) != SIZE_MAX)
                return fail(x, -EBADMSG, "model.vocab has the same token twice (ids %" PRIu32 " and another)",
                            previous);

        ids = malloc(t->vocab.n * sizeof *ids);
        if (!ids)
                return -ENOMEM;
        for (i = 0; i < t->vocab.n; i++)
                ids[i] = token_set_entries(&t->vocab)[i].id;
        qsort(ids, t->vocab.n, sizeof *ids, compare_ids);
        for (i = 1; i < t->vocab.n; i++)
                if (ids[i] == ids[i - 1])
                        return fail(x, -EBADMSG, "model.vocab gives id %" PRIu32 " to two tokens", ids[i]);
        t->id_limit = ids[t->vocab.n - 1] + 1;

        length = decode(x, &x->unk_token, token);
        i = token_set_find(&t->vocab, token, length);
        if (i == SIZE_MAX)
                return fail(x, -EBADMSG, "model.unk_token is not in model.vocab");
        t->unk_id = token_set_entries(&t->vocab)[i].id;

        /* The entries that begin with the prefix of later pieces. */
        length = decode(x, &x->subword_prefix, token);
        t->subword_lo = 0;
        t->subword_hi = t->vocab.n;
        for (i = 0; i < length; i++)
                token_set_narrow(&t->vocab, &t->subword_lo, &t->subword_hi, i, (uint8_t) token[i]);
        t->subword_depth = length;
        return 0;
}

/* Gives each added token its id as the reference does: the vocabulary's
 * if it has the token, else the next one after the vocabulary, in order;
 * then sorts them into the sets that find them in text. */
static int resolve_added(Reader *x) {
        Tokenizer *t = x->t;
        uint32_t next_id = (uint32_t) t->vocab.n, duplicate;
        _cleanup_(scratch_done) Scratch scratch = {};
        int r;

        t->added = calloc(MAX(x->n_added, (size_t) 1), sizeof *t->added);
        if (!t->added)
                return -ENOMEM;

        for (size_t i = 0; i < x->n_added; i++) {
                const AddedSpec *a = &x->added[i];
                char content[TOKENIZER_TOKEN_MAX + 1];
                size_t length = decode(x, &a->content, content), k, normalized_length;
                AddedToken *added;

                /* As the reference does, an empty one is left out. */
                if (length == 0)
                        continue;

                added = &t->added[t->n_added];
                *added = (AddedToken) {
                        .single_word = a->single_word,
                        .lstrip = a->lstrip,
                        .rstrip = a->rstrip,
                };
                k = token_set_find(&t->vocab, content, length);
                if (k != SIZE_MAX)
                        added->id = token_set_entries(&t->vocab)[k].id;
                else {
                        if (next_id >= TOKENIZER_ID_LIMIT)
                                return fail(x, -EBADMSG, "added_tokens[%zu] would have an id beyond the largest allowed",
                                            i);
                        added->id = next_id++;
                }
                t->id_limit = MAX(t->id_limit, added->id + 1);

                r = token_set_add(&t->added_contents, content, length, added->id);
                if (r < 0)
                        return r;
                if (!a->normalized)
                        r = token_set_add(&t->added_raw, content, length, (uint32_t) t->n_added);
                else {
                        r = tokenizer_normalize(t, &scratch, (const uint8_t *) content, length, &normalized_length);
                        if (r < 0)
                                return r;
                        if (normalized_length == 0)
                                return fail(x, -EOPNOTSUPP, "added_tokens[%zu] is nothing once normalized", i);
                        r = token_set_add(&t->added_normalized, scratch.utf8, normalized_length,
                                          (uint32_t) t->n_added);
                }
                if (r < 0)
                        return r;
                t->n_added++;
        }

        if (token_set_build(&t->added_contents, &duplicate) != SIZE_MAX)
                return fail(x, -EBADMSG, "added_tokens has the same content twice");
        (void) token_set_build(&t->added_raw, &duplicate);
        if (token_set_build(&t->added_normalized, &duplicate) != SIZE_MAX)
                return fail(x, -EOPNOTSUPP, "added_tokens has two tokens that are the same once normalized");

        /* Normalizing the text a piece at a time is only the same as
         * normalizing it whole when words are split at the places it is
         * cut, and no added token matched after normalizing spans them. */
        t->chunked = t->split_words && t->added_normalized.n == 0;
        return 0;
}

static int resolve_special(Reader *x, const SpecialSpec *s, const char *what, bool before) {
        Tokenizer *t = x->t;

        for (size_t i = 0; i < s->n_ids; i++) {
                char token[TOKENIZER_TOKEN_MAX + 1];
                size_t length = decode(x, &s->tokens[i], token);
                int64_t id;

                token[length] = '\0';
                id = tokenizer_token_to_id(t, token);
                if (id < 0)
                        return fail(x, -EBADMSG, "%s: token %zu is not in the vocabulary", what, i);
                if ((uint32_t) id != s->ids[i])
                        return fail(x, -EBADMSG, "%s gives id %" PRIu32 " to a token whose id is %" PRId64, what,
                                    s->ids[i], id);
                if (t->n_before + t->n_after >= TOKENIZER_SPECIAL_IDS_MAX)
                        return fail(x, -EBADMSG, "post_processor adds more than %u ids", TOKENIZER_SPECIAL_IDS_MAX);
                if (before)
                        t->before[t->n_before++] = s->ids[i];
                else
                        t->after[t->n_after++] = s->ids[i];
        }
        return 0;
}

static int resolve_post_processor(Reader *x) {
        bool seen_sequence = false;
        int r;

        if (!x->have_post_processor)
                return 0;

        for (size_t i = 0; i < x->n_pieces; i++) {
                const Piece *p = &x->pieces[i];
                size_t special = p->special;

                if (p->sequence) {
                        if (seen_sequence)
                                return fail(x, -EOPNOTSUPP, "post_processor.single has the text more than once");
                        seen_sequence = true;
                        continue;
                }
                if (special == SIZE_MAX)
                        for (size_t k = 0; k < x->n_specials; k++)
                                if (json_string_compare(&x->json, p->name.begin, p->name.end - p->name.begin,
                                                        p->name.escaped, x->specials[k].name.begin,
                                                        x->specials[k].name.end - x->specials[k].name.begin,
                                                        x->specials[k].name.escaped) == 0) {
                                        special = k;
                                        break;
                                }
                if (special == SIZE_MAX)
                        return fail(x, -EBADMSG,
                                    "post_processor.single[%zu] names a token that post_processor.special_tokens does not define",
                                    i);
                if (p->what)
                        r = resolve_special(x, &x->specials[special], p->what, !seen_sequence);
                else {
                        char what[PATH_LENGTH_MAX];

                        make_path(what, "post_processor.special_tokens entry %zu", special);
                        r = resolve_special(x, &x->specials[special], what, !seen_sequence);
                }
                if (r < 0)
                        return r;
        }
        if (!seen_sequence)
                return fail(x, -EBADMSG, "post_processor.single does not have the text");
        return 0;
}

static int parse(const char *text, size_t length, tokenizer_cancel_t cancel, void *userdata, Tokenizer **ret,
                 char detail[static DETAIL_MAX]) {
        _cleanup_(tokenizer_freep) Tokenizer *t = NULL;
        UErrorCode error = U_ZERO_ERROR;
        Reader x;
        int r;

        detail[0] = '\0';

        /* Without its data ICU would leave every character as it is. */
        (void) unorm2_getNFDInstance(&error);
        if (U_FAILURE(error)) {
                snprintf(detail, DETAIL_MAX, "ICU's normalization data cannot be loaded");
                return -ELIBACC;
        }

        t = calloc(1, sizeof *t);
        if (!t)
                return -ENOMEM;

        x = (Reader) {
                .json = {
                        .text = (const uint8_t *) text,
                        .length = length,
                        .cancel = cancel,
                        .userdata = userdata,
                        .end_of_text = "the end of the file where a value must be",
                },
                .t = t,
        };

        r = read_top(&x);
        if (r >= 0 && cancel && cancel(userdata))
                r = -ECANCELED;
        if (r >= 0)
                r = resolve_vocab(&x);
        if (r >= 0)
                r = resolve_added(&x);
        if (r >= 0)
                r = resolve_post_processor(&x);

        if (r == -EBADMSG && x.detail[0] == '\0')
                snprintf(x.detail, sizeof x.detail, "not valid JSON: %s at byte %zu", x.json.syntax_error,
                         x.json.syntax_error_at);
        free(x.added);
        free(x.specials);
        if (r < 0) {
                memcpy(detail, x.detail, DETAIL_MAX);
                return r;
        }

        *ret = TAKE_PTR(t);
        return 0;
}

static int set_error(char **ret_error, int error, const char *name, const char *detail) {
        char *message = NULL;

        if (!ret_error || detail[0] == '\0')
                return error;
        if (name ? asprintf(&message, "%s: %s.", name, detail) < 0 : asprintf(&message, "%s.", detail) < 0)
                return -ENOMEM;
        free(*ret_error);
        *ret_error = message;
        return error;
}

int tokenizer_parse(const char *text, size_t length, tokenizer_cancel_t cancel, void *userdata, Tokenizer **ret,
                    char **ret_error) {
        char detail[DETAIL_MAX];
        int r;

        assert(text || length == 0);
        assert(ret);

        r = parse(text, length, cancel, userdata, ret, detail);
        if (r < 0)
                return set_error(ret_error, r, NULL, detail);
        return 0;
}

int tokenizer_load_fd(int fd, const char *name, tokenizer_cancel_t cancel, void *userdata, Tokenizer **ret,
                      char **ret_error) {
        _cleanup_(json_buffer_free) JsonBuffer text = {};
        char detail[DETAIL_MAX];
        size_t done = 0;
        struct stat st;
        int r;

        assert(fd >= 0);
        assert(name);
        assert(ret);

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode)) {
                snprintf(detail, sizeof detail, "not a regular file");
                return set_error(ret_error, -EBADMSG, name, detail);
        }
        if ((uint64_t) st.st_size > TOKENIZER_FILE_SIZE_MAX) {
                snprintf(detail, sizeof detail, "larger than %" PRIu64 " MiB", TOKENIZER_FILE_SIZE_MAX >> 20);
                return set_error(ret_error, -EFBIG, name, detail);
        }

        r = json_buffer_resize(&text, MAX((size_t) st.st_size, (size_t) 1));
        if (r < 0)
                return r;
        while (done < text.size) {
                ssize_t n;

                if (cancel && cancel(userdata))
                        return -ECANCELED;
                n = pread(fd, (uint8_t *) text.data + done, MIN(text.size - done, (size_t) 1 << 20), (off_t) done);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                done += (size_t) n;
        }

        r = parse(text.data, MIN(done, (size_t) st.st_size), cancel, userdata, ret, detail);
        if (r < 0)
                return set_error(ret_error, r, name, detail);
        return 0;
}
