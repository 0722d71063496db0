"""PyTorch composition of usbx's text-to-image step at the 7B-MoT shape, for the same card in the
same run: the 4098-token denoising query (one RoPE position, full attention over a short prompt
context plus itself) through 28 MoT decoder layers (markers through the und weights, latents
through the gen weights), bf16 weights and activations, cuBLAS GEMMs and SDPA, as upstream's
"gen" mode does.  Times one forward and reports 90 forwards (UniSandbox: 41 CFG steps x 2 +
8 steps x 1).  The VAE decode is timed separately with a FLUX-shaped decoder built from
torch.nn layers (random weights).  Prints one JSON line.  --warm-s S first runs forwards for S
seconds, so that the timed ones see the clocks of a whole image (the card holds its power limit then;
a few forwards alone run at the boost clock).
  python3 benchmark/torch_gen_baseline.py --size 1024 [--warm-s 6]
"""
import argparse, json, time, math, torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--ctx", type=int, default=20)
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--warm-s", type=float, default=0.0)
a = ap.parse_args()
torch.manual_seed(0)
dev, dt = "cuda", torch.bfloat16
D, F_, H, HKV, d, L = 3584, 18944, 28, 4, 128, 28
N = (a.size // 16) ** 2
T = N + 2

def lin(o, i): return (torch.randn(o, i, device=dev, dtype=dt) * 0.02)
layers = []
for l in range(L):
    e = []
    for x in range(2):
        e.append(dict(q=lin(H*d, D), k=lin(HKV*d, D), v=lin(HKV*d, D), o=lin(D, H*d), g=lin(F_, D), u=lin(F_, D), dn=lin(D, F_),
                      qb=torch.zeros(H*d, device=dev, dtype=dt), kb=torch.zeros(HKV*d, device=dev, dtype=dt), vb=torch.zeros(HKV*d, device=dev, dtype=dt),
                      n1=torch.ones(D, device=dev, dtype=dt), n2=torch.ones(D, device=dev, dtype=dt),
                      qn=torch.ones(d, device=dev, dtype=dt), kn=torch.ones(d, device=dev, dtype=dt)))
    ck = torch.randn(a.ctx, HKV, d, device=dev, dtype=dt); cv = torch.randn(a.ctx, HKV, d, device=dev, dtype=dt)
    layers.append((e, ck, cv))

def rms(x, w, eps=1e-6):
    xf = x.float(); return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w

def rope(x, pos, theta=1e6):
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    ang = pos * inv; c = torch.cat([ang.cos(), ang.cos()]).to(x.dtype); s = torch.cat([ang.sin(), ang.sin()]).to(x.dtype)
    x1, x2 = x[..., :d//2], x[..., d//2:]
    return x * c + torch.cat([-x2, x1], -1) * s

def forward(x):
    pos = float(a.ctx)
    idx = [slice(0, 2), slice(2, T)]
    for e, ck, cv in layers:
        q = torch.empty(T, H, d, device=dev, dtype=dt); k = torch.empty(T, HKV, d, device=dev, dtype=dt); v = torch.empty_like(k)
        for ex, sl in zip(e, idx):
            h = rms(x[sl], ex["n1"])
            q[sl] = rope(rms(F.linear(h, ex["q"], ex["qb"]).view(-1, H, d), ex["qn"]), pos)
            k[sl] = rope(rms(F.linear(h, ex["k"], ex["kb"]).view(-1, HKV, d), ex["kn"]), pos)
            v[sl] = F.linear(h, ex["v"], ex["vb"]).view(-1, HKV, d)
        K = torch.cat([ck, k]); V = torch.cat([cv, v])
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], K.transpose(0, 1)[None], V.transpose(0, 1)[None], enable_gqa=True)
        o = o[0].transpose(0, 1).reshape(T, H * d)
        for ex, sl in zip(e, idx):
            x[sl] = x[sl] + F.linear(o[sl], ex["o"])
            h = rms(x[sl], ex["n2"])
            x[sl] = x[sl] + F.linear(F.silu(F.linear(h, ex["g"])) * F.linear(h, ex["u"]), ex["dn"])
    return x

x0 = torch.randn(T, D, device=dev, dtype=dt)
with torch.inference_mode():
    for _ in range(2): forward(x0.clone())
    torch.cuda.synchronize(); t0 = time.perf_counter()
    while time.perf_counter() - t0 < a.warm_s:
        forward(x0.clone()); torch.cuda.synchronize()
    ts = []
    for _ in range(a.reps):
        torch.cuda.synchronize(); t0 = time.perf_counter(); forward(x0.clone()); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
ts.sort(); fwd = ts[len(ts) // 2]
flops = 2 * T * (2 * (H*d*D + 2*HKV*d*D + D*H*d + 3*F_*D)) * L / 2 + 4 * T * (T + a.ctx) * H * d * L
print(json.dumps({"bench": "torch_gen", "backend": "pytorch %s bf16 sdpa (%s)" % (torch.__version__, torch.cuda.get_device_name()),
                  "size": a.size, "warm_s": a.warm_s, "query_tokens": T, "s_per_forward": fwd, "tflops_per_forward": flops / 1e12,
                  "achieved_tflops": flops / fwd / 1e12, "s_per_image_llm_90_forwards": 90 * fwd}))
