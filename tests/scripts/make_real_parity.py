#!/usr/bin/env python3
"""Record transformers' greedy continuations on the real imported models, for
worker/tests/real_parity.rs. Run after `ibench fetch-model` of both models:

    python3 tests/scripts/make_real_parity.py --models-dir ~/.cache/ibench/models \
        --out tests/fixtures/real_parity.json

transformers loads the very folders IBench's importer wrote (float32, CPU, eager attention), renders
the chat template with its own Jinja, and generates greedily; the Rust test feeds the engine the same
conversation and expects the same prompt ids and the same generated ids.
"""
import argparse, json, pathlib
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CASES = {
    "smollm2-135m-instruct": [{"role": "user", "content": "What should I do if I can't sleep well?"}],
    "qwen2.5-coder-0.5b-instruct": [{"role": "system", "content": "你是一名耐心的医生。"},
                                    {"role": "user", "content": "我最近总是失眠，怎么办？"}],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--new-tokens", type=int, default=40)
    a = ap.parse_args()
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}
    for name, messages in CASES.items():
        folder = pathlib.Path(a.models_dir) / name
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=a.new_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None)
        new = gen[0, len(ids):].tolist()
        out["models"][name] = {"messages": messages, "text": text, "prompt_ids": ids, "greedy": new,
                               "reply": tok.decode(new, skip_special_tokens=True)}
        print(name, len(ids), new[:10], repr(out["models"][name]["reply"][:80]))
    pathlib.Path(a.out).write_text(json.dumps(out, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
