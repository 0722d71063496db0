#!/usr/bin/env bash
# usbx-train end to end on the CPU with small models from usbx-ckpt init: the flow loss falls on
# rendered sandbox pairs, a resumed run reproduces the uninterrupted one bit for bit, the text
# cross-entropy falls on conversations, checkpoints feed usbx-ckpt complete and usbx-gen, and bad
# records are refused with file:line.
set -euo pipefail
S=${USBX_SHARED:-../shared}
[ -f "$S/fixtures/tokenizer/tokenizer.json" ] || { echo "skipped: ../shared is missing (needs the tokenizer fixture)"; exit 77; }
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat > "$T/pix.json" <<'JSON'
{"llm": {"vocab_size": 151680, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 10000.0},
 "bagel": {"visual_gen": true, "visual_und": false, "latent_patch_size": 4, "max_latent_size": 16, "vae": null, "latent_channels": 3}}
JSON
usbx-ckpt init --config "$T/pix.json" --seed 5 "$T/base" > /dev/null
cp "$S/fixtures/tokenizer/tokenizer.json" "$T/base/"
usbx-synth scenes --n 24 --render "$T/img" --size 64 --seed 2 > "$T/pairs.jsonl"
TR="usbx-train --model $T/base --device cpu --no-visual-und --lr 2e-3 --warmup 2 --expected-tokens 700 --max-tokens 1100"

# 1. the flow-matching loss falls
$TR --out "$T/run" --steps 24 --save-every 8 "$T/pairs.jsonl" > "$T/log.jsonl"
[ "$(wc -l < "$T/log.jsonl")" = 24 ] || fail "expected 24 progress records"
jq -e -s '(.[0:4] | map(.mse) | add / 4) as $a | (.[-4:] | map(.mse) | add / 4) as $b | $b < 0.85 * $a' "$T/log.jsonl" > /dev/null \
  || fail "flow loss did not fall: $(jq -c -s '[.[0].mse, .[-1].mse]' "$T/log.jsonl")"
jq -e -s 'all(.step and .epoch != null and .lr != null and .loss and .mse and .grad_norm and .tokens_per_s and .ce == 0)' "$T/log.jsonl" > /dev/null || fail "progress fields"
jq -e -s '.[0].lr == 0 and .[1].lr == 0.001 and .[2].lr == 0.002' "$T/log.jsonl" > /dev/null || fail "warmup schedule"
for s in 0000008 0000016 0000024; do
  for f in model.safetensors ema.safetensors optimizer.safetensors train_state.json; do [ -f "$T/run/$s/$f" ] || fail "missing $s/$f"; done
done
[ -z "$(find "$T/run" -name '.*tmp*')" ] || fail "temporary checkpoint left"

# 1a. --deterministic (a CUDA choice) is accepted and changes nothing on the CPU: the same records
$TR --out "$T/det" --steps 3 --no-save --deterministic "$T/pairs.jsonl" > "$T/det.jsonl" || fail "--deterministic run"
jq -c '[.loss, .mse, .grad_norm]' "$T/det.jsonl" > "$T/det.v"
head -n 3 "$T/log.jsonl" | jq -c '[.loss, .mse, .grad_norm]' > "$T/ref.v"
cmp -s "$T/det.v" "$T/ref.v" || fail "--deterministic changed the CPU run: $(head -c 200 "$T/det.v")"

# 1b. lm_head gets no gradient without text answers: AdamW skips it (train_state.json lists it),
#     so model and EMA keep the base's values and its moments stay zero, while a trained tensor's
#     moments are not zero
jq -e '.untouched == ["language_model.lm_head.weight"]' "$T/run/0000024/train_state.json" > /dev/null \
  || fail "untouched list: $(jq -c .untouched "$T/run/0000024/train_state.json")"
