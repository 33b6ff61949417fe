#!/usr/bin/env python3
"""Write the GGUF test data under worker/tests/data/gguf/, computed independently of our Rust code.

What it writes (all small):
  quant/<TYPE>.blocks, quant/<TYPE>.f32   raw GGML blocks and what gguf-py's numpy dequantizer
                                          makes of them (little-endian f32), for every type the
                                          importer supports. Blocks are random bytes with sane
                                          f16 scales, plus (where gguf-py can quantize) blocks
                                          quantized from normal noise.
  tiny-llama.gguf                         a 2-layer llama-arch model written with gguf.GGUFWriter:
                                          mixed tensor types, q/k permuted the way
                                          convert_hf_to_gguf.py permutes them, tied embeddings,
                                          a byte-level BPE vocabulary with merges, llama-bpe
                                          pre-tokenizer, control and user-defined tokens.
  tiny-llama.expected.safetensors         the Hugging Face layout weights the import must give
                                          (dequantized, un-permuted, [out, in]).
  tiny-qwen3.gguf / .expected.safetensors a 1-layer qwen3-arch model (q/k norms, head_dim from
                                          attention.key_length, untied lm_head, qwen2 pre-tokenizer).
  unsupported-type.gguf                   a GGUF with a Q2_K tensor (the importer must refuse it).
  <model>.tokens.json                     expected token ids for test strings, from the reference
                                          byte-level BPE below (the vocabulary and merges read from
                                          the GGUF with gguf-py; pre-tokenization with the
                                          llama.cpp/Hugging Face regexes via the `regex` module).

The real models' expectations need their GGUF files (see `ibench fetch-model`, which keeps them in
<models dir>/.downloads/):
    python3 tests/scripts/make_gguf_vectors.py \
        --smollm2 ~/.cache/ibench/models/.downloads/smollm2-135m-instruct.gguf \
        --qwen ~/.cache/ibench/models/.downloads/qwen2.5-coder-0.5b-instruct.gguf

Needs: pip install gguf numpy regex
"""
import argparse
import hashlib
import json
import pathlib
import struct

import numpy as np
import regex

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent.parent / "worker" / "tests" / "data" / "gguf"

# ---------------------------------------------------------------------------------------------
# Dequantization vectors

# Where the f16 scale fields sit in one block: (offset, count).
SCALE_FIELDS = {
    "Q4_0": [0], "Q5_0": [0], "Q8_0": [0],
    "Q4_1": [0, 2], "Q5_1": [0, 2],
    "Q4_K": [0, 2], "Q5_K": [0, 2],
    "Q6_K": [208],
}
QUANTIZABLE = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}


def quant_vectors(out, rng):
    qdir = out / "quant"
    qdir.mkdir(parents=True, exist_ok=True)
    for name, offsets in SCALE_FIELDS.items():
        qt = T[name]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        n_random = 6 if block == 32 else 3
        raw = rng.integers(0, 256, size=(n_random, size), dtype=np.uint8)
        for b in range(n_random):
            for off in offsets:
                # one block with tiny (subnormal f16) scales, the others ordinary ones of both signs
                scale = rng.uniform(-3e-6, 3e-6) if b == 1 else rng.uniform(-0.2, 0.2)
                raw[b, off:off + 2] = np.frombuffer(np.float16(scale).tobytes(), dtype=np.uint8)
        blocks = [raw]
        if name in QUANTIZABLE:
            data = rng.normal(0, 1.5, size=(4, block)).astype(np.float32)
            data[3] = 0.0  # an all-zero block (scale 0)
            blocks.append(quantize(data, qt).reshape(-1, size))
        raw = np.concatenate(blocks, axis=0)
        expected = dequantize(raw, qt).astype(np.float32).reshape(-1)
        assert expected.size == raw.shape[0] * block
        (qdir / f"{name}.blocks").write_bytes(raw.tobytes())
        (qdir / f"{name}.f32").write_bytes(expected.astype("<f4").tobytes())

    # F16: ordinary, subnormal, signed zero, largest and infinite values.
    f16 = np.concatenate([rng.normal(0, 50, size=56).astype(np.float16),
                          np.array([0.0, -0.0, 6e-8, -6e-5, 65504.0, -65504.0, np.inf, -np.inf],
                                   dtype=np.float16)])
    (qdir / "F16.blocks").write_bytes(f16.tobytes())
    (qdir / "F16.f32").write_bytes(f16.astype("<f4").tobytes())
    # BF16: random bit patterns that are not NaN.
    bits = rng.integers(0, 1 << 16, size=64, dtype=np.uint32)
    bits = bits[((bits >> 7) & 0xFF) != 0xFF][:48].astype(np.uint16)
    bf = dequantize(bits.view(np.uint8), T.BF16).astype(np.float32)
    (qdir / "BF16.blocks").write_bytes(bits.astype("<u2").tobytes())
    (qdir / "BF16.f32").write_bytes(bf.astype("<f4").tobytes())
    f32 = rng.normal(0, 1, size=32).astype("<f4")
    (qdir / "F32.blocks").write_bytes(f32.tobytes())
    (qdir / "F32.f32").write_bytes(f32.tobytes())


