#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Writes the text-level fixtures of Embed, tests/fixtures/embed/: small
random BERT models in folders exactly as they sit in a store (weights,
config.json, a WordPiece tokenizer.json whose vocabulary fits the model,
sentence-transformers' files where the variant has them), and
expected.json: for each case (a model, texts, Embed's options) the vectors
the reference computes, or the error Embed must give.

The reference, step by step as sentence-transformers runs a model:
  - the prompt (the option prompt_name, or the model's default_prompt_name)
    is put before each text, which is then stripped of surrounding
    whitespace, and lowercased with Python's str.lower() if
    sentence_bert_config.json says do_lower_case;
  - the Hugging Face tokenizers library's Rust core (npm
    @anush008/tokenizers, through tests/tools/reference-encode.js) encodes
    it with the model's tokenizer.json, truncated to the model's maximum
    length (max_seq_length, at most max_position_embeddings) from the side
    truncation_direction names;
  - the forward pass and pooling of tests/tools/make-bert-fixtures.py
    (BertModel's computation in torch, float64, on the weights exactly as
    stored, checked there against torch's own TransformerEncoderLayer);
  - the first `dimensions` components kept, then L2 normalization if
    normalizing (the option normalize, by default whether the model has a
    Normalize module), as the issue defines the options.

Needs Node with the reference installed, and Debian's python3-torch; the
tests need neither (they read what this wrote):
    apt-get install nodejs npm python3-torch
    npm install --prefix tests/tools --no-save @anush008/tokenizers@0.6.0
Run from anywhere:  tests/tools/make-embed-fixtures.py
The output is the same on every run (fixed seeds, sorted vocabulary)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import unicodedata

import torch
import torch.nn.functional as F

TOOLS = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(TOOLS, "..", "fixtures", "embed"))
GENERATOR = "tests/tools/make-embed-fixtures.py"

# The forward pass, pooling, weights and writers of the BERT fixtures: one
# reference for both sets.
_spec = importlib.util.spec_from_file_location("make_bert_fixtures", os.path.join(TOOLS, "make-bert-fixtures.py"))
bert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bert)

# The bounds for a vector computed by mpoold against these.
COSINE_MIN = 0.99999
ABS_ERROR_MAX = 1e-4
# And for the lower precisions of a load, against the F32 reference, on
# the models whose weights are moderate enough to hold them.
PRECISION_COSINE_MIN = {"f16": 0.9999, "q8": 0.995, "q4": 0.97}

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"

# ---- the texts ----

LONG = ("The history of natural language processing generally started in the 1950s, although work can be "
        "found from earlier periods. In 1950, Alan Turing published an article titled \"Computing Machinery "
        "and Intelligence\" which proposed what is now called the Turing test as a criterion of intelligence. "
        "The Georgetown experiment in 1954 involved fully automatic translation of more than sixty Russian "
        "sentences into English.")

TEXTS = {
    "ascii": "Hello world, the quick brown fox jumps over the lazy dog.",
    "cased": "HELLO World hello wORLD Quick QUICK",
    "punctuation": "Wait... what?! (yes) [no] {maybe} a-b_c d/e \"quoted\" 'single' #hash @at $5 100% ;:",
    "accents": "Café naïve résumé Ångström façade Über crème brûlée ÉCOLE",
    "cjk": "我喜欢自然语言处理。北京大学 東京tokyo大阪osaka",
    "japanese-korean": "ひらがなカタカナ 한국어 텍스트",
    # Characters the vocabulary lacks, a word that only partly matches, and
    # a word longer than max_input_chars_per_word (100): each an [UNK].
    "unknown": "snow \u2603 man \u02ac\u02ac xyzzy playing " + "z" * 120,
    "long": LONG,
    "empty": "",
    "spaces": "  \t lots   of\n\nspace  ",
}
# Characters kept out of the vocabulary for the "unknown" text.
EXCLUDED = {"\u2603", "\u02ac"}

# ---- the vocabulary ----

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

WORDS = [
    "the", "quick", "brown", "fox", "jump", "##s", "over", "lazy", "dog", "hello", "world", "wait", "what",
    "yes", "no", "may", "##be", "quote", "##d", "single", "hash", "at", "cafe", "café", "naive", "resume",
    "résumé", "facade", "uber", "über", "creme", "crème", "ecole", "école", "play", "##ing", "##ed", "##er",
    "history", "of", "natural", "language", "processing", "generally", "started", "in", "1950", "although",
    "work", "can", "be", "found", "from", "earlier", "periods", "alan", "turing", "published", "an",
    "article", "titled", "computing", "machinery", "and", "intelligence", "which", "proposed", "is", "now",
    "called", "test", "as", "a", "criterion", "experiment", "involved", "fully", "automatic", "translation",
    "more", "than", "sixty", "russian", "sentences", "into", "english", "tokyo", "osaka", "query", "passage",
    "snow", "man", "lots", "space", "The", "Hello", "World", "HELLO", "Turing", "Alan", "English",
    "##ly", "##tion", "##al", "##ment",
]


def build_vocab():
    """Special tokens, every character of the texts (as a first piece and as
    a later one) in the forms lowercasing and accent stripping may leave,
    words, and the ASCII range: about 600 entries, in a fixed order."""
    vocab = {}

    def add(token):
        if token not in vocab:
            vocab[token] = len(vocab)

    for s in SPECIALS:
        add(s)
    for i in range(10):
        add("[unused%d]" % i)
    chars = set()
    for text in list(TEXTS.values()) + ["query: ", "passage: "]:
        for form in (text, text.lower(), unicodedata.normalize("NFD", text),
                     unicodedata.normalize("NFD", text.lower())):
            chars.update(form)
    for c in sorted(chars):
        # Whitespace is never a word, control characters are not in real
        # vocabularies, combining marks alone are left to [UNK].
        if c.isspace() or unicodedata.category(c) in ("Cc", "Mn") or c in EXCLUDED:
            continue
        add(c)
        add("##" + c)
    for w in WORDS:
        add(w)
    for c in range(0x21, 0x7f):
        add(chr(c))
        add("##" + chr(c))
    return vocab


VOCAB = build_vocab()


def tokenizer_json(lowercase):
    """A tokenizer.json as BERT models ship it: a BertNormalizer (accents
    stripped when lowercasing, as strip_accents null says), a
    BertPreTokenizer, WordPiece and [CLS] ... [SEP]."""
    def added(token):
        return {"id": VOCAB[token], "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True}

    def special(token):
        return {"id": token, "ids": [VOCAB[token]], "tokens": [token]}

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(s) for s in SPECIALS],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": lowercase},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": special("[CLS]"), "[SEP]": special("[SEP]")},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": VOCAB},
    }


