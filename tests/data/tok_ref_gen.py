#!/usr/bin/env python3
"""Reference data for tests/test_tokenizer.c, computed with Hugging Face `tokenizers`.

  python3 tests/data/tok_ref_gen.py tiny            # writes tests/data/tok_tiny*.json (no tokenizers needed)
  python3 tests/data/tok_ref_gen.py ref QWEN_TOKENIZER_JSON OUTDIR
      -> OUTDIR/tok_ref.jsonl (cases + reference ids/decodes), OUTDIR/unicode_probe.json (regex classes
         and NFC per code point as the Rust/Oniguruma side sees them), OUTDIR/info.txt

tok_ref.jsonl lines: {"tok": "qwen"|"tiny"|"tiny_legacy"|"tiny_im", "name", "text", "ids", "dec", "dec_skip"}
(dec/dec_skip = decode(ids) with skip_special_tokens False/True), decode-only lines without "text",
the "snippets" line and the "mixed1mb" line (n ids, FNV-1a 64 hash of the ids as little-endian u32).

The committed tok_ref.jsonl came from one run on 2026-11-26 (tokenizers 0.23.2; transformers 5.17.0's
slow Qwen2Tokenizer agreed on every case).  That run had no "tiny*" lines: the tiny tokenizer then
listed a merge ("Ġh", "ell") whose part was not in its vocabulary and tokenizers refused the file (as
usbx_tok_load does); the merge was removed afterwards, so test_tokenizer.c checks the tiny tokenizers
against hand-derived ids.  Rerunning this script would add HF-computed tiny lines.
"""
import json, os, sys

QWEN_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
           "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
HERE = os.path.dirname(os.path.abspath(__file__))


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_tokenizer(legacy=False, ignore_merges=False):
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"),
              ("Ġwor", "l"), ("Ġworl", "d"), ("a", "a"), ("aa", "a"), ("aa", "aa"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"),
              ("e", "r"), ("t", "h"), ("th", "er"), ("Ġ", "h"), ("w", "or"), ("wor", "d"),
              ("Ã", "©"), ("c", "a"), ("ca", "f")]
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    vocab["xyz"] = len(vocab)          # only reachable whole (ignore_merges) or never
    added = []
    def add(content, special, normalized=False, lstrip=False, rstrip=False, single_word=False):
        added.append({"id": len(vocab) + len(added), "content": content, "single_word": single_word,
                      "lstrip": lstrip, "rstrip": rstrip, "normalized": normalized, "special": special})
    add("<sp>", True)
    add("<sp><x>", True)
    add("[L]", True, lstrip=True)
    add("[R]", False, rstrip=True)
    add("word", False, single_word=True)
    add("é", False, normalized=True)
    add("A\u030a", False, normalized=True)
    add("<a b>", False)
    add("[LR]", True, lstrip=True, rstrip=True)
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_RE}, "behavior": "Isolated", "invert": False}, bl]},
        "post_processor": bl, "decoder": bl,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab,
                  "merges": [a + " " + b for a, b in merges] if legacy else [[a, b] for a, b in merges]},
    }


TINY = {"tiny": dict(), "tiny_legacy": dict(legacy=True), "tiny_im": dict(ignore_merges=True)}

TINY_CASES = ["hello world", "hello<sp>world", "<sp><x><sp><x>", "<sp><x<sp>", "a [L] b", "a  [L]b", "x[R]  y",
              "[R] [R]", "word words sword word", "a word.", "_word", "1word", "wordé", "word\u0301", "caf\u00e9",
              "cafe\u0301", "A\u030a", "\u00c5", "x\u212b", "<a b>", "<a  b>", "aaaaa", "aaaaaaa", "aaaa aaa",
              "hello hello", "  hello", "[L][L]", "  [L]  [R]  ", "worword word", "xyz", "xyzxyz", " xyz",
              "  [LR]  ", "\t[LR]\n", "the other", "", " ", "<sp>", "\u3000[L]"]