# ---------------------------------------------------------------------------------------------
# Reference byte-level BPE (GPT-2 style), independent of Hugging Face tokenizers

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


BYTE_ENCODER = bytes_to_unicode()
GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2_RE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
            r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_RE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
             r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def split_isolated(pattern, text):
    """Hugging Face `Split(behavior=Isolated)`: matches and the gaps between them are pieces."""
    pieces, last = [], 0
    for m in regex.finditer(pattern, text):
        if m.start() > last:
            pieces.append(text[last:m.start()])
        if m.end() > m.start():
            pieces.append(m.group())
        last = m.end()
    if last < len(text):
        pieces.append(text[last:])
    return pieces


def pretokenize(pre, text):
    if pre in ("smollm", "starcoder"):
        # Digits(individual_digits=True), then the GPT-2 regex of ByteLevel(use_regex=True)
        out = []
        for piece in split_isolated(r"\p{N}", text):
            out.extend(split_isolated(GPT2_RE, piece))
        return out
    if pre == "gpt-2":
        return split_isolated(GPT2_RE, text)
    if pre == "qwen2":
        return split_isolated(QWEN2_RE, text)
    if pre == "llama-bpe":
        return split_isolated(LLAMA3_RE, text)
    raise ValueError(f"no reference pre-tokenizer for {pre!r}")


class ReferenceBpe:
    def __init__(self, tokens, types, merges, pre):
        self.pre = pre
        self.vocab = {}
        for i, t in enumerate(tokens):
            self.vocab.setdefault(t, i)
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.ignore_merges = pre == "llama-bpe"
        specials = [t for t, ty in zip(tokens, types) if ty in (3, 4)]
        specials.sort(key=len, reverse=True)
        self.special_re = "(" + "|".join(regex.escape(s) for s in specials) + ")" if specials else None

    def bpe(self, word):
        if self.ignore_merges and word in self.vocab:
            return [word]
        parts = list(word)
        while len(parts) > 1:
            best = None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        return parts

    def encode(self, text):
        ids = []
        chunks = regex.split(self.special_re, text) if self.special_re else [text]
        for k, chunk in enumerate(chunks):
            if not chunk:
                continue
            if k % 2 == 1:  # a special token (captured by the split)
                ids.append(self.vocab[chunk])
                continue
            for piece in pretokenize(self.pre, chunk):
                word = "".join(BYTE_ENCODER[b] for b in piece.encode("utf-8"))
                ids.extend(self.vocab[p] for p in self.bpe(word))
        return ids


TEST_STRINGS = [
    "Hello, world! I'm fine, you'RE sure? They'll say we'd've done it.",
    "The quick brown fox jumps over the lazy dog.\n",
    "我头疼，已经两天了。医生，我应该怎么办？",
    "混合 English 和中文 text ｜全角符号！",
    "Emoji: 😀👍🏽 🛫 ❤️ 👨‍👩‍👧",
    "    four spaces,\ttab,\t\t two tabs\n\n\nthree newlines   \n  trailing   ",
    "  leading spaces and\r\nwindows line ends\r\n",
    "Digits: 1 12 123 1234 12345 3.14159 -42 1,000,000 2024-06-01 ١٢٣",
    "def f(x):\n    return x**2 + 1  # comment\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "naïve café, Ünïcödé — “quotes” and ‘single’ … ellipsis",
    "Здравствуйте! Καλημέρα. こんにちは。안녕하세요.",
]


