#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The parts of embed-throughput.sh written in Python (Debian's python3,
python3-torch and python3-dbus):

  embed-throughput.py model DIR
      Writes a 12-layer, hidden-384 BERT with random weights into DIR (a
      bare model folder: weights, config.json, tokenizer.json) and
      DIR/batches.json: batches of 32 texts of 100-128 tokens each, with
      their ids. The vocabulary is made of words that are one token each,
      so a text of n - 2 words is n tokens with [CLS] and [SEP].
  embed-throughput.py torch DIR THREADS SECONDS
      The same forward pass in torch, float32, as transformers' BertModel
      runs it (each batch padded to its longest text, padding masked out),
      then mean pooling; prints one line of JSON.
  embed-throughput.py mpoold DIR ADDRESS MODEL CALLERS SECONDS
      CALLERS processes, each on a bus connection of its own, calling
      Embed with the batches in turn; prints one line of JSON.
  embed-throughput.py compare DIR ADDRESS MODEL
      One batch through Embed and through torch: the largest difference,
      so that the two are known to compute the same thing."""

import importlib.util
import json
import math
import multiprocessing
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.normpath(os.path.join(HERE, "..", "tools"))

# all-MiniLM-L12's shape, with BERT's own vocabulary size and positions.
CONFIG = dict(vocab=30522, hidden=384, layers=12, heads=12, intermediate=1536, positions=512, types=2, eps=1e-12)
BATCH = 32
MIN_TOKENS, MAX_TOKENS = 100, 128
N_BATCHES = 8
N_WORDS = 20000


def load_tool(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_model(directory):
    import torch

    bert = load_tool("make_bert_fixtures", "make-bert-fixtures.py")
    fixtures = load_tool("make_embed_fixtures", "make-embed-fixtures.py")

    rng = random.Random(9)
    vocab = {}
    for token in fixtures.SPECIALS:
        vocab[token] = len(vocab)
    while len(vocab) < len(fixtures.SPECIALS) + N_WORDS:
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
        vocab.setdefault(word, len(vocab))
    words = [w for w in vocab if w not in fixtures.SPECIALS]
    # The fixtures' tokenizer.json, over this vocabulary.
    fixtures.VOCAB = vocab

    os.makedirs(directory, exist_ok=True)
    g = torch.Generator().manual_seed(9)
    weights = bert.random_weights(CONFIG, g)
    bert.write_safetensors(os.path.join(directory, "model.safetensors"),
                           sorted((name, "F32", t) for name, t in weights.items()))
    bert.write_json(os.path.join(directory, "config.json"), bert.config_json(CONFIG))
    with open(os.path.join(directory, "tokenizer.json"), "w") as f:
        json.dump(fixtures.tokenizer_json(True), f)

    batches = []
    for _ in range(N_BATCHES):
        texts, ids = [], []
        for _ in range(BATCH):
            chosen = [rng.choice(words) for _ in range(rng.randint(MIN_TOKENS, MAX_TOKENS) - 2)]
            texts.append(" ".join(chosen))
            ids.append([vocab["[CLS]"]] + [vocab[w] for w in chosen] + [vocab["[SEP]"]])
        batches.append({"texts": texts, "ids": ids})
    with open(os.path.join(directory, "batches.json"), "w") as f:
        json.dump(batches, f)


def read_batches(directory):
    with open(os.path.join(directory, "batches.json")) as f:
        return json.load(f)


def torch_model(directory):
    import torch

    bert = load_tool("make_bert_fixtures", "make-bert-fixtures.py")
    g = torch.Generator().manual_seed(9)
    return bert.random_weights(CONFIG, g)


def torch_embed(torch, F, w, ids):
    """transformers' BertModel in eager mode, then mean pooling."""
    c = CONFIG
    h, heads = c["hidden"], c["heads"]
    d = h // heads
    b = len(ids)
    length = max(len(s) for s in ids)
    x_ids = torch.zeros(b, length, dtype=torch.long)
    mask = torch.zeros(b, length, dtype=torch.float32)
    for n, s in enumerate(ids):
        x_ids[n, : len(s)] = torch.tensor(s)
        mask[n, : len(s)] = 1

    def ln(x, name):
        return F.layer_norm(x, (h,), w[name + ".weight"], w[name + ".bias"], c["eps"])

    def lin(x, name):
        return F.linear(x, w[name + ".weight"], w[name + ".bias"])

    def heads_of(t):
        return t.view(b, length, heads, d).transpose(1, 2)

    x = (w["embeddings.word_embeddings.weight"][x_ids]
         + w["embeddings.position_embeddings.weight"][:length][None]
         + w["embeddings.token_type_embeddings.weight"][0][None, None])
    x = ln(x, "embeddings.LayerNorm")
    extended = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float32).min
    for n in range(c["layers"]):
        p = "encoder.layer.%d." % n
        q = heads_of(lin(x, p + "attention.self.query"))
        k = heads_of(lin(x, p + "attention.self.key"))
        v = heads_of(lin(x, p + "attention.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + extended
        context = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, length, h)
        a = ln(lin(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        inter = F.gelu(lin(a, p + "intermediate.dense"))
        x = ln(lin(inter, p + "output.dense") + a, p + "output.LayerNorm")
    return (x * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)


def run_torch(directory, threads, seconds):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    w = torch_model(directory)
    batches = read_batches(directory)
    tokens = 0
    calls = 0
    with torch.inference_mode():
        torch_embed(torch, F, w, batches[-1]["ids"])  # warming up
        start = time.monotonic()
        while calls < 2 or time.monotonic() - start < seconds:
            ids = batches[calls % len(batches)]["ids"]
            torch_embed(torch, F, w, ids)
            tokens += sum(len(s) for s in ids)
            calls += 1
        elapsed = time.monotonic() - start
    print(json.dumps({"tokens": tokens, "calls": calls, "seconds": elapsed, "tokens_per_second": tokens / elapsed,
                      "threads": torch.get_num_threads(),
                      "coretype": os.environ.get("OPENBLAS_CORETYPE", "")}))


def embed_call(bus, model, texts):
    import dbus

    return bus.call_blocking("org.mpool.Manager", "/org/mpool/Manager", "org.mpool.Manager", "Embed", "sasa{sv}",
                             (model, texts, dbus.Dictionary({}, signature="sv")), timeout=600)


def caller(address, model, texts_of, calls, offset, start, results):
    import dbus.bus

    bus = dbus.bus.BusConnection(address)
    start.wait()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    for i in range(calls):
        embed_call(bus, model, texts_of[(offset + i) % len(texts_of)])
    results.put({"seconds": time.monotonic() - t0, "cpu": time.process_time() - cpu0})


def run_callers(address, model, texts_of, callers, calls):
    start = multiprocessing.Barrier(callers + 1)
    results = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=caller, args=(address, model, texts_of, calls, n, start, results))
             for n in range(callers)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.monotonic()
    out = [results.get() for _ in procs]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join()
    return elapsed, out


def sgemm_flops(ids):
    """What the daemon's sgemm calls compute for a batch: the projections
    on every token, attention on each text's own tokens (no padding)."""
    c = CONFIG
    h, i = c["hidden"], c["intermediate"]
    tokens = sum(len(s) for s in ids)
    per_layer = 2 * tokens * (4 * h * h + 2 * h * i) + sum(4 * len(s) ** 2 * h for s in ids)
    return per_layer * c["layers"]


def run_mpoold(directory, address, model, callers, seconds):
    batches = read_batches(directory)
    texts_of = [b["texts"] for b in batches]
    tokens_of = [sum(len(s) for s in b["ids"]) for b in batches]
    flops_of = [sgemm_flops(b["ids"]) for b in batches]
    # Loads the model and starts one worker per caller; then how long a
    # call takes, to size the measured run.
    run_callers(address, model, texts_of, callers, 1)
    elapsed, _ = run_callers(address, model, texts_of, callers, 1)
    calls = max(2, math.ceil(seconds / elapsed))
    elapsed, out = run_callers(address, model, texts_of, callers, calls)
    tokens = sum(tokens_of[(n + i) % len(batches)] for n in range(callers) for i in range(calls))
    flops = sum(flops_of[(n + i) % len(batches)] for n in range(callers) for i in range(calls))
    print(json.dumps({"tokens": tokens, "flops": flops, "calls": calls * callers, "seconds": elapsed,
                      "tokens_per_second": tokens / elapsed,
                      "client_cpu_share": sum(o["cpu"] for o in out) / (elapsed * callers)}))


def compare(directory, address, model):
    import dbus.bus
    import torch
    import torch.nn.functional as F

    batch = read_batches(directory)[0]
    bus = dbus.bus.BusConnection(address)
    got = torch.tensor([[float(v) for v in row] for row in embed_call(bus, model, batch["texts"])])
    with torch.inference_mode():
        want = torch_embed(torch, F, torch_model(directory), batch["ids"])
    cosine = F.cosine_similarity(got, want.to(torch.float32), dim=1).min().item()
    print(json.dumps({"max_abs_difference": (got - want).abs().max().item(), "min_cosine": cosine}))


def main(argv):
    if len(argv) >= 3 and argv[1] == "model":
        make_model(argv[2])
    elif len(argv) == 5 and argv[1] == "torch":
        run_torch(argv[2], int(argv[3]), float(argv[4]))
    elif len(argv) == 7 and argv[1] == "mpoold":
        run_mpoold(argv[2], argv[3], argv[4], int(argv[5]), float(argv[6]))
    elif len(argv) == 5 and argv[1] == "compare":
        compare(argv[2], argv[3], argv[4])
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
