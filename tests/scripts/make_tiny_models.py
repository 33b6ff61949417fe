#!/usr/bin/env python3
"""Build the tiny random golden models under tests/fixtures/ with Hugging Face transformers.

Each fixture is a Hugging Face model folder (config.json, generation_config.json, safetensors
weights, tokenizer.json, tokenizer_config.json) plus golden.json holding what transformers computed
on it: float32 logits of every prompt position and greedy continuations. The Rust golden tests load
the same folder with the IBench engine and compare.

Run (needs torch, transformers, tokenizers; the GPU machine has them):
    python3 tests/scripts/make_tiny_models.py --out tests/fixtures
"""
import argparse, json, os, shutil, pathlib
import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM, GenerationConfig, PreTrainedTokenizerFast)
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, AddedToken

HERE = pathlib.Path(__file__).resolve().parent
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 320  # 256 byte tokens + 3 specials + padding rows, like real models' padded vocabularies


def byte_level_tokenizer():
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    alphabet.sort()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for s in SPECIALS:  # ids 256, 257, 258
        vocab[s] = len(vocab)
    # a few merges so that BPE merging is exercised
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def save_tokenizer(folder, template):
    tok = byte_level_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 64,
        "chat_template": template,
        "added_tokens_decoder": {
            str(tok.token_to_id(s)): {"content": s, "special": True, "lstrip": False, "rstrip": False,
                                      "normalized": False, "single_word": False} for s in SPECIALS},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=template)


CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "I can't sleep well."}], "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "You are a careful doctor."},
                  {"role": "user", "content": "我头疼"},
                  {"role": "assistant", "content": "<think>\nask first\n</think>\n\nHow long has it hurt?"},
                  {"role": "user", "content": "Two days, since the flight 🛫."}],
     "add_generation_prompt": True, "enable_thinking": False},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
     "add_generation_prompt": False},
]


def build(kind, out, dtype, tied, shard):
    torch.manual_seed({"llama": 1, "qwen2": 2, "qwen3": 3}[kind])
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-6, tie_word_embeddings=tied, initializer_range=0.15,
                  bos_token_id=None, eos_token_id=258, pad_token_id=256)
    if kind == "llama":
        cfg = LlamaConfig(**common, rope_theta=10000.0, attention_bias=False, mlp_bias=False)
        model = LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = Qwen2Config(**common, rope_theta=1000000.0, use_sliding_window=False)
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = Qwen3Config(**common, head_dim=24, rope_theta=1000000.0, attention_bias=False)
        model = Qwen3ForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    # Norm weights are ones at init: randomize them so a missing norm cannot pass.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
    model = model.to(dtype)
    name = f"tiny-{kind}"
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.generation_config = GenerationConfig(eos_token_id=[258, 256], do_sample=False,
                                               temperature=None, top_p=None, top_k=None)
    model.save_pretrained(folder, max_shard_size="150KB" if shard else "50GB")
    tok = save_tokenizer(folder, (HERE / "qwen3_chat_template.jinja").read_text())

    # Reference: the saved folder loaded back by transformers in float32 on the CPU, as a user
    # would load it (buffers such as rotary inv_freq are then float32, not rounded to the weights' dtype).
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    prompts = [[72, 101, 108, 108, 111, 44, 32, 100, 111, 99],
               [257, 117, 115, 101, 114, 10, 73, 32, 99, 97, 110, 39, 116, 32, 115, 108, 101, 101],
               [259, 260, 261]]
    golden = {"transformers": transformers.__version__, "torch": torch.__version__,
              "dtype": str(dtype).replace("torch.", ""), "tied": tied, "sharded": shard,
              "prompts": []}
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            logits = ref(x).logits[0].tolist()
            gen = ref.generate(x, max_new_tokens=24, do_sample=False, eos_token_id=[258, 256],
                               pad_token_id=256)
            new = gen[0, len(ids):].tolist()
            golden["prompts"].append({"ids": ids, "logits": logits, "greedy": new})
    chats = []
    for conv in CONVERSATIONS:
        kw = {k: v for k, v in conv.items() if k != "messages"}
        text = tok.apply_chat_template(conv["messages"], tokenize=False, **kw)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        chats.append({**conv, "text": text, "ids": ids})
    golden["chats"] = chats
    (folder / "golden.json").write_text(json.dumps(golden))
    print(name, "ok", sorted(os.listdir(folder)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE.parent / "fixtures"))
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    build("llama", out, torch.float16, tied=True, shard=False)
    build("qwen2", out, torch.float32, tied=False, shard=True)
    build("qwen3", out, torch.bfloat16, tied=False, shard=True)


if __name__ == "__main__":
    main()