def snippets():
    return ["The quick brown fox jumps over the lazy dog. ", "Generate as many cups as the result of 8 / 4.\n",
            "敏捷的棕色狐狸跳过了懒狗。", "日本語のテキストと、カタカナ・ひらがな。", "빠른 갈색 여우가 게으른 개를 뛰어넘는다. ",
            "Съешь же ещё этих мягких французских булок. ", "الثعلب البني السريع يقفز فوق الكلب الكسول. ",
            "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। ", "El pingüino comió jamón. ", "Ça coûte 12,50 €. ",
            "Größe: 3½ Fuß. ", "cafe\u0301 re\u0301sume\u0301 ", "A\u030a\u212b ", "\u1100\u1161\u11a8 ",
            "👍🏽🇺🇸❤️👨‍👩‍👧 ", "  \t  ", "\r\n", "\n\n\n", "1234567890", "x = f(y) + 0x1F; // ok\n",
            "<div class=\"a\">b</div>", "<|im_start|>", "<|im_end|>", "I'm sure they'll say it's DON'T. ",
            "http://example.com/a?b=c&d=e ", "user@example.org ", "\u00a0\u2028\u3000", "ſ'ſ'S ", "\u0000",
            "…—–“”‘’ ", "ä" * 7, " " * 33, "Ǆǅǆ ", "\u0958\u0915\u093c "]


