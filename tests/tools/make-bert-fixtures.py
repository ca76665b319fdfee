#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Writes the BERT fixtures of tests/fixtures/bert/: small random BERT
encoders in the files a sentence-transformers model folder holds, and the
embeddings a reference computes for a set of token id sequences.

The reference is written here with torch's own operations, as transformers'
BertModel and sentence-transformers' Pooling and Normalize modules define
the computation: embeddings (word + position + token type 0) and LayerNorm;
per layer, self-attention with padding masked out by the most negative
float added to its scores, the output projection added to the layer's input
and LayerNorm'd (post-LN), the intermediate projection with the exact (erf)
GELU, the output projection added and LayerNorm'd; then mean pooling over
the tokens that are not padding, or the first token's vector, and L2
normalization. All the sequences of a model run as one batch padded to the
longest, so the mask is exercised. The reference runs in float64 on the
weights exactly as stored (F16 and BF16 values widened), so it is the
exact result the tests measure the daemon's float32 computation against.

Needs Debian's python3-torch (not needed by the tests, which read what this
wrote):  apt-get install python3-torch
Run from the top of the tree:  tests/tools/make-bert-fixtures.py
The output is the same on every run (fixed seeds)."""

import json
import math
import os
import shutil
import struct
import sys

import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "bert")


def config_json(c):
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": c["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": c["intermediate"],
        "layer_norm_eps": c["eps"],
        "max_position_embeddings": c["positions"],
        "model_type": "bert",
        "num_attention_heads": c["heads"],
        "num_hidden_layers": c["layers"],
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "transformers_version": "4.41.0",
        "type_vocab_size": c["types"],
        "use_cache": True,
        "vocab_size": c["vocab"],
    }


def random_weights(c, g, scale=1.0):
    """Weights as BertModel names them, large enough that every part of the
    computation moves the result: attention is far from uniform, GELU
    sees both signs, LayerNorm's parameters are not 1 and 0. scale
    multiplies the projections' weights: random networks this strong
    amplify small changes to their weights far more than trained ones
    do, which a model for the lower precisions must not."""
    h, i = c["hidden"], c["intermediate"]

    def normal(*shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def linear(name, out, inp, gain=1.0):
        w[name + ".weight"] = normal(out, inp, std=scale * gain / math.sqrt(inp))
        w[name + ".bias"] = normal(out, std=0.1)

    def norm(name):
        w[name + ".weight"] = 1.0 + normal(h, std=0.2)
        w[name + ".bias"] = normal(h, std=0.1)

    w = {}
    w["embeddings.word_embeddings.weight"] = normal(c["vocab"], h, std=0.5)
    w["embeddings.position_embeddings.weight"] = normal(c["positions"], h, std=0.5)
    w["embeddings.token_type_embeddings.weight"] = normal(c["types"], h, std=0.5)
    norm("embeddings.LayerNorm")
    for n in range(c["layers"]):
        p = "encoder.layer.%d." % n
        linear(p + "attention.self.query", h, h, gain=2.0)
        linear(p + "attention.self.key", h, h, gain=2.0)
        linear(p + "attention.self.value", h, h)
        linear(p + "attention.output.dense", h, h)
        norm(p + "attention.output.LayerNorm")
        linear(p + "intermediate.dense", i, h, gain=1.5)
        linear(p + "output.dense", h, i)
        norm(p + "output.LayerNorm")
    return w


def stored(t, dtype):
    """The tensor as the file holds it, and its values widened to float64."""
    if dtype == "F32":
        s = t.to(torch.float32)
    elif dtype == "F16":
        s = t.to(torch.float16)
    else:
        s = t.to(torch.bfloat16)
    return s, s.to(torch.float64)


def forward(w, c, sequences):
    """BertModel's last hidden state for the sequences, as one padded batch,
    and the attention mask."""
    h, heads = c["hidden"], c["heads"]
    d = h // heads
    b = len(sequences)
    length = max(len(s) for s in sequences)
    ids = torch.zeros(b, length, dtype=torch.long)
    mask = torch.zeros(b, length, dtype=torch.float64)
    for n, s in enumerate(sequences):
        ids[n, : len(s)] = torch.tensor(s)
        mask[n, : len(s)] = 1

    def ln(x, name):
        return F.layer_norm(x, (h,), w[name + ".weight"], w[name + ".bias"], c["eps"])

    def lin(x, name):
        return F.linear(x, w[name + ".weight"], w[name + ".bias"])

    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][torch.arange(length)][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = ln(x, "embeddings.LayerNorm")
    # transformers' extended attention mask: 0 where attended, the most
    # negative float where padding.
    extended = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float64).min
    for n in range(c["layers"]):
        p = "encoder.layer.%d." % n

        def heads_of(t):
            return t.view(b, length, heads, d).transpose(1, 2)

        q = heads_of(lin(x, p + "attention.self.query"))
        k = heads_of(lin(x, p + "attention.self.key"))
        v = heads_of(lin(x, p + "attention.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + extended
        context = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, length, h)
        a = ln(lin(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        inter = F.gelu(lin(a, p + "intermediate.dense"))  # approximate="none": erf
        x = ln(lin(inter, p + "output.dense") + a, p + "output.LayerNorm")
    return x, mask


def check_with_torch_layers(w, c, sequences, x, mask):
    """The hand-written layers above against torch's own post-LN
    nn.TransformerEncoderLayer (GELU, padding given as a key padding mask)
    on the same weights: the two must agree on every token that is not
    padding, or this script stops."""
    h = c["hidden"]
    layers = []
    for n in range(c["layers"]):
        p = "encoder.layer.%d." % n
        layer = torch.nn.TransformerEncoderLayer(h, c["heads"], dim_feedforward=c["intermediate"], dropout=0.0,
                                                 activation="gelu", layer_norm_eps=c["eps"], batch_first=True,
                                                 norm_first=False, dtype=torch.float64)
        layer.eval()
        attention = layer.self_attn
        attention.in_proj_weight.copy_(torch.cat([w[p + "attention.self.%s.weight" % k]
                                                  for k in ("query", "key", "value")]))
        attention.in_proj_bias.copy_(torch.cat([w[p + "attention.self.%s.bias" % k]
                                                for k in ("query", "key", "value")]))
        attention.out_proj.weight.copy_(w[p + "attention.output.dense.weight"])
        attention.out_proj.bias.copy_(w[p + "attention.output.dense.bias"])
        for mine, theirs in (("attention.output.LayerNorm", layer.norm1), ("output.LayerNorm", layer.norm2)):
            theirs.weight.copy_(w[p + mine + ".weight"])
            theirs.bias.copy_(w[p + mine + ".bias"])
        layer.linear1.weight.copy_(w[p + "intermediate.dense.weight"])
        layer.linear1.bias.copy_(w[p + "intermediate.dense.bias"])
        layer.linear2.weight.copy_(w[p + "output.dense.weight"])
        layer.linear2.bias.copy_(w[p + "output.dense.bias"])
        layers.append(layer)

    # The embeddings as forward() makes them (its first step).
    length = mask.shape[1]
    ids = torch.zeros(len(sequences), length, dtype=torch.long)
    for n, s in enumerate(sequences):
        ids[n, : len(s)] = torch.tensor(s)
    y = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][torch.arange(length)][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    y = F.layer_norm(y, (h,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], c["eps"])
    for layer in layers:
        y = layer(y, src_key_padding_mask=mask == 0)
    keep = mask.bool()
    difference = (x[keep] - y[keep]).abs().max().item()
    if difference > 1e-9:
        sys.exit("The reference disagrees with torch's TransformerEncoderLayer by %g" % difference)


def pool(x, mask):
    """sentence-transformers' Pooling: mean over the tokens the mask keeps
    (count clamped as it does), and the CLS token."""
    summed = (x * mask[..., None]).sum(dim=1)
    mean = summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
    return mean, x[:, 0]


def write_safetensors(path, tensors):
    """The safetensors format: 8-byte little-endian header length, the JSON
    header (padded with spaces to a multiple of 8), the data in header
    order. tensors: (name, dtype, torch tensor) in the order to write."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, dtype, t in tensors:
        t = t.contiguous()
        if dtype == "BF16":
            data = t.view(torch.int16).numpy().astype("<i2").tobytes()
        elif dtype == "F16":
            data = t.numpy().astype("<f2").tobytes()
        elif dtype == "F32":
            data = t.numpy().astype("<f4").tobytes()
        elif dtype == "I64":
            data = t.numpy().astype("<i8").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def write_json(path, value):
    """Indented, with each list of numbers on one line."""
    def encode(v, indent):
        pad = "  " * (indent + 1)
        if isinstance(v, dict) and v:
            items = ["%s%s: %s" % (pad, json.dumps(k), encode(x, indent + 1)) for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
        if isinstance(v, list) and v and all(isinstance(x, (list, dict)) for x in v):
            items = [pad + encode(x, indent + 1) for x in v]
            return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
        return json.dumps(v, separators=(", ", ": "))

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(encode(value, 0) + "\n")


def rows(t):
    """Rows of float64 as JSON numbers with the precision of a float32 and
    then some."""
    return [[float("%.9g" % v) for v in row] for row in t.tolist()]


MODULES_TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
MODULES_POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
MODULES_NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


def pooling_config(hidden, mode):
    return {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }


# Each variant: the configuration, how the weights are stored and named, and
# the sentence-transformers files (none: a bare BERT folder).
VARIANTS = [
    {
        "name": "f32-bare",
        "config": dict(vocab=300, hidden=32, layers=3, heads=4, intermediate=64, positions=64, types=2,
                       eps=1e-12),
        "dtype": "F32", "prefix": "",
        # Tensors BertModel checkpoints carry and the encoder does not use.
        "extra": ["pooler", "position_ids"],
        "pooling": "mean", "normalize": False, "modules": None,
    },
    {
        "name": "f16-prefix-cls-normalize",
        "config": dict(vocab=280, hidden=24, layers=2, heads=3, intermediate=80, positions=40, types=1,
                       eps=1e-5),
        "dtype": "F16", "prefix": "bert.",
        "extra": ["pooler", "mlm"],
        "pooling": "cls", "normalize": True, "modules": "with-normalize",
        "sentence_bert_config": {"max_seq_length": 40, "do_lower_case": False},
    },
    {
        "name": "bf16-mean-normalize-prompts",
        "config": dict(vocab=310, hidden=32, layers=2, heads=4, intermediate=64, positions=64, types=2,
                       eps=1e-12),
        "dtype": "BF16", "prefix": "",
        "extra": [],
        "pooling": "mean", "normalize": True, "modules": "with-normalize",
        "sentence_bert_config": {"max_seq_length": 48, "do_lower_case": True},
        "prompts": {"prompts": {"query": "query: ", "passage": "passage: ", "plain": ""},
                    "default_prompt_name": "query", "similarity_fn_name": "cosine",
                    "__version__": {"sentence_transformers": "3.0.1", "transformers": "4.41.0",
                                    "pytorch": "2.3.0"}},
    },
    {
        "name": "f32-prefix-mean",
        "config": dict(vocab=290, hidden=32, layers=3, heads=4, intermediate=64, positions=64, types=2,
                       eps=1e-12),
        "dtype": "F32", "prefix": "bert.",
        "extra": ["pooler"],
        "pooling": "mean", "normalize": False, "modules": "without-normalize",
        "sentence_bert_config": {"max_seq_length": 512, "do_lower_case": False},
    },
    {
        # For the lower precisions (f16, q8, q4 against this F32 model):
        # projections at half the strength of the others, so that the
        # network, like a trained one, does not amplify the quantization
        # error of its weights layer after layer.
        "name": "f32-moderate-mean-normalize",
        "config": dict(vocab=300, hidden=64, layers=3, heads=4, intermediate=128, positions=64, types=2,
                       eps=1e-12),
        "dtype": "F32", "prefix": "", "scale": 0.5,
        "extra": [],
        "pooling": "mean", "normalize": True, "modules": "with-normalize",
    },
]


def sequences_for(c, g):
    """Token id sequences of many lengths, from one token to the model's
    maximum, with ids from 0 to vocab - 1 included."""
    lengths = [1, 2, 3, 5, 8, 13, c["positions"], 31, 20, 2]
    out = []
    for n, length in enumerate(lengths):
        ids = torch.randint(0, c["vocab"], (length,), generator=g).tolist()
        if n == 2:
            ids[0], ids[-1] = 0, c["vocab"] - 1
        out.append(ids)
    return out


def make(variant, seed):
    c = variant["config"]
    g = torch.Generator().manual_seed(seed)
    directory = os.path.join(OUT, variant["name"])
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)

    weights = random_weights(c, g, variant.get("scale", 1.0))
    files = []
    reference = {}
    for name, t in weights.items():
        s, wide = stored(t, variant["dtype"])
        files.append((variant["prefix"] + name, variant["dtype"], s))
        reference[name] = wide
    h = c["hidden"]
    if "pooler" in variant["extra"]:
        files.append((variant["prefix"] + "pooler.dense.weight", variant["dtype"],
                      stored(torch.randn(h, h, generator=g), variant["dtype"])[0]))
        files.append((variant["prefix"] + "pooler.dense.bias", variant["dtype"],
                      stored(torch.randn(h, generator=g), variant["dtype"])[0]))
    if "mlm" in variant["extra"]:
        # A masked-LM head, outside the "bert." prefix as transformers saves it.
        files.append(("cls.predictions.bias", variant["dtype"],
                      stored(torch.randn(c["vocab"], generator=g), variant["dtype"])[0]))
    if "position_ids" in variant["extra"]:
        files.append(("embeddings.position_ids", "I64", torch.arange(c["positions"])[None]))
    files.sort(key=lambda f: f[0])
    write_safetensors(os.path.join(directory, "model.safetensors"), files)
    write_json(os.path.join(directory, "config.json"), config_json(c))

    max_length = c["positions"]
    if variant["modules"]:
        modules = [MODULES_TRANSFORMER, MODULES_POOLING]
        if variant["modules"] == "with-normalize":
            modules.append(MODULES_NORMALIZE)
        write_json(os.path.join(directory, "modules.json"), modules)
        write_json(os.path.join(directory, "1_Pooling", "config.json"), pooling_config(h, variant["pooling"]))
    if "sentence_bert_config" in variant:
        write_json(os.path.join(directory, "sentence_bert_config.json"), variant["sentence_bert_config"])
        max_length = min(max_length, variant["sentence_bert_config"]["max_seq_length"])
    if "prompts" in variant:
        write_json(os.path.join(directory, "config_sentence_transformers.json"), variant["prompts"])

    sequences = sequences_for(c, g)
    with torch.no_grad():
        x, mask = forward(reference, c, sequences)
        check_with_torch_layers(reference, c, sequences, x, mask)
        mean, cls = pool(x, mask)
        embeddings = mean if variant["pooling"] == "mean" else cls
        if variant["normalize"]:
            embeddings = F.normalize(embeddings, p=2, dim=1)

    write_json(os.path.join(directory, "expected.json"), {
        "generator": "tests/tools/make-bert-fixtures.py",
        "pooling": variant["pooling"],
        "normalize": variant["normalize"],
        "max_length": max_length,
        "lowercase": variant.get("sentence_bert_config", {}).get("do_lower_case", False),
        "prompts": variant.get("prompts", {}).get("prompts", {}),
        "default_prompt_name": variant.get("prompts", {}).get("default_prompt_name"),
        "inputs": sequences,
        "mean": rows(mean),
        "cls": rows(cls),
        "embeddings": rows(embeddings),
    })


def main():
    torch.set_num_threads(1)
    for n, variant in enumerate(VARIANTS):
        make(variant, 1000 + n)
        print("wrote", os.path.normpath(os.path.join(OUT, variant["name"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
