"""PyTorch baseline for bench_llm: the same language-model math (Qwen2 decoder, bf16, SDPA) at
a given shape with random weights, timed the same way: prefill of N tokens, then batch-1 greedy
decode steps with a KV cache.  It uses one expert (plain Qwen2), which is exactly what BAGEL's
text path runs.  Prints one JSON line.  Run on the GPU machine:
  python3 benchmark/torch_llm_baseline.py --config DIR/llm_config.json --prefill 1000 --decode 200
"""
import argparse, json, time, torch
from transformers import Qwen2Config, Qwen2ForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--prefill", type=int, default=1000)
ap.add_argument("--decode", type=int, default=200)
ap.add_argument("--reps", type=int, default=3)
a = ap.parse_args()
cfg = Qwen2Config(**{k: v for k, v in json.load(open(a.config)).items() if k not in ("architectures",)})
cfg.tie_word_embeddings = False
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
with torch.device("cuda"):
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
ids = torch.randint(0, min(cfg.vocab_size, 150000), (1, a.prefill), device="cuda")
pre, dec = [], []
with torch.inference_mode():
    for rep in range(a.reps + 1):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        torch.cuda.synchronize(); t1 = time.perf_counter()
        past = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        for _ in range(a.decode):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize(); t2 = time.perf_counter()
        if rep:
            pre.append(t1 - t0); dec.append(t2 - t1)
pre.sort(); dec.sort()
p, d = pre[len(pre) // 2], dec[len(dec) // 2]
print(json.dumps({"bench": "llm", "backend": "pytorch %s bf16 sdpa (%s)" % (torch.__version__, torch.cuda.get_device_name()),
                  "prefill_tokens": a.prefill, "prefill_s": p, "prefill_tok_per_s": a.prefill / p,
                  "decode_tokens": a.decode, "decode_tok_per_s": a.decode / d, "decode_ms_per_tok": 1e3 * d / a.decode}))