def token_expectations(path, name, out):
    r = gguf.GGUFReader(path)
    f = lambda k: r.fields[k].contents()
    tokens, types, merges = f("tokenizer.ggml.tokens"), f("tokenizer.ggml.token_type"), f("tokenizer.ggml.merges")
    pre = f("tokenizer.ggml.pre")
    bpe = ReferenceBpe(tokens, types, merges, pre)
    cases = [{"text": s, "ids": bpe.encode(s)} for s in TEST_STRINGS]
    sha = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    head = {"model": name, "gguf_sha256": sha, "pre": pre, "vocab": len(tokens),
            "made_by": "tests/scripts/make_gguf_vectors.py (gguf-py vocabulary + reference BPE)"}
    # one case per line: reviewable diffs, small files
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    text = json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    (out / f"{name}.tokens.json").write_text(text)
    print(name, "tokens:", [len(c["ids"]) for c in cases])


# ---------------------------------------------------------------------------------------------
# Tiny synthetic models

def permute(w, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half layout -> GGUF interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def byte_vocab():
    # token i (< 256) is the byte-level character of byte i, as in GPT-2 style vocabularies
    tokens = [BYTE_ENCODER[b] for b in range(256)]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġ", "Ġ"),
              ("ĠĠ", "ĠĠ"), ("1", "2"), ("12", "3"), ("o", "r"), ("Ġw", "or"), ("Ġ", "w"), ("l", "d"),
              ("Ġwor", "ld"), ("Ċ", "Ċ"), ("'", "s"), ("Ġ", "in"), ("ä", "½"), ("ä½", "ł")]
    for a, b in merges:
        tokens.append(a + b)
    return tokens, [f"{a} {b}" for a, b in merges]