# ---- the models ----

PROMPTS = {
    "prompts": {"query": "query: ", "passage": "passage: ", "plain": ""},
    "default_prompt_name": "query",
    "similarity_fn_name": "cosine",
    "__version__": {"sentence_transformers": "3.0.1", "transformers": "4.41.0", "pytorch": "2.3.0"},
}


def shape(hidden=32, layers=2, heads=4, intermediate=64, positions=64, types=2, eps=1e-12):
    # vocab_size above the vocabulary's length, as models often have: rows
    # the tokenizer never gives are harmless.
    return dict(vocab=len(VOCAB) + 7, hidden=hidden, layers=layers, heads=heads, intermediate=intermediate,
                positions=positions, types=types, eps=eps)


# Each model: its shape, how the weights are stored and named, its
# tokenizer, and its sentence-transformers files (modules None: a bare
# BERT folder, which gets mean pooling and no normalization).
MODELS = [
    {
        # all-MiniLM's layout; projections at half strength so that, like
        # a trained model, it holds the lower precisions' bounds.
        "name": "f32-mean-normalize",
        "config": shape(positions=64), "scale": 0.5,
        "dtype": "F32", "prefix": "", "extra": [],
        "lowercase_tokenizer": True,
        "modules": "with-normalize", "pooling": "mean",
        "sentence_bert_config": {"max_seq_length": 32, "do_lower_case": False},
        "precisions": True,
    },
    {
        # A cased tokenizer, F16 weights under "bert." with a pooler and a
        # masked-LM head that Embed does not use, CLS pooling.
        "name": "f16-prefix-cls-normalize",
        "config": shape(hidden=24, heads=3, intermediate=48, positions=32, types=1, eps=1e-5),
        "dtype": "F16", "prefix": "bert.", "extra": ["pooler", "mlm"],
        "lowercase_tokenizer": False,
        "modules": "with-normalize", "pooling": "cls",
        "sentence_bert_config": {"max_seq_length": 24, "do_lower_case": False},
    },
    {
        # E5's and BGE's way: prompts, the default one for queries.
        "name": "bf16-mean-normalize-prompts",
        "config": shape(positions=48),
        "dtype": "BF16", "prefix": "", "extra": [],
        "lowercase_tokenizer": True,
        "modules": "with-normalize", "pooling": "mean",
        "sentence_bert_config": {"max_seq_length": 40, "do_lower_case": False},
        "prompts": PROMPTS,
    },
    {
        # A cased tokenizer lowercased by sentence-transformers
        # (do_lower_case), accents kept; no Normalize module.
        "name": "f32-lowercase-mean",
        "config": shape(intermediate=48, positions=64),
        "dtype": "F32", "prefix": "", "extra": ["pooler"],
        "lowercase_tokenizer": False,
        "modules": "without-normalize", "pooling": "mean",
        "sentence_bert_config": {"max_seq_length": 28, "do_lower_case": True},
    },
    {
        # Weights and tokenizer only: the maximum length is the positions'.
        "name": "f32-bare",
        "config": shape(layers=3, positions=40), "scale": 0.5,
        "dtype": "F32", "prefix": "", "extra": ["position_ids"],
        "lowercase_tokenizer": True,
        "modules": None, "pooling": "mean",
        "precisions": True,
    },
]


