#!/usr/bin/env python3
"""Independent numpy reference for all-MiniLM-L6-v2 (the values RealModelTests hard-codes).

A plain fp32 BERT forward pass written from the published architecture, sharing no code with
PTQKit: weights read with `safetensors` from models/minilm/model.safetensors, text tokenized
with Hugging Face `tokenizers` from models/minilm/tokenizer.json (no truncation, no padding),
mean pooling over every token, L2 normalisation. It prints

  1. for each sentence of `RealModelTests.numpyEmbeddings`: the token ids, the first 8 values
     and the sum of all 384 values of the normalised embedding;
  2. the STS-B dev Spearman correlation × 100 of the embedding cosines against the gold scores
     (all 1,500 pairs of ../shared/data/stsb/sts-dev.tsv, `scipy.stats.spearmanr`, which gives
     tied values their average rank) — the 86.7163 of `RealModelTests.miniLMSTSBMatchesReference`
     and docs/RESULTS.md.

Run from the repository root (the models come from scripts/fetch-models):

  pip install safetensors tokenizers==0.23.3      # numpy and scipy as below
  OMP_NUM_THREADS=1 python3 scripts/reference/minilm_numpy.py [--model models/minilm] [--stsb ../shared/data/stsb/sts-dev.tsv]

Package versions that produced the numbers in the tests (`pip show`): Python 3.11.7,
numpy 2.4.6, scipy 1.17.1, safetensors 0.8.0, tokenizers 0.23.3. The STS-B pass takes about a
minute on one core.

Output of that run (RealModelTests hard-codes exactly these values):

  A man with a hard hat is dancing.
    ids   [101, 1037, 2158, 2007, 1037, 2524, 6045, 2003, 5613, 1012, 102]
    first [0.02971860, -0.06003958, -0.00981454, -0.02668881, -0.02426095, 0.01210191, 0.09069107, -0.05384167]
    sum   0.077760058
  A man wearing a hard hat is dancing.
    ids   [101, 1037, 2158, 4147, 1037, 2524, 6045, 2003, 5613, 1012, 102]
    first [0.02655675, -0.05465152, -0.00642743, -0.03321835, -0.02411876, 0.01569549, 0.09636824, -0.05793912]
    sum   0.079316263
  A young child is riding a horse.
    ids   [101, 1037, 2402, 2775, 2003, 5559, 1037, 3586, 1012, 102]
    first [-0.02565011, 0.00797088, 0.03227036, 0.03084031, 0.00002925, -0.01672059, 0.06077106, 0.06499977]
    sum   0.000029615
  STS-B dev: 1500 pairs, Spearman x 100 = 86.7163
"""
import argparse
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf
from scipy.stats import spearmanr
from tokenizers import Tokenizer

SENTENCES = [
    "A man with a hard hat is dancing.",
    "A man wearing a hard hat is dancing.",
    "A young child is riding a horse.",
]
HEADS = 12
EPS = 1e-12  # config.json layer_norm_eps


def layer_norm(x, w, b):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * w + b


def linear(x, w, b):
    # PyTorch layout: weight is (out, in).
    return x @ w.T + b


def gelu(x):
    # BERT's exact GELU: x · Φ(x) = x/2 · (1 + erf(x/√2)).
    return (0.5 * x * (1.0 + erf(x / np.float32(math.sqrt(2.0))))).astype(np.float32)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class MiniLM:
    def __init__(self, folder):
        self.w = {k: v.astype(np.float32) for k, v in load_file(f"{folder}/model.safetensors").items()
                  if v.dtype != np.int64}
        self.layers = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer."))
        self.tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def ids(self, text):
        return self.tokenizer.encode(text).ids

    def embed(self, ids):
        w, n = self.w, len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        hidden = x.shape[1]
        d = hidden // HEADS
        for l in range(self.layers):
            p = f"encoder.layer.{l}."
            q = linear(x, w[p + "attention.self.query.weight"], w[p + "attention.self.query.bias"])
            k = linear(x, w[p + "attention.self.key.weight"], w[p + "attention.self.key.bias"])
            v = linear(x, w[p + "attention.self.value.weight"], w[p + "attention.self.value.bias"])
            q, k, v = (t.reshape(n, HEADS, d).transpose(1, 0, 2) for t in (q, k, v))
            attention = softmax(q @ k.transpose(0, 2, 1) / np.float32(math.sqrt(d)))
            context = (attention @ v).transpose(1, 0, 2).reshape(n, hidden)
            a = linear(context, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
            x = layer_norm(x + a, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = gelu(linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            o = linear(h, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            x = layer_norm(x + o, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = x.mean(axis=0)
        return pooled / np.linalg.norm(pooled)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/minilm")
    parser.add_argument("--stsb", default="../shared/data/stsb/sts-dev.tsv")
    args = parser.parse_args()
    model = MiniLM(args.model)

    for text in SENTENCES:
        ids = model.ids(text)
        e = model.embed(ids)
        print(text)
        print("  ids  ", ids)
        print("  first", "[" + ", ".join(f"{v:.8f}" for v in e[:8]) + "]")
        print(f"  sum   {float(e.astype(np.float64).sum()):.9f}")

    gold, cosines = [], []
    with open(args.stsb, encoding="utf-8") as f:
        for line in f.read().split("\n"):
            if not line:
                continue
            columns = line.split("\t")  # genre, file, year, id, score, sentence 1, sentence 2
            a, b = model.embed(model.ids(columns[5])), model.embed(model.ids(columns[6]))
            gold.append(float(columns[4]))
            cosines.append(float(np.dot(a.astype(np.float64), b.astype(np.float64))
                                 / (np.linalg.norm(a.astype(np.float64)) * np.linalg.norm(b.astype(np.float64)))))
    rho = spearmanr(cosines, gold).statistic
    print(f"STS-B dev: {len(gold)} pairs, Spearman x 100 = {100 * rho:.4f}")


if __name__ == "__main__":
    sys.exit(main())