def add_tokenizer(w, pre, specials, user, pad_unused, bos, eos, add_bos):
    tokens, merges = byte_vocab()
    types = [1] * len(tokens)
    for s in specials:
        tokens.append(s)
        types.append(3)
    for s in user:
        tokens.append(s)
        types.append(4)
    for i in range(pad_unused):
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(bos))
    w.add_eos_token_id(tokens.index(eos))
    w.add_add_bos_token(add_bos)
    w.add_chat_template("{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    return tokens, types, merges


def q(name, arr, qtype):
    """(GGUF-stored array, raw dtype, HF expected array) for a weight quantized as `qtype`."""
    if qtype == T.F32:
        return arr.astype(np.float32), None, arr.astype(np.float32)
    if qtype == T.F16:
        h = arr.astype(np.float16)
        return h, None, h.astype(np.float32)
    data = quantize(arr.astype(np.float32), qtype)
    return data, qtype, dequantize(data, qtype).astype(np.float32)


def tiny_llama(out, rng):
    hidden, inter, heads, kv_heads, layers = 32, 64, 4, 2, 2
    hd = hidden // heads
    path = out / "tiny-llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama for ibench tests")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    tokens, types, merges = add_tokenizer(
        w, "llama-bpe", ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], ["<tool>"], 3,
        bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True)
    vocab = len(tokens)
    w.add_vocab_size(vocab)
    expected = {}

    def put(gguf_name, hf_name, arr, qtype, perm_heads=None):
        stored_src = arr if perm_heads is None else permute(arr, heads, perm_heads)
        stored, raw, deq = q(gguf_name, stored_src, qtype)
        w.add_tensor(gguf_name, stored, raw_dtype=raw)
        # the importer must undo the permutation of what it dequantizes
        if perm_heads is not None:
            n = heads if perm_heads == heads else perm_heads
            deq = deq.reshape(n, hd // 2, 2, -1).swapaxes(1, 2).reshape(arr.shape)
        expected[hf_name] = deq

    put("token_embd.weight", "model.embed_tokens.weight", rng.normal(0, 1, (vocab, hidden)), T.F16)
    kinds = [  # per layer: a mix of types
        dict(q=T.Q8_0, k=T.Q4_0, v=T.Q5_1, o=T.Q4_1, gate=T.Q5_0, up=T.F16, down=T.F32),
        dict(q=T.Q4_1, k=T.Q8_0, v=T.F32, o=T.Q5_0, gate=T.Q8_0, up=T.Q4_0, down=T.Q5_1),
    ]
    for i, k in enumerate(kinds):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        put(b + "attn_norm.weight", p + "input_layernorm.weight", 1 + 0.3 * rng.normal(size=hidden), T.F32)
        put(b + "attn_q.weight", p + "self_attn.q_proj.weight", rng.normal(size=(heads * hd, hidden)), k["q"], heads)
        put(b + "attn_k.weight", p + "self_attn.k_proj.weight", rng.normal(size=(kv_heads * hd, hidden)), k["k"], kv_heads)
        put(b + "attn_v.weight", p + "self_attn.v_proj.weight", rng.normal(size=(kv_heads * hd, hidden)), k["v"])
        put(b + "attn_output.weight", p + "self_attn.o_proj.weight", rng.normal(size=(hidden, heads * hd)), k["o"])
        put(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", 1 + 0.3 * rng.normal(size=hidden), T.F32)
        put(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", rng.normal(size=(inter, hidden)), k["gate"])
        put(b + "ffn_up.weight", p + "mlp.up_proj.weight", rng.normal(size=(inter, hidden)), k["up"])
        put(b + "ffn_down.weight", p + "mlp.down_proj.weight", rng.normal(size=(hidden, inter)), k["down"])
    put("output_norm.weight", "model.norm.weight", 1 + 0.3 * rng.normal(size=hidden), T.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write_safetensors(out / "tiny-llama.expected.safetensors", expected)
    token_expectations(path, "tiny-llama", out)


def tiny_qwen3(out, rng):
    hidden, inter, heads, kv_heads, hd = 32, 64, 4, 2, 16  # head_dim != hidden / heads
    path = out / "tiny-qwen3.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    tokens, _, _ = add_tokenizer(w, "qwen2", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                 ["<think>", "</think>"], 0, bos="<|endoftext|>", eos="<|im_end|>",
                                 add_bos=False)
    vocab = len(tokens)
    expected = {}

    def put(gguf_name, hf_name, arr, qtype):
        stored, raw, deq = q(gguf_name, arr, qtype)
        w.add_tensor(gguf_name, stored, raw_dtype=raw)
        expected[hf_name] = deq

    put("token_embd.weight", "model.embed_tokens.weight", rng.normal(size=(vocab, hidden)), T.Q8_0)
    p, b = "model.layers.0.", "blk.0."
    put(b + "attn_norm.weight", p + "input_layernorm.weight", 1 + 0.3 * rng.normal(size=hidden), T.F32)
    put(b + "attn_q.weight", p + "self_attn.q_proj.weight", rng.normal(size=(heads * hd, hidden)), T.Q8_0)
    put(b + "attn_k.weight", p + "self_attn.k_proj.weight", rng.normal(size=(kv_heads * hd, hidden)), T.Q5_0)
    put(b + "attn_v.weight", p + "self_attn.v_proj.weight", rng.normal(size=(kv_heads * hd, hidden)), T.Q4_1)
    put(b + "attn_q_norm.weight", p + "self_attn.q_norm.weight", 1 + 0.3 * rng.normal(size=hd), T.F32)
    put(b + "attn_k_norm.weight", p + "self_attn.k_norm.weight", 1 + 0.3 * rng.normal(size=hd), T.F32)
    put(b + "attn_output.weight", p + "self_attn.o_proj.weight", rng.normal(size=(hidden, heads * hd)), T.Q4_0)
    put(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", 1 + 0.3 * rng.normal(size=hidden), T.F32)
    put(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", rng.normal(size=(inter, hidden)), T.Q8_0)
    put(b + "ffn_up.weight", p + "mlp.up_proj.weight", rng.normal(size=(inter, hidden)), T.Q8_0)
    put(b + "ffn_down.weight", p + "mlp.down_proj.weight", rng.normal(size=(hidden, inter)), T.Q8_0)
    put("output_norm.weight", "model.norm.weight", 1 + 0.3 * rng.normal(size=hidden), T.F32)
    put("output.weight", "lm_head.weight", rng.normal(size=(vocab, hidden)), T.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write_safetensors(out / "tiny-qwen3.expected.safetensors", expected)
    token_expectations(path, "tiny-qwen3", out)


def unsupported(out, rng):
    w = gguf.GGUFWriter(str(out / "unsupported-type.gguf"), "llama")
    w.add_block_count(1)
    raw = rng.integers(0, 256, size=(2, gguf.GGML_QUANT_SIZES[T.Q2_K][1]), dtype=np.uint8)
    w.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=T.Q2_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--smollm2", help="SmolLM2-135M-Instruct.Q4_1.gguf, for its expected token ids")
    ap.add_argument("--qwen", help="the Qwen2.5-Coder-0.5B-Instruct GGUF, for its expected token ids")
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240601)
    quant_vectors(out, rng)
    tiny_llama(out, rng)
    tiny_qwen3(out, rng)
    unsupported(out, rng)
    if a.smollm2:
        token_expectations(a.smollm2, "smollm2-135m-instruct", out)
    if a.qwen:
        token_expectations(a.qwen, "qwen2.5-coder-0.5b-instruct", out)


if __name__ == "__main__":
    main()
