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


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", help="folder of the real all-MiniLM-L6-v2 checkpoint")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    deberta_v3_tiny()
    deberta_v2_tiny_bin()
    bert_tiny()
    if a.minilm:
        minilm(a.minilm)