def gen_mixed(snips, nbytes=1 << 20, seed=0x1234567):
    out, total, s = [], 0, seed
    while total < nbytes:
        s = (s * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        t = snips[(s >> 33) % len(snips)]
        out.append(t)
        total += len(t.encode("utf-8"))
    return "".join(out)


def fnv_ids(ids):
    h = 0xcbf29ce484222325
    for i in ids:
        for k in range(4):
            h ^= (i >> (8 * k)) & 0xFF
            h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def gen_long_word(n=8000, seed=99):
    s, out = seed, []
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append("abcdefghijklmnopqrstuvwxyzé"[(s >> 33) % 27])
    return "".join(out)


def qwen_cases():
    c = []
    c.append(("empty", ""))
    c.append(("all_bytes", "".join(chr(i) for i in range(256))))
    for i in range(256):
        ch = chr(i)
        c.append(("byte_%02x" % i, ch + "x" + ch + ch + " " + ch + "7'" + ch + "\r\n" + ch))
    nfc = ["e\u0301", "cafe\u0301 ", "A\u030a", "\u212b", "\u1100\u1161\u11a8", "a\u0323\u0302", "a\u0302\u0323",
           "A\u0300\u0301", "\uf900\uf901", "\u0344", "\u0958", "\u0915\u093c", "re\u0301sume\u0301 re\u0301sume\u0301",
           "\u00c5\u0301", "o\u0308\u0304", "\u1e9b\u0323", "\u0301", " \u0301", "x \u0301y", "\u2126 \u00b5 \u03bc",
           "\ufb01 ﬁ", "\u0041\u030a\u0301"]
    for k, t in enumerate(nfc):
        c.append(("nfc_%d" % k, t))
    sp = ["<|im_start|>", "<|im_start|><|im_end|>", "<|endoftext|><|endoftext|><|endoftext|>",
          "<|vision_start|><|vision_end|>", "<think></think>", "<|im_end|>\n<|im_start|>",
          "<|endoftext|><|im_start|><|im_end|><|object_ref_start|><|object_ref_end|><|box_start|><|box_end|>"
          "<|quad_start|><|quad_end|><|vision_start|><|vision_end|><|vision_pad|><|image_pad|><|video_pad|>"
          "<tool_call></tool_call><|fim_prefix|><|fim_middle|><|fim_suffix|><|fim_pad|><|repo_name|><|file_sep|>"
          "<tool_response></tool_response><think></think>"]
    for k, t in enumerate(sp):
        c.append(("special_%d" % k, t))
    near = ["<|im_start", "<|im_start|", "<<|im_end|>>", "<|im_start|>>", " <|im_end|> ", "<|IM_START|>",
            "<|im_start|>\u0301", "e<|im_end|>\u0301", "<|im_start|>user\nhi<|im_end|>", "<think>\nok\n</think>\n\n",
            "<thinking>", "<|im_end|<|im_end|>", "a<|endoftext|>b"]
    for k, t in enumerate(near):
        c.append(("near_%d" % k, t))
    ws = ["a\u00a0b", "a\u2028b", "a\u2029b", "a\u3000 b", "a\u180eb", "a\u0085b", "a\u001cb", "a\u001fb",
          "a\u000bb\u000cc", "  \n\n  x", "\t\t", " " * 20, "x" + " " * 20, " " * 20 + "x", "\r\n\r\n",
          "a \r\n b", "\n \n", "\u200b", "\ufeff", "a\u2000\u2001\u200a b", "a\u202f\u205fb", "x  \u00a0 y",
          " \u00a0\n", "\r\r\n\n", "a\rb", "  ?!\r\n\r\n", "!!!\n\n  ", "a \u3000\u3000b", "\u1680x"]
    for k, t in enumerate(ws):
        c.append(("ws_%d" % k, t))
    con = ["I'm", "I'M", "don't", "DON'T", "we'll", "WE'LL", "'s", "'ſ", "'S's", "''s", "it's 'tis",
           "they've THEY'VE you're YOU'RE he'd HE'D", "'\u212a", "x'ſt", "'ſ's", "l'été", "’s"]
    for k, t in enumerate(con):
        c.append(("contr_%d" % k, t))
    num = ["1234567890", "٣٤٥", "½ ² Ⅻ ①", "3.14159", "x1y22z333", "१२३", "１２３", "𝟙𝟚"]
    for k, t in enumerate(num):
        c.append(("num_%d" % k, t))
    misc = ["👍🏽", "🇺🇸", "❤️", "👨‍👩‍👧", "\u0000", "a\u0000b", "\U0010ffff\U000e0001", "\ue000",
            "ǅungla", "ΑΒΓ αβγ", "𐐀𐐨", "a" * 3000, "ab" * 1500, "​".join("abc"), "x" * 257,
            "敏捷的棕色狐狸" * 50, "#" * 100, "🙂" * 100, "\n" * 50 + "x"]
    for k, t in enumerate(misc):
        c.append(("misc_%d" % k, t))
    c.append(("long_word", gen_long_word()))
    return c


def write_tiny():
    for name, kw in TINY.items():
        with open(os.path.join(HERE, "tok_%s.json" % name), "w", encoding="utf-8") as f:
            json.dump(tiny_tokenizer(**kw), f, ensure_ascii=False, indent=1)
            f.write("\n")


def main_ref(qwen_path, outdir):
    import tokenizers
    from tokenizers import Tokenizer
    os.makedirs(outdir, exist_ok=True)
    info = open(os.path.join(outdir, "info.txt"), "w")
    info.write("tokenizers %s\n" % tokenizers.__version__)
    out = open(os.path.join(outdir, "tok_ref.jsonl"), "w")

    def rec(d):
        out.write(json.dumps(d, ensure_ascii=True) + "\n")

    def case(tok, tname, name, text):
        ids = tok.encode(text).ids
        rec({"tok": tname, "name": name, "text": text, "ids": ids,
             "dec": tok.decode(ids, skip_special_tokens=False), "dec_skip": tok.decode(ids, skip_special_tokens=True)})

    def safe(fn):
        try:
            fn()
        except Exception as e:  # noqa
            info.write("failed: %r\n" % e)

    qwen = Tokenizer.from_file(qwen_path)
    for name, text in qwen_cases():
        try:
            case(qwen, "qwen", name, text)
        except Exception as e:  # noqa
            info.write("qwen case %s failed: %r\n" % (name, e))
    # decode-only cases: raw byte sequences as byte-level tokens, mixed with specials and unknown ids
    b2u = bytes_to_unicode()
    v = qwen.get_vocab()
    bid = [v[b2u[b]] for b in range(256)]
    seqs = [[0x80], [0xE2, 0x82], [0xE2, 0x82, 0x41], [0xED, 0xA0, 0x80], [0xF0, 0x90, 0x80], [0xF4, 0x90, 0x80, 0x80],
            [0xC0, 0xAF], [0xFF, 0xFE], [0xF0, 0x9F, 0x98, 0x80], [0xE0, 0x80, 0x80], [0xC3, 0x61], [0xE0, 0xA0],
            [0xF0, 0x9F, 0x98], [0xF0, 0x9F, 0x98, 0x41, 0x80, 0x80], [0xC2], [0xC2, 0xC2, 0xA9], [0xEF, 0xBF, 0xBD],
            [0xF5, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xE1, 0x80, 0xE1, 0x80, 0x80], [0xED, 0x9F, 0xBF],
            [0xF4, 0x8F, 0xBF, 0xBF], [0xC1, 0xBF], [0xE0, 0x9F, 0xBF]]
    for k, s in enumerate(seqs):
        ids = [bid[b] for b in s]
        safe(lambda: rec({"tok": "qwen", "name": "dec_%d" % k, "ids": ids, "dec": qwen.decode(ids, skip_special_tokens=False),
             "dec_skip": qwen.decode(ids, skip_special_tokens=True)}))
    idm = [[151644, bid[0xE4], 151645, bid[0xBD], bid[0xA0]], [151644, 9707, 151645, 151667, 151668, 151643],
           [9707, 10_000_000, 151700, 9707], [151657, 151652, 151653, 151646]]
    for k, ids in enumerate(idm):
        safe(lambda: rec({"tok": "qwen", "name": "decmix_%d" % k, "ids": ids, "dec": qwen.decode(ids, skip_special_tokens=False),
             "dec_skip": qwen.decode(ids, skip_special_tokens=True)}))
    sn = snippets()
    rec({"tok": "qwen", "name": "snippets", "snippets": sn})
    def mixed():
        big = gen_mixed(sn)
        ids = qwen.encode(big).ids
        rec({"tok": "qwen", "name": "mixed1mb", "nbytes": len(big.encode("utf-8")), "n": len(ids),
             "hash": fnv_ids(ids), "head": ids[:64], "tail": ids[-64:]})
    safe(mixed)
    for tname in TINY:
        p = os.path.join(HERE, "tok_%s.json" % tname)
        try:
            tok = Tokenizer.from_file(p)
        except Exception as e:  # noqa
            info.write("%s failed to load: %r\n" % (tname, e))
            continue
        for k, t in enumerate(TINY_CASES):
            try:
                case(tok, tname, "t_%d" % k, t)
            except Exception as e:  # noqa
                info.write("%s case %d failed: %r\n" % (tname, k, e))
    out.close()
    # Unicode probe: which code points the Oniguruma side puts in \p{L}, \p{N}, \s; case folds of 's etc.; NFC
    try:
        from tokenizers import pre_tokenizers, Regex, normalizers
        cps = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
        S = "".join(map(chr, cps))
        probe = {}
        for name, pat in [("L", "\\p{L}"), ("N", "\\p{N}"), ("s", "\\s")]:
            pieces = pre_tokenizers.Split(Regex(pat), behavior="removed").pre_tokenize_str(S)
            unmatched = set("".join(p for p, _ in pieces))
            probe[name] = sorted(c for c in cps if chr(c) not in unmatched)
        T = "".join("'" + chr(c) for c in cps if c != 0x27)
        pieces = pre_tokenizers.Split(Regex("(?i:'s|'t|'m|'d)"), behavior="removed").pre_tokenize_str(T)
        unmatched = set("".join(p for p, _ in pieces))
        probe["fold_stmd"] = sorted(c for c in cps if c != 0x27 and chr(c) not in unmatched)
        nf = normalizers.NFC()
        probe["nfc"] = {}
        for c in cps:
            r = nf.normalize_str(chr(c))
            if r != chr(c):
                probe["nfc"]["%x" % c] = [ord(x) for x in r]
        # compress class lists to ranges
        for k in ("L", "N", "s", "fold_stmd"):
            rs, lst = [], probe[k]
            for c in lst:
                if rs and rs[-1][1] == c - 1:
                    rs[-1][1] = c
                else:
                    rs.append([c, c])
            probe[k] = rs
        with open(os.path.join(outdir, "unicode_probe.json"), "w") as f:
            json.dump(probe, f)
    except Exception as e:  # noqa
        info.write("probe failed: %r\n" % e)
    # does the slow transformers tokenizer agree? (informational)
    try:
        import tempfile, transformers
        d = tempfile.mkdtemp()
        j = json.load(open(qwen_path, encoding="utf-8"))
        json.dump(j["model"]["vocab"], open(os.path.join(d, "vocab.json"), "w"), ensure_ascii=False)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for m in j["model"]["merges"]:
                f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
        slow = transformers.Qwen2Tokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
        slow.add_special_tokens({"additional_special_tokens": [a["content"] for a in j["added_tokens"]]})
        bad = 0
        for name, text in qwen_cases():
            a = qwen.encode(text).ids
            b = slow.encode(text, add_special_tokens=False)
            if a != b:
                bad += 1
                info.write("slow differs on %s\n" % name)
        info.write("transformers %s slow Qwen2Tokenizer: %d cases differ\n" % (transformers.__version__, bad))
    except Exception as e:  # noqa
        info.write("slow check not run: %r\n" % e)
    info.close()


if __name__ == "__main__":
    if sys.argv[1] == "tiny":
        write_tiny()
    else:
        main_ref(sys.argv[2], sys.argv[3])