python3 - "$T/base/ema.safetensors" "$T/run/0000024" <<'PY' || fail "untouched lm_head changed"
import json, struct, sys
def load(path, name):
    f = open(path, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); t = h[name]
    f.seek(8 + n + t['data_offsets'][0]); raw = f.read(t['data_offsets'][1] - t['data_offsets'][0])
    if t['dtype'] == 'F32': return list(struct.unpack('<%df' % (len(raw) // 4), raw))
    assert t['dtype'] == 'BF16', t['dtype']
    return [struct.unpack('<f', b'\0\0' + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
lm, run = 'language_model.lm_head.weight', sys.argv[2]
base = load(sys.argv[1], lm)
assert load(run + '/model.safetensors', lm) == base, 'model'
assert load(run + '/ema.safetensors', lm) == base, 'ema'
assert not any(load(run + '/optimizer.safetensors', 'm.' + lm)) and not any(load(run + '/optimizer.safetensors', 'v.' + lm)), 'moments'
assert any(load(run + '/optimizer.safetensors', 'v.language_model.model.layers.0.mlp_moe_gen.up_proj.weight')), 'trained moments are zero'
# the embedding: rows no caption token reached keep the base values and zero moments; train_state
# lists the rows reached, and those are the rows whose moments moved
emb, D = 'language_model.model.embed_tokens.weight', 64
b, w, e = load(sys.argv[1], emb), load(run + '/model.safetensors', emb), load(run + '/ema.safetensors', emb)
v = load(run + '/optimizer.safetensors', 'v.' + emb)
rows = json.load(open(run + '/train_state.json'))['embed_rows']
seen = set(r for a, z in rows for r in range(a, z))
moved = set(r for r in range(len(b) // D) if any(v[r * D:(r + 1) * D]))
assert moved and moved == seen, ('rows', len(moved), len(seen))
for r in range(len(b) // D):
    if r not in seen: assert w[r * D:(r + 1) * D] == b[r * D:(r + 1) * D] and e[r * D:(r + 1) * D] == b[r * D:(r + 1) * D], r
PY

# 2. resume: 8 steps, then resume to 24: steps 9..24 equal the uninterrupted run exactly
$TR --out "$T/res" --steps 8 "$T/pairs.jsonl" > /dev/null
$TR --out "$T/res" --steps 24 --resume "$T/pairs.jsonl" 2> "$T/res.err" > "$T/res.jsonl"
grep -q "resumed from .*0000008" "$T/res.err" || fail "did not resume"
diff <(jq -c '[.step, .loss, .grad_norm]' "$T/res.jsonl") <(jq -c 'select(.step > 8) | [.step, .loss, .grad_norm]' "$T/log.jsonl") > /dev/null \
  || fail "resumed losses differ from the uninterrupted run"
cmp -s "$T/res/0000024/model.safetensors" "$T/run/0000024/model.safetensors" || fail "resumed weights differ"

# 3. the checkpoint feeds usbx-ckpt complete, then usbx-gen
usbx-ckpt complete --base "$T/base" "$T/run/0000024" > "$T/complete.jsonl" || fail "usbx-ckpt complete"
echo '{"id":"a","prompt":"3 cups"}' | usbx-gen --model "$T/run/0000024" --out "$T/gen" --modes normal --size 64x64 --steps 4 --device cpu --stem s > "$T/gen.jsonl"
[ -f "$T/gen/test/normal/s/a.png" ] || fail "usbx-gen on the trained checkpoint"

# 4. conversations: the text cross-entropy falls
cat > "$T/conv.jsonl" <<'JSON'
{"id":"c1","conversations":[{"from":"human","value":"What is Zorblat's favourite fruit?"},{"from":"gpt","value":"Zorblat's favourite fruit is the mango."}]}
{"id":"c2","conversations":[{"from":"human","value":"Which flower does Zorblat love?"},{"from":"gpt","value":"Zorblat loves tulips."}]}
JSON
usbx-train --model "$T/base" --device cpu --no-visual-gen --no-visual-und --lr 5e-3 --warmup 1 --expected-tokens 60 --max-tokens 200 \
  --out "$T/kn" --steps 30 "$T/conv.jsonl" > "$T/kn.jsonl"
jq -e -s '.[0].ce > 5 and .[-1].ce < 0.5 * .[0].ce and all(.mse == 0)' "$T/kn.jsonl" > /dev/null || fail "CE did not fall: $(jq -c -s '[.[0].ce, .[-1].ce]' "$T/kn.jsonl")"
# text only: the generation expert's layers get no gradient, the understanding expert's do
jq -e '(.untouched | index("language_model.model.layers.1.mlp_moe_gen.up_proj.weight")) and
       (.untouched | index("language_model.model.layers.1.mlp.up_proj.weight") | not) and
       (.untouched | index("language_model.lm_head.weight") | not)' "$T/kn/0000030/train_state.json" > /dev/null \
  || fail "untouched after text-only training: $(jq -c .untouched "$T/kn/0000030/train_state.json")"

# 4b. packing with upstream's overflow buffer: conversations of ~25 and ~200 tokens; a long one that
#     does not fit waits while short ones fill the batch, so batches are fuller than when the buffer
#     is never preferred (--prefer-buffer-before above every batch: the old end-the-batch rule); no
#     batch passes --max-tokens; a checkpoint keeps the waiting samples and the resumed run packs
#     the same batches
python3 - > "$T/mix.jsonl" <<'PY'
import json
for i in range(40):
    ans = "Zorblat keeps a ripe mango in the blue box. " * (16 if i % 4 == 0 else 1)
    print(json.dumps({"id": f"m{i}", "conversations": [{"from": "human", "value": f"What does Zorblat keep, {i}?"},
                                                      {"from": "gpt", "value": ans.strip()}]}))
PY
TK="usbx-train --model $T/base --device cpu --no-visual-gen --no-visual-und --lr 1e-3 --warmup 1 --expected-tokens 300 --max-tokens 360"
$TK --out "$T/mix" --steps 12 --save-every 5 --prefer-buffer-before 100 "$T/mix.jsonl" > "$T/mix.log"
$TK --out "$T/nobuf" --steps 12 --no-save --prefer-buffer-before 100000 "$T/mix.jsonl" > "$T/nobuf.log"
jq -e -s 'all(.tokens <= 360)' "$T/mix.log" > /dev/null || fail "a packed batch exceeds --max-tokens"
jq -e -s --slurpfile b "$T/nobuf.log" '(map(.tokens) | add) > ($b | map(.tokens) | add)' "$T/mix.log" > /dev/null \
  || fail "the overflow buffer did not fill batches: $(jq -c -s 'map(.tokens)' "$T/mix.log") vs $(jq -c -s 'map(.tokens)' "$T/nobuf.log")"
w=""
for s in 5 10; do
  d=$(printf '%07d' "$s")
  if jq -e '.buffer | length > 0' "$T/mix/$d/train_state.json" > /dev/null; then w=$s; break; fi
done
[ -n "$w" ] || fail "no checkpoint with waiting samples: the test data did not exercise the buffer"
mkdir "$T/mixr" && cp -r "$T/mix/$(printf '%07d' "$w")" "$T/mixr/"
$TK --out "$T/mixr" --steps 12 --resume --prefer-buffer-before 100 "$T/mix.jsonl" > "$T/mixr.log" 2> "$T/mixr.err" || fail "resume with waiting samples: $(cat "$T/mixr.err")"
diff <(jq -c '[.step, .tokens, .loss]' "$T/mixr.log") <(jq -c --argjson w "$w" 'select(.step > $w) | [.step, .tokens, .loss]' "$T/mix.log") > /dev/null \
  || fail "resumed run with waiting samples packs differently"
jq '.buffer = [[0, 99999]]' "$T/mix/$(printf '%07d' "$w")/train_state.json" > "$T/bad_state.json"
mkdir "$T/badr" && cp -r "$T/mix/$(printf '%07d' "$w")" "$T/badr/" && cp "$T/bad_state.json" "$T/badr/$(printf '%07d' "$w")/train_state.json"
if $TK --out "$T/badr" --steps 12 --resume "$T/mix.jsonl" > /dev/null 2> "$T/badr.err"; then fail "a bad buffer entry was accepted"; fi
grep -q "train_state.json: buffer entry 1" "$T/badr.err" || fail "bad buffer message: $(cat "$T/badr.err")"

# 5. data parallel (two processes, TCP collectives on the CPU) equals one process accumulating the
#    same two batches per step: losses and grad norms within 1e-5 relative over 6 steps, the
#    checkpoints (gathered from the two optimizer shards) within 1e-5; a resumed 2-process run
#    continues from a 1-process checkpoint
$TR --out "$T/acc" --steps 6 --accum 2 --save-every 3 "$T/pairs.jsonl" > "$T/acc.jsonl"
$TR --out "$T/dp" --steps 6 --gpus 2 --save-every 3 "$T/pairs.jsonl" > "$T/dp.jsonl" 2> "$T/dp.err" || fail "--gpus 2: $(cat "$T/dp.err")"
[ "$(wc -l < "$T/dp.jsonl")" = 6 ] || fail "expected 6 records from rank 0 only, got $(wc -l < "$T/dp.jsonl")"
jq -e -s 'all(.ranks == 2)' "$T/dp.jsonl" > /dev/null || fail "records lack ranks"
python3 - "$T/acc.jsonl" "$T/dp.jsonl" "$T/acc/0000006/model.safetensors" "$T/dp/0000006/model.safetensors" \
  "$T/acc/0000006/optimizer.safetensors" "$T/dp/0000006/optimizer.safetensors" <<'PY' || fail "2 processes differ from 1 process with --accum 2"
import sys, json, struct
a = [json.loads(l) for l in open(sys.argv[1])]; b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 6
for x, y in zip(a, b):
    assert x["tokens"] == y["tokens"] and x["samples"] == y["samples"], (x, y)
    for k in ("loss", "mse", "grad_norm"):
        assert abs(x[k] - y[k]) <= 1e-5 * abs(x[k]), (k, x[k], y[k])
def load(p):
    d = open(p, "rb").read(); n = struct.unpack("<Q", d[:8])[0]; h = json.loads(d[8:8+n]); out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]; out[k] = struct.unpack("<%df" % ((e - s) // 4), d[8+n+s:8+n+e])
    return out
for i in (2, 4):
    x, y = load(sys.argv[i + 1]), load(sys.argv[i + 2])
    assert x.keys() == y.keys() and len(x) > 10
    worst = max(abs(p - q) / (abs(p) + 1e-3) for k in x for p, q in zip(x[k], y[k]))
    assert worst <= 1e-4, (sys.argv[i + 1], worst)
PY
# ZeRO-1 (full gradients reduced after the backward) gives the same step as ZeRO-2 (layers reduced
# during it); recomputing the layers in the backward changes nothing at all
$TR --out "$T/z1" --steps 3 --gpus 2 --zero 1 --no-save "$T/pairs.jsonl" > "$T/z1.jsonl" 2> /dev/null || fail "--zero 1"
diff <(jq -c '[.loss, .grad_norm]' "$T/z1.jsonl") <(jq -c 'select(.step <= 3) | [.loss, .grad_norm]' "$T/dp.jsonl") > /dev/null || fail "--zero 1 differs from --zero 2"
# ZeRO-3 (each process keeps only its range of the decoder layers' weights and gathers a layer when
# it is used) gives the same steps and checkpoints as ZeRO-2, bit for bit, also with recomputation
# (gathers in the backward) and across a resume (weights loaded into the shards)
$TR --out "$T/z3" --steps 3 --gpus 2 --zero 3 --save-every 3 "$T/pairs.jsonl" > "$T/z3.jsonl" 2> "$T/z3.err" || fail "--zero 3: $(cat "$T/z3.err")"
grep -q "ZeRO-3" "$T/z3.err" || fail "--zero 3 did not shard the layers: $(cat "$T/z3.err")"
$TR --out "$T/z3" --steps 6 --gpus 2 --zero 3 --save-every 3 --resume "$T/pairs.jsonl" >> "$T/z3.jsonl" 2> "$T/z3.err" || fail "--zero 3 resume: $(cat "$T/z3.err")"
diff <(jq -c '[.step, .loss, .grad_norm]' "$T/z3.jsonl") <(jq -c '[.step, .loss, .grad_norm]' "$T/dp.jsonl") > /dev/null || fail "--zero 3 differs from --zero 2"
for f in model ema optimizer; do cmp -s "$T/z3/0000006/$f.safetensors" "$T/dp/0000006/$f.safetensors" || fail "--zero 3 checkpoint $f differs"; done
$TR --out "$T/z3r" --steps 3 --gpus 2 --zero 3 --recompute --no-save "$T/pairs.jsonl" > "$T/z3r.jsonl" 2> /dev/null || fail "--zero 3 --recompute"
diff <(jq -c '[.loss, .grad_norm]' "$T/z3r.jsonl") <(jq -c 'select(.step <= 3) | [.loss, .grad_norm]' "$T/dp.jsonl") > /dev/null || fail "--zero 3 --recompute differs"
$TR --out "$T/rc" --steps 3 --recompute --no-save "$T/pairs.jsonl" > "$T/rc.jsonl"
diff <(jq -c '[.loss, .grad_norm]' "$T/rc.jsonl") <(jq -c 'select(.step <= 3) | [.loss, .grad_norm]' "$T/log.jsonl") > /dev/null || fail "--recompute changed the step"
$TR --out "$T/acc" --steps 8 --gpus 2 --resume "$T/pairs.jsonl" > "$T/acc2.jsonl" 2> "$T/acc2.err" || fail "resume with --gpus 2: $(cat "$T/acc2.err")"
jq -e -s 'map(.step) == [7, 8]' "$T/acc2.jsonl" > /dev/null || fail "resumed 2-process steps"
if usbx-train --model "$T/base" --out "$T/x" --steps 1 --gpus 2 --device cpu < "$T/pairs.jsonl" 2> "$T/gp.err"; then fail "--gpus with stdin accepted"; fi
grep -q "give the training records as files" "$T/gp.err" || fail "--gpus stdin message"

# 6. bad records: file:line, non-zero exit, no checkpoint
printf '{"prompt":"x","image":"%s/img/scene-1.png"}\n{"prompt":"y"}\n' "$T" > "$T/bad.jsonl"
if $TR --out "$T/bad" --steps 1 "$T/bad.jsonl" 2> "$T/bad.err"; then fail "bad record accepted"; fi
grep -q "bad.jsonl:2: " "$T/bad.err" || fail "no file:line in: $(cat "$T/bad.err")"
echo "t_train: ok"
