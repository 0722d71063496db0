"""PyTorch baseline for usbx-train's MFU: one training step of a plain Qwen2 decoder (transformers,
SDPA, causal) at the shape of a config's "llm" object, on S samples of T tokens, with a small linear
head and an MSE loss standing in for the flow head (usbx's step on image pairs runs no lm_head).
fp32 master weights, bf16 autocast, fused AdamW: what a PyTorch user gets without FSDP.  The same
model-FLOP count as usbx-train's mfu (6 x layer weights per token + 12 L (H d) S^2 per sample).
--bidirectional makes every layer's attention non-causal (BAGEL's noisy image tokens see their whole
image; checked: the first token's output must depend on the last token), --ema keeps an fp32 EMA
of the weights updated after each step (as upstream's trainer and usbx-train do): with both, the
baseline does the work of usbx-train's step.  Prints one JSON line.  Run on the GPU machine:
  python3 benchmark/torch_train_baseline.py --config benchmark/mfu-1p5b.json --samples 2 --tokens 4096
"""
import argparse, json, time, torch
from transformers import Qwen2Config, Qwen2Model

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--samples", type=int, default=2)
ap.add_argument("--tokens", type=int, default=4096)
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--bidirectional", action="store_true")
ap.add_argument("--ema", action="store_true")
a = ap.parse_args()
llm = json.load(open(a.config))["llm"]
cfg = Qwen2Config(**{k: v for k, v in llm.items() if k not in ("architectures",)})
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
with torch.device("cuda"):
    model = Qwen2Model(cfg)
    head = torch.nn.Linear(cfg.hidden_size, 48)
params = list(model.parameters()) + list(head.parameters())
opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.0, fused=True)
ids = torch.randint(0, 150000, (a.samples, a.tokens), device="cuda")
if a.bidirectional:
    for layer in model.layers: layer.self_attn.is_causal = False
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        probe = ids[:1, :64].clone()
        h1 = model(input_ids=probe).last_hidden_state[0, 0].float()
        probe[0, -1] = (probe[0, -1] + 1) % 150000
        h2 = model(input_ids=probe).last_hidden_state[0, 0].float()
    assert not torch.equal(h1, h2), "--bidirectional: the first token does not see the last (attention still causal)"
ema = [p.detach().clone() for p in params] if a.ema else None
target = torch.randn(a.samples, a.tokens, 48, device="cuda")
times = []
for step in range(a.steps):
    torch.cuda.synchronize(); t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = model(input_ids=ids).last_hidden_state
        loss = torch.nn.functional.mse_loss(head(h).float(), target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    if ema is not None: torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - 0.9999)
    torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
dt = sum(times[2:]) / len(times[2:])
D, F, L, H, Hkv, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
layer_w = D * (H * d * 2 + 2 * Hkv * d) + 3 * D * F
n = a.samples * a.tokens
flops = 6 * L * layer_w * n + 12 * L * H * d * a.samples * a.tokens ** 2
print(json.dumps({"bench": "train", "backend": "pytorch %s, fp32 weights + bf16 autocast, sdpa%s, fused AdamW%s (%s)" % (
                      torch.__version__, " bidirectional" if a.bidirectional else " causal", " + fp32 EMA" if a.ema else "", torch.cuda.get_device_name()),
                  "tokens": n, "s_per_step": dt, "tokens_per_s": n / dt, "tflops": flops / dt / 1e12, "mfu": flops / dt / 989e12,
                  "peak_gib": torch.cuda.max_memory_allocated() / 2**30}))
