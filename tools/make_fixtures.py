#!/usr/bin/env python3
"""Writes the numeric-parity fixtures that the Rust tests read (CI never runs this script).

Requires: torch, transformers (4.46.x), safetensors, numpy (`pip install torch transformers==4.46.3
safetensors numpy`). Run from the repository root:

    python3 tools/make_fixtures.py [--minilm DIR]

Outputs under crates/sener/tests/fixtures/:
  deberta_v3_tiny/        random DebertaV2Model in Hugging Face layout (config.json + model.safetensors),
                          v3-style: share_att_key, log buckets (position_buckets 16 so that the log
                          buckets are exercised at short lengths), norm_rel_ebd layer_norm.
  deberta_v2_tiny_bin/    random DebertaV2Model, no share_att_key (pos_key_proj / pos_query_proj),
                          no buckets, max_relative_positions 12 (so clamping is exercised); written as
                          pytorch_model.bin to test the pickle loader.
  bert_tiny/              random BertModel (config.json + model.safetensors).
  <name>/expected.safetensors
                          input_ids [2,T] (i64), attention_mask [2,T] (i64), last_hidden_state [2,T,H]
                          (f32) from transformers with full (stock) attention, eval mode, for a padded
                          batch of two sequences of different lengths.
  span_tiny/              the span side (spec §2, §4–§7) in PyTorch written from the spec, official
                          style (L×L biaffine cropped to the band, roll-with-modulo vertical view,
                          torch conv2d): weights.safetensors (official names without prefix),
                          expected.safetensors (subword states, indexes, lens, band logits with
                          invalid cells at −1e-6), decoded.json (official decoding, per document).
  official_tiny.pth       a SeNER training checkpoint in the official key layout (DeepSpeed
                          `module.` prefix, peft names) built from deberta_v3_tiny + LoRA + span_tiny,
                          with official_tiny_expected.safetensors (merged q/v weights).
  minilm_sentence.safetensors
                          with --minilm: ids of one sentence tokenized by the real all-MiniLM-L6-v2
                          tokenizer.json (with [CLS]/[SEP]) and the model's last hidden states for it.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, DebertaV2Config, DebertaV2Model

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "sener", "tests", "fixtures")
MINILM_SENTENCE = "SeNER extracts long entities from whole scholar homepages, in linear memory."


def batch(vocab, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, vocab, (n,), generator=g)
        ids[b, 0] = 1  # [CLS]
        ids[b, n - 1] = 2  # [SEP]
        mask[b, :n] = 1
    return ids, mask


def randomise(model, seed):
    """Non-trivial LayerNorm affine parameters and biases (defaults are 1/0 and would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def write_model(name, model, config, lengths, seed, as_bin=False):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.eval()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if as_bin:
        torch.save(state, os.path.join(d, "pytorch_model.bin"))
    else:
        save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    ids, mask = batch(config.vocab_size, lengths, seed)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    save_file(
        {"input_ids": ids, "attention_mask": mask, "last_hidden_state": out.float().contiguous()},
        os.path.join(d, "expected.safetensors"),
    )
    print(f"{name}: {sum(p.numel() for p in model.parameters())} params, out {tuple(out.shape)}")


def deberta_v3_tiny():
    cfg = DebertaV2Config(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        hidden_act="gelu", max_position_embeddings=64, type_vocab_size=0, position_biased_input=False,
        relative_attention=True, position_buckets=16, max_relative_positions=-1, share_att_key=True,
        pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm", layer_norm_eps=1e-7, pad_token_id=0,
    )
    torch.manual_seed(1)
    m = DebertaV2Model(cfg)
    randomise(m, 11)
    write_model("deberta_v3_tiny", m, cfg, [45, 29], seed=21)


def deberta_v2_tiny_bin():
    cfg = DebertaV2Config(
        vocab_size=89, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
        hidden_act="gelu", max_position_embeddings=40, type_vocab_size=0, position_biased_input=False,
        relative_attention=True, position_buckets=-1, max_relative_positions=12, share_att_key=False,
        pos_att_type="c2p|p2c", norm_rel_ebd="none", layer_norm_eps=1e-7, pad_token_id=0,
    )
    torch.manual_seed(2)
    m = DebertaV2Model(cfg)
    randomise(m, 12)
    write_model("deberta_v2_tiny_bin", m, cfg, [23, 31], seed=22, as_bin=True)


def bert_tiny():
    cfg = BertConfig(
        vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        hidden_act="gelu", max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12,
        pad_token_id=0,
    )
    torch.manual_seed(3)
    m = BertModel(cfg, add_pooling_layer=False)
    randomise(m, 13)
    write_model("bert_tiny", m, cfg, [37, 50], seed=23)


def minilm(model_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    # This tokenizer.json ships with fixed padding to 128 and truncation: switch both off, as sener does.
    tok.no_padding()
    tok.no_truncation()
    enc = tok.encode(MINILM_SENTENCE)
    ids = torch.tensor([enc.ids], dtype=torch.long)
    m = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    save_file(
        {"input_ids": ids, "last_hidden_state": out.float().contiguous()},
        os.path.join(OUT, "minilm_sentence.safetensors"),
        metadata={"text": MINILM_SENTENCE},
    )
    print(f"minilm: {len(enc.ids)} tokens, first-token norm {out[0, 0].norm():.4f}")


# ---------------------------------------------------------------------------------------------
# Span side, written from shared/spec/sener.md (not from the Rust code).

def rope_table(positions, dim):
    """RoFormer sinusoidal table [positions, dim]: sin in the first half, cos in the second."""
    theta = torch.tensor([10000 ** (-2 * (j // 2) / dim) for j in range(dim)], dtype=torch.float64)
    pos = torch.arange(positions, dtype=torch.float64)[:, None] * theta[None, :]
    out = torch.zeros(positions, dim)
    out[:, : dim // 2] = torch.sin(pos[:, 0::2]).float()
    out[:, dim // 2 :] = torch.cos(pos[:, 1::2]).float()
    return out


def apply_rope(x, table):
    k = x.shape[-2]
    sin, cos = table[:k].chunk(2, dim=-1)
    sin = torch.stack([sin, sin], dim=-1).reshape(k, -1)
    cos = torch.stack([cos, cos], dim=-1).reshape(k, -1)
    rot = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape_as(x)
    return x * cos + rot * sin


def span_forward(P, hidden, indexes, lens, w, c, depth):
    """Word max-pool → L×L biaffine → band → BiSPA ×depth → head; invalid cells −1e-6."""
    B, T, D = hidden.shape
    n = int(indexes.max())
    K = 2 * w + 1
    # word pooling: scatter max with slot 0 dropped; empty words stay 0
    H = torch.zeros(B, n + 1, D)
    H = H.scatter_reduce(1, indexes[:, :, None].expand(B, T, D), hidden, reduce="amax", include_self=False)
    H = H[:, 1:]
    gelu = torch.nn.functional.gelu
    hs = gelu(H @ P["head_mlp.1.weight"].T + P["head_mlp.1.bias"])
    he = gelu(H @ P["tail_mlp.1.weight"].T + P["tail_mlp.1.bias"])
    one = torch.ones(B, n, 1)
    hs1, he1 = torch.cat([hs, one], -1), torch.cat([he, one], -1)
    x1 = hs1.shape[-1]
    full = torch.einsum("bix,oxy,bjy->bijo", hs1, P["U"], he1)
    full = full + (hs1 @ P["W"][:, :x1].T)[:, :, None, :] + (he1 @ P["W"][:, x1:].T)[:, None, :, :]
    valid = torch.zeros(B, n, K, dtype=torch.bool)
    S = torch.zeros(B, n, K, c)
    for b in range(B):
        for i in range(n):
            for k in range(K):
                j = i + k - w
                if i < lens[b] and 0 <= j < lens[b]:
                    valid[b, i, k] = True
                    S[b, i, k] = full[b, i, j]
    vf = valid.float()
    rows = torch.arange(n)[:, None]
    cols = torch.arange(K)[None, :]
    vrow = (rows + cols - w) % n  # official roll + flip: x[(i+k−w) mod n, 2w−k]
    vcol = (2 * w - cols).expand(n, K)
    x = S
    for L in range(depth):
        p = f"cross_layers.{L}."
        x = x.clamp(-1000, 1000) + P[p + "pos_embed.weight"][(cols[0] >= w).long()]
        table = P[p + "embed_positions.weight"]

        def attn(X, name):
            qkv = (X @ P[p + name + ".weight"].T + P[p + name + ".bias"]).clamp(-1e4, 1e4)
            q, k_, v = qkv.chunk(3, dim=-1)
            q, k_ = apply_rope(q, table), apply_rope(k_, table)
            s_ = (q @ k_.transpose(-1, -2) / c**0.5).clamp(-1e4, 1e4) - 1e4 * (1 - vf)[:, :, None, :]
            a = torch.softmax(s_, dim=-1) * vf[:, :, None, :]
            return a @ v

        xt = x[:, vrow, vcol]
        zh, zv = attn(x, "h_qkv"), attn(xt, "v_qkv")  # zv NOT transposed back (official quirk)
        d = torch.cat([zh, zv], -1) @ P[p + "dense.weight"].T + P[p + "dense.bias"]
        d = d * valid.any(-1).float()[:, :, None, None]
        y = torch.nn.functional.layer_norm(x + d, (c,), P[p + "LayerNorm.weight"], P[p + "LayerNorm.bias"], 1e-5)
        conv = lambda t, wt: torch.nn.functional.conv2d(t.permute(0, 3, 1, 2), wt, padding=1).permute(0, 2, 3, 1)
        h = conv(y * vf[..., None], P[p + "conv1.conv2d.weight"])
        h = conv(gelu(h) * vf[..., None], P[p + "conv2.conv2d.weight"])
        x = torch.nn.functional.layer_norm(y + h, (c,), P[p + "LayerNorm2.weight"], P[p + "LayerNorm2.bias"], 1e-5)
    logits = (x + S) @ P["down_fc.weight"].T + P["down_fc.bias"]
    logits = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
    return logits.masked_fill(~valid[..., None], -1e-6), valid


def official_decode(logits, n_words, w, thres=0.5, allow_nested=True):
    """Spec §7: symmetrise probabilities, threshold, greedy clash filter, argmax type."""
    p = torch.sigmoid(logits)  # [n, K, R]
    n, K, R = p.shape
    rows = torch.arange(n)[:, None]
    cols = torch.arange(K)[None, :]
    sym = (p + p[(rows + cols - w) % n, (2 * w - cols).expand(n, K)]) / 2
    cands = []
    for s in range(n_words):
        for d in range(w + 1):
            e = s + d
            if e >= n_words:
                break
            sc = float(sym[s, w + d].max())
            if sc >= thres:
                cands.append((sc, [s, d]))
    cands.sort(reverse=True)
    kept = []
    for sc, (s, d) in cands:
        e = s + d
        ok = True
        for (s2, e2, _) in kept:
            overlap = s < e2 and s2 < e
            nested = (s <= s2 and e2 <= e) or (s2 <= s and e <= e2)
            if overlap and not (allow_nested and nested):
                ok = False
                break
        if ok:
            kept.append((s, e, int(sym[s, w + d].argmax())))
    return sorted([[s, e + 1, t] for s, e, t in kept])


def span_params(hidden, size, c, depth, R, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, scale=0.3: scale * torch.randn(*shape, generator=g)
    P = {
        "head_mlp.1.weight": r(size, hidden), "head_mlp.1.bias": r(size),
        "tail_mlp.1.weight": r(size, hidden), "tail_mlp.1.bias": r(size),
        "U": r(c, size + 1, size + 1), "W": r(c, 2 * (size + 1)),
        "down_fc.weight": r(R, c, scale=2.0), "down_fc.bias": r(R, scale=0.5) - 1.0,
    }
    for L in range(depth):
        p = f"cross_layers.{L}."
        P[p + "pos_embed.weight"] = r(2, c, scale=1.0)
        for name, shape in [("h_qkv", (3 * c, c)), ("v_qkv", (3 * c, c)), ("dense", (c, 2 * c))]:
            P[p + name + ".weight"] = r(*shape)
            P[p + name + ".bias"] = r(shape[0], scale=0.1)
        P[p + "embed_positions.weight"] = rope_table(512, c)
        for ln in ["LayerNorm", "LayerNorm2"]:
            P[p + ln + ".weight"] = 1 + r(c, scale=0.1)
            P[p + ln + ".bias"] = r(c, scale=0.1)
        P[p + "conv1.conv2d.weight"] = r(c, c, 3, 3, scale=0.2)
        P[p + "conv2.conv2d.weight"] = r(c, c, 3, 3, scale=0.2)
    return P


def span_tiny():
    w, c, size, depth, R, D = 4, 8, 10, 2, 5, 16
    P = span_params(D, size, c, depth, R, seed=31)
    g = torch.Generator().manual_seed(32)
    # two documents: 11 words (1–2 subwords each, one word with 3) and 7 words; word 5 of doc 2 has
    # no subword (zero vector)
    subs = [[1, 2, 1, 1, 3, 1, 2, 1, 1, 2, 1], [2, 1, 1, 1, 1, 0, 1]]
    T = max(sum(s) for s in subs) + 2
    indexes = torch.zeros(2, T, dtype=torch.long)
    for b, s in enumerate(subs):
        pos = 1
        for m, cnt in enumerate(s):
            indexes[b, pos : pos + cnt] = m + 1
            pos += cnt
    hidden = torch.randn(2, T, D, generator=g)
    lens = [len(s) for s in subs]
    logits, valid = span_forward(P, hidden, indexes, lens, w, c, depth)
    d = os.path.join(OUT, "span_tiny")
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in P.items()}, os.path.join(d, "weights.safetensors"))
    save_file(
        {"hidden": hidden, "indexes": indexes, "lens": torch.tensor(lens), "logits": logits.contiguous()},
        os.path.join(d, "expected.safetensors"),
    )
    decoded = [official_decode(logits[b], lens[b], w) for b in range(2)]
    probs = torch.sigmoid(logits)
    margin = float((probs[valid] - 0.5).abs().min())
    json.dump({"window": w, "cnn_dim": c, "biaffine_size": size, "cnn_depth": depth, "labels": R,
               "decoded": decoded}, open(os.path.join(d, "decoded.json"), "w"), indent=1)
    print(f"span_tiny: logits {tuple(logits.shape)}, decoded {[len(x) for x in decoded]} spans, "
          f"min |p − 0.5| on valid cells {margin:.2e}")
    return P


def official_checkpoint(span_P):
    """A state dict in the official training layout (spec §8): DeepSpeed `module.`, peft names."""
    from safetensors.torch import load_file
    base = load_file(os.path.join(OUT, "deberta_v3_tiny", "model.safetensors"))
    g = torch.Generator().manual_seed(41)
    sd, merged = {}, {}
    pre = "module.base_model.model."
    for k, v in base.items():
        proj = next((p for p in ("query_proj", "value_proj") if f".attention.self.{p}." in k), None)
        if proj:
            head, leaf = k.rsplit(".", 1)
            sd[pre + "pretrain_model." + head + ".base_layer." + leaf] = v
            if leaf == "weight":
                a = 0.1 * torch.randn(8, v.shape[1], generator=g)
                bm = 0.1 * torch.randn(v.shape[0], 8, generator=g)
                sd[pre + "pretrain_model." + head + ".lora_A.default.weight"] = a
                sd[pre + "pretrain_model." + head + ".lora_B.default.weight"] = bm
                merged[k] = v + 2.0 * bm @ a  # alpha 16 / r 8
        else:
            sd[pre + "pretrain_model." + k] = v
    for k, v in span_P.items():
        sd[pre + k] = v
    torch.save(sd, os.path.join(OUT, "official_tiny.pth"))
    save_file({k: v.contiguous() for k, v in merged.items()}, os.path.join(OUT, "official_tiny_expected.safetensors"))
    print(f"official_tiny.pth: {len(sd)} tensors")


def adamw_fixture():
    """torch.optim.AdamW with clipping and the linear warm-up/decay schedule, 6 steps, two groups."""
    g = torch.Generator().manual_seed(51)
    p_decay = torch.nn.Parameter(torch.randn(7, generator=g))
    p_plain = torch.nn.Parameter(torch.randn(3, generator=g))
    opt = torch.optim.AdamW([{"params": [p_decay], "weight_decay": 0.01, "lr": 4e-2},
                             {"params": [p_plain], "weight_decay": 0.0, "lr": 7e-2}])
    from transformers import get_linear_schedule_with_warmup
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=6)
    out = {"p_decay.0": p_decay.detach().clone(), "p_plain.0": p_plain.detach().clone()}
    for step in range(6):
        gd = 3 * torch.randn(7, generator=g)
        gp = 3 * torch.randn(3, generator=g)
        out[f"g_decay.{step}"], out[f"g_plain.{step}"] = gd.clone(), gp.clone()
        p_decay.grad, p_plain.grad = gd.clone(), gp.clone()
        torch.nn.utils.clip_grad_norm_([p_decay, p_plain], 1.0)
        opt.step()
        sched.step()
        out[f"p_decay.{step + 1}"] = p_decay.detach().clone()
        out[f"p_plain.{step + 1}"] = p_plain.detach().clone()
    save_file(out, os.path.join(OUT, "adamw.safetensors"))
    print("adamw: 6 steps")


def tiny_tokenizer():
    """deberta_v3_tiny_tok/: config.json of deberta_v3_tiny plus a word-level tokenizer.json over its
    97 ids ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, then words), the base folder for import tests."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    words = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"] + [f"w{i}" for i in range(4, 97)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    d = os.path.join(OUT, "deberta_v3_tiny_tok")
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    import shutil
    shutil.copy(os.path.join(OUT, "deberta_v3_tiny", "config.json"), os.path.join(d, "config.json"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", help="folder of the real all-MiniLM-L6-v2 checkpoint")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    deberta_v3_tiny()
    deberta_v2_tiny_bin()
    bert_tiny()
    P = span_tiny()
    # the official checkpoint needs a span side whose biaffine reads deberta_v3_tiny's width (32)
    official_checkpoint(span_params(32, 10, 8, 2, 5, seed=33))
    tiny_tokenizer()
    adamw_fixture()
    if a.minilm:
        minilm(a.minilm)
