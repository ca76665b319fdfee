/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The tokenizer of BERT-family models, run from their tokenizer.json as the
 * Hugging Face tokenizers library (0.22) runs it, id for id:
 *
 *   - added tokens ("added_tokens": [CLS], [MASK], ...) are found in the
 *     text first, leftmost-longest, and kept whole (single_word, lstrip,
 *     rstrip and normalized honoured);
 *   - the rest is normalized: a BertNormalizer (clean_text,
 *     handle_chinese_chars, strip_accents, where null follows lowercase,
 *     and lowercase), or a Sequence of BertNormalizer, NFD, StripAccents
 *     and Lowercase;
 *   - split into words by a BertPreTokenizer (at whitespace, and around
 *     each punctuation character), or not at all when there is none;
 *   - each word into WordPiece pieces: greedy longest match first from the
 *     start, later pieces with the continuing_subword_prefix ("##"); a
 *     word that cannot be matched whole, or longer than
 *     max_input_chars_per_word characters, is one unk_token;
 *   - truncated to the maximum length less the special tokens, from the
 *     right or from the left, and put between the special tokens of a
 *     TemplateProcessing or BertProcessing post-processor ([CLS] ... [SEP]).
 *
 * Anything else in the file ("decoder", "padding", "truncation" and
 * unknown members) is read past. Other normalizers, pre-tokenizers,
 * models and post-processors are refused as not supported.
 *
 * Text that is not valid UTF-8 is read as Rust's String::from_utf8_lossy()
 * reads it: each maximal ill-formed sequence is one U+FFFD, which
 * clean_text then removes. NUL bytes are characters like any other (and
 * removed by clean_text).
 *
 * Unicode follows the reference's own data, which is older than the
 * current Unicode for some properties: see tokenizer-unicode.h.
 *
 * A Tokenizer is immutable once loaded: any number of threads may encode
 * with one at the same time. Encoding takes time and memory linear in the
 * text (a few times its size for the longest run without whitespace or
 * ASCII punctuation, far less for ordinary text), and stops early when the
 * rest of the text cannot change the result.
 *
 * The file is read in place (json-scan.h), in one pass: what is kept is
 * the vocabulary (its strings, 12 bytes per entry, and a table of 1 KiB).
 * Messages never quote the file: they name members by their path in the
 * JSON ("model.vocab") and entries by their index, since they may be shown
 * to every local user while the file may be readable by its owner only. */

/* Bounds on what a tokenizer.json may make us read or hold. */
#define TOKENIZER_FILE_SIZE_MAX (UINT64_C(64) * 1024 * 1024)
#define TOKENIZER_VOCAB_MAX 1000000U         /* entries of model.vocab */
#define TOKENIZER_TOKEN_MAX 1024U            /* bytes of one vocabulary entry or added token */
#define TOKENIZER_ADDED_TOKENS_MAX 10000U
#define TOKENIZER_NORMALIZERS_MAX 16U        /* in a Sequence */
#define TOKENIZER_SPECIAL_IDS_MAX 16U        /* ids the post-processor adds */
/* Ids are below this, so that they fit int32_t with room to spare. */
#define TOKENIZER_ID_LIMIT (UINT32_C(1) << 30)

typedef struct Tokenizer Tokenizer;

/* Asked now and then while a file is read (about once per MiB); returning
 * true stops the load, which then returns -ECANCELED. */
typedef bool (*tokenizer_cancel_t)(void *userdata);

/* Reads a tokenizer.json from fd (a regular file of at most
 * TOKENIZER_FILE_SIZE_MAX bytes, read with pread() from offset 0). name
 * is how messages call the file ("org/model/tokenizer.json").
 * Returns 0 and a new Tokenizer in *ret, or
 *   -EBADMSG     the file is not a valid tokenizer.json,
 *   -EOPNOTSUPP  it is valid but uses a part this tokenizer does not run,
 *   -EFBIG       it is larger than TOKENIZER_FILE_SIZE_MAX,
 *   -ECANCELED   cancel said so,
 *   -ELIBACC     ICU's data cannot be loaded,
 *   another negative errno on I/O failure or lack of memory.
 * For -EBADMSG, -EOPNOTSUPP, -EFBIG and -ELIBACC, *ret_error (if ret_error is not
 * NULL) receives a message for people that names the file and says what is
 * wrong. */
int tokenizer_load_fd(int fd, const char *name, tokenizer_cancel_t cancel, void *userdata, Tokenizer **ret,
                      char **ret_error);

/* The same from the file's text (length bytes, need not be
 * NUL-terminated); messages do not name the file. For tests and
 * fuzzing. */
int tokenizer_parse(const char *text, size_t length, tokenizer_cancel_t cancel, void *userdata, Tokenizer **ret,
                    char **ret_error);

/* Returns NULL. */
Tokenizer *tokenizer_free(Tokenizer *t);
static inline void tokenizer_freep(Tokenizer **t) {
        *t = tokenizer_free(*t);
}

typedef enum TokenizerTruncation {
        TOKENIZER_TRUNCATE_NONE,   /* a text longer than the maximum is an error */
        TOKENIZER_TRUNCATE_RIGHT,  /* keep the first tokens */
        TOKENIZER_TRUNCATE_LEFT,   /* keep the last tokens */
} TokenizerTruncation;

/* Encodes text (length bytes, UTF-8 or not, need not be NUL-terminated)
 * into at most max_ids ids, the special tokens included, written to ids[]
 * (room for max_ids). Returns 0 and the number written in *ret_n_ids, or
 *   -EINVAL  max_ids is smaller than tokenizer_n_special_ids(),
 *   -E2BIG   truncation is TOKENIZER_TRUNCATE_NONE and the text makes more
 *            than max_ids ids (nothing useful in ids[] then),
 *   -ENOMEM.
 * Ids are below tokenizer_id_limit(). */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t length, TokenizerTruncation truncation,
                     int32_t *ids, size_t max_ids, size_t *ret_n_ids);

/* Memory the tokenizer holds (its vocabulary and added tokens), to be
 * charged to the model. */
uint64_t tokenizer_bytes(const Tokenizer *t);

/* How many ids the post-processor adds around every text (2 for
 * [CLS] ... [SEP]). */
size_t tokenizer_n_special_ids(const Tokenizer *t);

/* One more than the largest id encoding can give: a model's embedding
 * table needs at least that many rows. */
uint32_t tokenizer_id_limit(const Tokenizer *t);

/* The id of a vocabulary entry or added token, or -ENOENT. For callers
 * that need one by name ("[PAD]"). */
int64_t tokenizer_token_to_id(const Tokenizer *t, const char *token);
