#!/usr/bin/env python3
"""Side-by-side reference for `ibench bench`: builds a model folder with random weights in a given
shape (default: Qwen3-8B) on the GPU, saves it as sharded bf16 safetensors (so that `ibench bench`
loads the very same folder), and times transformers on it: load, prefill and decode at several
batch sizes, same prompt/decode lengths as `ibench bench`.

    python3 tests/scripts/bench_transformers.py --out /tmp/qwen3-8b-random --batch-sizes 1,32
"""
import argparse, json, os, shutil, time, pathlib
import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM

HERE = pathlib.Path(__file__).resolve().parent

QWEN3_8B = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
                bos_token_id=151643, eos_token_id=151645)


def build(out, layers):
    cfg = Qwen3Config(**{**QWEN3_8B, "num_hidden_layers": layers})
    torch.manual_seed(0)
    t = time.time()
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, max_shard_size="5GB")
    fx = HERE.parent / "fixtures" / "tiny-qwen3"
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(fx / f, out / f)
    del model
    torch.cuda.empty_cache()
    return time.time() - t


def sync():
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/qwen3-8b-random")
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    build_s = build(out, a.layers)
    t = time.time()
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, device_map="cuda").eval()
    sync()
    load_s = time.time() - t
    runs = []
    g = torch.Generator(device="cuda").manual_seed(1)
    for b in [int(x) for x in a.batch_sizes.split(",")]:
        ids = torch.randint(0, QWEN3_8B["vocab_size"], (b, a.prompt_tokens), device="cuda", generator=g)
        with torch.no_grad():
            for _ in range(2):  # warm-up
                model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            sync(); t = time.time()
            model(ids)
            sync(); prefill = time.time() - t
            t = time.time()
            model.generate(ids, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
            sync(); total = time.time() - t
        decode = max(total - prefill, 1e-9)
        runs.append({"batch": b, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
                     "prefill_seconds": prefill, "prefill_tokens_per_second": b * a.prompt_tokens / prefill,
                     "decode_seconds": decode, "decode_tokens_per_second": b * a.new_tokens / decode})
    print(json.dumps({"engine": "transformers " + transformers.__version__, "torch": torch.__version__,
                      "device": torch.cuda.get_device_name(), "dtype": "bf16", "build_seconds": build_s,
                      "load_seconds": load_s, "runs": runs}))


if __name__ == "__main__":
    main()