def model_facts(m):
    """What Embed's defaults are for the model: pooling, normalization,
    maximum length, lowercasing, prompts."""
    c = m["config"]
    st = m.get("sentence_bert_config", {})
    prompts = m.get("prompts", {})
    return {
        "dtype": m["dtype"],
        "dimensions": c["hidden"],
        "pooling": m["pooling"],
        "normalize": m["modules"] == "with-normalize",
        "max_length": min(c["positions"], st.get("max_seq_length", c["positions"])),
        "do_lower_case": st.get("do_lower_case", False),
        "tokenizer_lowercase": m["lowercase_tokenizer"],
        "prompts": prompts.get("prompts", {}),
        "default_prompt_name": prompts.get("default_prompt_name"),
    }


def write_model(m, seed):
    """The model's folder as it sits in a store; returns the weights widened
    to float64 under BertModel's names, for the reference."""
    c = m["config"]
    g = torch.Generator().manual_seed(seed)
    directory = os.path.join(OUT, m["name"])
    os.makedirs(directory)

    weights = bert.random_weights(c, g, m.get("scale", 1.0))
    files, reference = [], {}
    for name, t in weights.items():
        s, wide = bert.stored(t, m["dtype"])
        files.append((m["prefix"] + name, m["dtype"], s))
        reference[name] = wide
    h = c["hidden"]
    if "pooler" in m["extra"]:
        files.append((m["prefix"] + "pooler.dense.weight", m["dtype"],
                      bert.stored(torch.randn(h, h, generator=g), m["dtype"])[0]))
        files.append((m["prefix"] + "pooler.dense.bias", m["dtype"],
                      bert.stored(torch.randn(h, generator=g), m["dtype"])[0]))
    if "mlm" in m["extra"]:
        files.append(("cls.predictions.bias", m["dtype"],
                      bert.stored(torch.randn(c["vocab"], generator=g), m["dtype"])[0]))
    if "position_ids" in m["extra"]:
        files.append(("embeddings.position_ids", "I64", torch.arange(c["positions"])[None]))
    files.sort(key=lambda f: f[0])
    bert.write_safetensors(os.path.join(directory, "model.safetensors"), files)
    bert.write_json(os.path.join(directory, "config.json"), bert.config_json(c))
    with open(os.path.join(directory, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(m["lowercase_tokenizer"]), f, ensure_ascii=False, indent=1)
        f.write("\n")

    if m["modules"]:
        modules = [bert.MODULES_TRANSFORMER, bert.MODULES_POOLING]
        if m["modules"] == "with-normalize":
            modules.append(bert.MODULES_NORMALIZE)
        bert.write_json(os.path.join(directory, "modules.json"), modules)
        bert.write_json(os.path.join(directory, "1_Pooling", "config.json"), bert.pooling_config(h, m["pooling"]))
    if "sentence_bert_config" in m:
        bert.write_json(os.path.join(directory, "sentence_bert_config.json"), m["sentence_bert_config"])
    if "prompts" in m:
        bert.write_json(os.path.join(directory, "config_sentence_transformers.json"), m["prompts"])
    return reference


# ---- the cases ----

def cases_for(m, facts):
    """(name, text names, options, error index or None) for the model: every
    text with the defaults, then each option on a few."""
    everything = list(TEXTS)
    normalize = facts["normalize"]
    cases = [
        ("default", everything, {}, None),
        ("normalize-%s" % ("off" if normalize else "on"), ["ascii", "cjk", "long"], {"normalize": not normalize},
         None),
        ("normalize-%s" % ("on" if normalize else "off"), ["accents"], {"normalize": normalize}, None),
        ("dimensions", ["ascii", "accents", "empty"], {"dimensions": 8}, None),
        ("dimensions-normalize-%s" % ("off" if normalize else "on"), ["ascii", "punctuation"],
         {"dimensions": 5, "normalize": not normalize}, None),
        ("dimensions-all", ["cjk"], {"dimensions": facts["dimensions"]}, None),
        ("truncation-left", ["long", "ascii", "long-cased"], {"truncation_direction": "left"}, None),
        ("truncation-right", ["long", "unknown"], {"truncation_direction": "right", "truncate": True}, None),
        ("no-truncate", ["ascii", "exact-length", "empty"], {"truncate": False}, None),
        ("no-truncate-too-long", ["ascii", "one-too-long", "empty"], {"truncate": False}, 1),
        ("no-truncate-left", ["long"], {"truncate": False, "truncation_direction": "left"}, 0),
        ("all-options", ["long", "cased"],
         {"normalize": True, "dimensions": 12, "truncation_direction": "left", "truncate": True}, None),
    ]
    if facts["prompts"]:
        cases += [
            ("prompt-passage", ["ascii", "cjk", "long", "empty"], {"prompt_name": "passage"}, None),
            ("prompt-plain", ["ascii", "empty", "spaces"], {"prompt_name": "plain"}, None),
            ("prompt-query", ["ascii"], {"prompt_name": "query"}, None),
            ("prompt-passage-left", ["long"], {"prompt_name": "passage", "truncation_direction": "left"}, None),
            ("prompt-passage-dimensions", ["accents"], {"prompt_name": "passage", "dimensions": 8,
                                                        "normalize": False}, None),
            ("prompt-unknown", ["ascii"], {"prompt_name": "no-such-prompt"}, 0),
        ]
    return cases


def prepared(facts, text, options):
    """The text as sentence-transformers hands it to the tokenizer."""
    name = options.get("prompt_name", facts["default_prompt_name"])
    if name is not None:
        text = facts["prompts"][name] + text
    text = text.strip()
    if facts["do_lower_case"]:
        text = text.lower()
    return text


def reference_ids(tokenizers, requests):
    """The reference's ids for [(tokenizer name, text, max_length or None,
    direction)], in one run of Node."""
    proc = subprocess.run(["node", os.path.join(TOOLS, "reference-encode.js")],
                          input=json.dumps({"tokenizers": tokenizers, "requests": requests}),
                          capture_output=True, text=True, check=False, cwd=TOOLS)
    if proc.returncode != 0:
        sys.exit("reference-encode.js failed:\n" + proc.stderr)
    return json.loads(proc.stdout)["ids"]


def length_texts(name, tokenizer, facts):
    """Texts that make exactly max_length ids, and one more, with the
    model's default prompt: words "a", one id each."""
    counts = range(1, facts["max_length"] + 2)
    candidates = [" ".join(["a"] * n) for n in counts]
    ids = reference_ids({name: tokenizer},
                        [[name, prepared(facts, t, {}), None, "right"] for t in candidates])
    lengths = [len(i) for i in ids]
    exact = lengths.index(facts["max_length"])
    assert lengths[exact + 1] == facts["max_length"] + 1, lengths
    return candidates[exact], candidates[exact + 1]


def embeddings(reference, c, facts, ids, options):
    """The reference vectors for the ids: BertModel, pooling, the first
    `dimensions` components, normalization."""
    with torch.no_grad():
        x, mask = bert.forward(reference, c, ids)
        bert.check_with_torch_layers(reference, c, ids, x, mask)
        mean, cls = bert.pool(x, mask)
        v = mean if facts["pooling"] == "mean" else cls
        v = v[:, : options.get("dimensions", c["hidden"])]
        if options.get("normalize", facts["normalize"]):
            v = F.normalize(v, p=2, dim=1)
    return bert.rows(v)


def make_cases(m, facts, reference):
    name = m["name"]
    tokenizer = json.dumps(tokenizer_json(m["lowercase_tokenizer"]), ensure_ascii=False)
    texts = dict(TEXTS)
    texts["long-cased"] = LONG.upper()
    texts["exact-length"], texts["one-too-long"] = length_texts(name, tokenizer, facts)

    out = []
    for case_name, text_names, options, error_index in cases_for(m, facts):
        case = {"name": "%s/%s" % (name, case_name), "model": name, "options": options,
                "text_names": text_names, "texts": [texts[t] for t in text_names]}
        if error_index is not None:
            # Embed refuses the call; which text is at fault, if one is.
            case["error"] = INVALID_ARGS
            if "prompt_name" not in options:
                case["error_index"] = error_index
                case["inputs"] = [prepared(facts, t, options) for t in case["texts"]]
                whole = reference_ids({name: tokenizer}, [[name, t, None, "right"] for t in case["inputs"]])
                assert [len(i) > facts["max_length"] for i in whole].index(True) == error_index, case["name"]
            out.append(case)
            continue
        inputs = [prepared(facts, t, options) for t in case["texts"]]
        direction = options.get("truncation_direction", "right")
        ids = reference_ids({name: tokenizer}, [[name, t, facts["max_length"], direction] for t in inputs])
        if options.get("truncate", True) is False:
            whole = reference_ids({name: tokenizer}, [[name, t, None, direction] for t in inputs])
            assert whole == ids, case["name"]
        case["inputs"] = inputs
        case["ids"] = ids
        case["embeddings"] = embeddings(reference, m["config"], facts, ids, options)
        out.append(case)
    return out


def distance(a, b):
    """The largest difference between two vectors' common components."""
    return max(abs(x - y) for x, y in zip(a, b))


def check_cases(cases, models):
    """The cases must exercise what they are named for: truncation on both
    sides, [UNK], prompts that change the ids, options that change the
    vectors."""
    by_name = {c["name"]: c for c in cases}
    for c in cases:
        if "ids" not in c:
            continue
        for ids, text in zip(c["ids"], c["texts"]):
            assert ids[0] == VOCAB["[CLS]"] and ids[-1] == VOCAB["[SEP]"], c["name"]
            assert VOCAB["[UNK]"] not in ids[1:-1] or "\u2603" in text, (c["name"], text)
    for model in {c["model"] for c in cases}:
        default = by_name[model + "/default"]
        names = default["text_names"]
        unknown = default["ids"][names.index("unknown")]
        assert unknown.count(VOCAB["[UNK]"]) >= 3, unknown
        left = by_name[model + "/truncation-left"]
        right = by_name[model + "/truncation-right"]
        assert left["ids"][0] != right["ids"][0] and len(left["ids"][0]) == len(right["ids"][0]), model
        # (Batches padded to other lengths differ in float64's last bits.)
        assert distance(right["embeddings"][0], default["embeddings"][names.index("long")]) < 1e-7, model
        # Normalizing after the cut changes the components kept; otherwise
        # they are the first ones of the whole vector.
        moved = distance(by_name[model + "/dimensions"]["embeddings"][0], default["embeddings"][0])
        assert (moved > 1e-3 if models[model]["normalize"] else moved < 1e-7), (model, moved)
        if models[model]["prompts"]:
            passage = by_name[model + "/prompt-passage"]
            assert passage["ids"][0] != default["ids"][0], model
            assert distance(passage["embeddings"][0], default["embeddings"][0]) > 1e-3, model


def main():
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    models, cases = {}, []
    for n, m in enumerate(MODELS):
        reference = write_model(m, 2000 + n)
        facts = model_facts(m)
        if m.get("precisions"):
            facts["precision_cosine_min"] = PRECISION_COSINE_MIN
        models[m["name"]] = facts
        cases += make_cases(m, facts, reference)
        print("wrote", os.path.join(OUT, m["name"]))
    check_cases(cases, models)

    bert.write_json(os.path.join(OUT, "expected.json"), {
        "generator": GENERATOR,
        "reference": "tokenizers 0.22 (npm @anush008/tokenizers 0.6.0), torch %s" % torch.__version__,
        "cosine_min": COSINE_MIN,
        "abs_error_max": ABS_ERROR_MAX,
        "models": models,
        "cases": cases,
    })
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(OUT) for f in files)
    print("wrote %s: %d cases, %d bytes in all" % (os.path.join(OUT, "expected.json"), len(cases), total))
    if total > 3 * 1024 * 1024:
        sys.exit("the fixtures take more than 3 MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
