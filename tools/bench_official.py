#!/usr/bin/env python3
"""Time and measure the OFFICIAL PyTorch SeNER code on CPU, for side-by-side comparison with `sener`.

What it measures
----------------
The official model (THUDM/scholar-profiling, folder `sener/`: `modeling_deberta.DebertaModel` with
`Arrow_Attention(config, 128)` in every layer, LogN on the [CLS] row, `models.model.CNNNer` with the
banded biaffine, 2 BiSPA blocks (`models.cnn.CrossTransformer`) and the `down_fc` head, wrapped with peft
LoRA r=8, alpha=16 on `query_proj`/`value_proj`, bias="lora_only"), built exactly as the official
`train.py` / `predict.py` build it, with the official defaults (cnn_dim 32, biaffine_size 100,
chunks_size 128, cnn_depth 2, logit_drop 0.1, attn_dropout 0.2, 12 entity types = Scholar-XL).
The encoder has the shape of microsoft/deberta-v3-base (hidden 768, 12 layers, 12 heads, FFN 3072,
vocab 128100, position_buckets 256, max_relative_positions -1 -> 512, share_att_key, p2c|c2p,
norm_rel_ebd layer_norm) and RANDOM weights (DeBERTa's own init, std 0.02): nothing is downloaded.
The official code is imported from --official-dir; nothing of it is copied here.

Input: one segment of --tokens N subword tokens, [CLS] + N-2 synthetic ids + [SEP], words of 1 or 2
subwords (every third word has 2: about 1.33 subwords a word, so words ~ 0.75 N), `indexes` = word
index per token (0 for [CLS]/[SEP]) -- the same synthetic segment as `sener bench model`
(crates/sener-cli/src/bench.rs, synthetic_segment).

  --mode forward     eval mode, torch.no_grad, `model(input_ids, bpe_len, indexes)` as predict.py
                     calls it (returns the masked band scores). One warm-up forward at 256 tokens,
                     then --repeat timed forwards. `encoder_s`/`span_s` split each forward at the
                     encoder (forward hooks on `pretrain_model`); `span_s` includes the word pooling.
  --mode train-step  train mode (all dropouts on), one segment with a few gold entities (the same as
                     `sener bench train-step`: starts 0, 37, 74, ..., end = start + start % 30
                     (inclusive), type start % 12), labels built as utils/data_loader.py builds them;
                     one step = forward with the official loss + backward + gradient clipping 1.0
                     (DeepSpeed's `gradient_clipping`) + torch AdamW step with the official four
                     parameter groups (LoRA lr 4e-4, new layers 7e-4, weight decay 1e-2, none on
                     norm/bias) + linear warm-up scheduler step + zero_grad. One warm-up step at 256
                     tokens (it also creates the AdamW state), then --repeat timed steps.

Peak memory: like `sener bench model`, the kernel's RSS high-water mark is reset
(/proc/self/clear_refs = 5) after the model is built and warmed up, so `peak_rss_mib`
(getrusage ru_maxrss, MiB) is the peak over the timed runs, weights included. `model_rss_mib` is the
RSS after building the model, `peak_rss_build_mib` the ru_maxrss before the reset (build + warm-up).
If the reset fails, `peak_reset` is false and `peak_rss_mib` is the whole-process peak.

Output: one JSON line, e.g.
  {"impl":"official","mode":"forward","shape":"deberta-v3-base","tokens":512,"words":...,
   "seconds":[...],"median_s":...,"peak_rss_mib":...,"threads":2,"torch":"2.5.1+cu124",...}

Deviations from the official code (and why)
-------------------------------------------
* No DeepSpeed: one CPU process. The step is what DeepSpeed's ZeRO-2 engine does on one rank
  (backward, clip_grad_norm 1.0, optimizer.step, lr_scheduler.step, zero_grad), without its gradient
  buckets/partitioning (there is nothing to partition on one process).
* Weights are random (`DebertaModel(config)` + `_init_weights`) instead of `from_pretrained` of the
  deberta-v3-large checkpoint; the shape is deberta-v3-base (--shape) as in our benchmarks.
* `torch_scatter.scatter_max` is the compiled torch_scatter if it imports (`scatter_max` field says
  which); otherwise (or with --scatter shim) a drop-in using torch's `scatter_reduce(amax)`, which gives
  the same values for the call in CNNNer.forward (only `[0]` is used; empty slots are 0 in both).
* Data preparation (tokenisation, whole-word masking) is not timed and WWM is not applied: it changes
  input ids only, not the cost.
* Versions: torch 2.5.1 (CPU use of the PyPI wheel) and transformers 4.46.3 instead of the pinned
  torch 2.3.1 / transformers 4.37.2; the DeBERTa-v2 classes the official code subclasses have the same
  interface in 4.46.3. peft 0.11.1 and FastNLP 1.0.1 as pinned.
* --shape minilm is not supported: the official code is DeBERTa-v2 only (Arrow_Attention is
  DeBERTa's disentangled attention; there is no arrow attention for BERT). It prints a "skipped" line.

Install (Python >= 3.10; once):
  python3 -m venv target/official-venv
  target/official-venv/bin/pip install torch==2.5.1 transformers==4.46.3 peft==0.11.1 \
      numpy safetensors sentencepiece FastNLP==1.0.1 wheel setuptools
  # optional, the compiled scatter_max the official code imports (builds from source, ~10+ min):
  MAX_JOBS=1 FORCE_CUDA=0 target/official-venv/bin/pip install --no-build-isolation torch-scatter==2.1.2
  # (the CPU-only index https://download.pytorch.org/whl/cpu is smaller, where reachable:
  #  pip install torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu)

The official code (no work tree in the mirror; export the sener/ folder):
  mkdir -p target/official-src
  G=<mirror git dir of THUDM/scholar-profiling>
  git --git-dir=$G ls-tree -r --name-only HEAD sener | grep -v '^sener/data/' | while read f; do
      mkdir -p target/official-src/$(dirname $f); git --git-dir=$G show HEAD:$f > target/official-src/$f; done

Run (from the repository root):
  target/official-venv/bin/python tools/bench_official.py --official-dir target/official-src/sener \
      --mode forward --tokens 5120 --repeat 3 --threads 2
  target/official-venv/bin/python tools/bench_official.py --official-dir target/official-src/sener \
      --mode train-step --tokens 2048 --repeat 3 --threads 2
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time
import types
import warnings

ARROW_WINDOW = 128  # hard-coded in the official DebertaModel: Arrow_Attention(config, 128)
SPAN_WINDOW = 128  # chunks_size
CLS_ID, SEP_ID = 1, 2  # deberta-v3 bos/eos, used by the official loader as [CLS]/[SEP]


def synthetic_segment(length, vocab, cls, sep):
    """Port of sener-cli's synthetic_segment: ids, word index per token, number of words."""
    ids, idx = [cls], [0]
    word, x = 0, 12345
    while len(ids) + 1 < length:
        word += 1
        pieces = 2 if word % 3 == 0 else 1
        for _ in range(pieces):
            if len(ids) + 1 >= length:
                break
            x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
            ids.append(1000 + (x >> 33) % (vocab - 1000))
            idx.append(word)
    ids.append(sep)
    idx.append(0)
    return ids, idx, word


def rss_mib(field="VmRSS:"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def install_scatter(choice):
    """Make `torch_scatter` importable for the official models/model.py; returns which one is used."""
    import torch

    if choice in ("auto", "torch_scatter"):
        try:
            import torch_scatter  # noqa: F401

            return "torch_scatter " + getattr(torch_scatter, "__version__", "?")
        except Exception as e:  # ImportError, or an ABI mismatch with this torch
            if choice == "torch_scatter":
                raise SystemExit(f"--scatter torch_scatter: cannot import torch_scatter: {e}")

    def scatter_max(src, index, dim=-1, out=None, dim_size=None):
        # Same broadcasting as torch_scatter (index [B,T] -> [B,T,H]); slots with no source stay 0.
        dim = dim % src.dim()
        for _ in range(index.dim(), src.dim()):
            index = index.unsqueeze(-1)
        index = index.expand_as(src)
        size = list(src.shape)
        size[dim] = int(index.max()) + 1 if dim_size is None else dim_size
        res = src.new_zeros(size).scatter_reduce(dim, index, src, reduce="amax", include_self=False)
        return res, None  # the official code uses only [0]

    mod = types.ModuleType("torch_scatter")
    mod.scatter_max = scatter_max
    mod.__version__ = "shim"
    sys.modules["torch_scatter"] = mod
    return "shim (torch.scatter_reduce amax)"


def deberta_v3_base_config():
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=0,
        initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=True,
        max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type="p2c|c2p", position_biased_input=False, pad_token_id=0,
        pooler_dropout=0, pooler_hidden_act="gelu", pooler_hidden_size=768,
    )


def build_model(args, num_types):
    """The official build (train.py / predict.py), with a random-weight deberta-v3-base encoder."""
    import torch
    from peft import LoraConfig, get_peft_model

    sys.path.insert(0, os.path.abspath(args.official_dir))
    warnings.filterwarnings("ignore", category=SyntaxWarning)  # cnn.py: `use_tri_bias is 2`
    from modeling_deberta import DebertaModel  # official
    from models.model import CNNNer  # official

    torch.manual_seed(args.seed)
    encoder = DebertaModel(deberta_v3_base_config())  # official: DebertaModel.from_pretrained(path)
    encoder.apply(encoder._init_weights)  # the replaced Arrow_Attention layers get DeBERTa's init too
    model = CNNNer(encoder, num_ner_tag=num_types, cnn_dim=args.cnn_dim, biaffine_size=args.biaffine_size,
                   size_embed_dim=0, logit_drop=0.1, chunks_size=args.chunks_size,
                   cnn_depth=args.cnn_depth, attn_dropout=0.2)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query_proj", "value_proj"],
                        lora_dropout=0, bias="lora_only")
    model = get_peft_model(model, config)
    return model


def official_optimizer(model, lora_lr, lr, weight_decay=1e-2):
    """train.py's set_optimizer (after its `requires_grad_()` loop on the new layers)."""
    import torch

    for n, p in model.named_parameters():
        if "pretrain_model" not in n:
            p.requires_grad_()
    ln_params, non_ln_params, non_pretrain_params, non_pretrain_ln_params = [], [], [], []
    for name, param in model.named_parameters():
        name = name.lower()
        if param.requires_grad is False:
            continue
        if "pretrain_model" in name:
            (ln_params if ("norm" in name or "bias" in name) else non_ln_params).append(param)
        else:
            (non_pretrain_ln_params if ("norm" in name or "bias" in name) else non_pretrain_params).append(param)
    groups = [
        {"params": non_ln_params, "lr": lora_lr, "weight_decay": weight_decay},
        {"params": ln_params, "lr": lora_lr, "weight_decay": 0},
        {"params": non_pretrain_ln_params, "lr": lr, "weight_decay": 0},
        {"params": non_pretrain_params, "lr": lr, "weight_decay": weight_decay},
    ]
    return torch.optim.AdamW(groups)


def make_inputs(tokens, vocab):
    import torch

    ids, idx, words = synthetic_segment(tokens, vocab, CLS_ID, SEP_ID)
    input_ids = torch.tensor([ids], dtype=torch.long)
    indexes = torch.tensor([idx], dtype=torch.long)
    bpe_len = torch.tensor([len(ids)], dtype=torch.long)
    return input_ids, bpe_len, indexes, words


def make_matrix(words, num_types, window):
    """Labels as utils/data_loader.py builds them (int8 numpy, then .long() in collate)."""
    import numpy as np
    import torch

    matrix = np.zeros((words, 2 * window + 1, num_types), dtype=np.int8)
    n_ents = 0
    for s in range(0, max(words - 40, 0), 37):
        e, t = s + s % 30, s % num_types  # inclusive end, as the loader's (start, end-1, type)
        if e - s <= window:
            matrix[s, window + e - s, t] = 1
            matrix[e, window - e + s, t] = 1
            n_ents += 1
    return torch.tensor(matrix[None]).long(), n_ents


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official-dir", required=True, help="the official sener/ folder (modeling_deberta.py, models/)")
    ap.add_argument("--mode", choices=["forward", "train-step"], default="forward")
    ap.add_argument("--tokens", type=int, default=512, help="subword tokens in the segment, [CLS]/[SEP] included")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (after the warm-up); the median is reported")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--shape", choices=["deberta-v3-base", "minilm"], default="deberta-v3-base")
    ap.add_argument("--warmup-tokens", type=int, default=256, help="length of the one warm-up run (0: none)")
    ap.add_argument("--types", type=int, default=12, help="entity types (Scholar-XL: 12)")
    ap.add_argument("--cnn-dim", type=int, default=32)
    ap.add_argument("--biaffine-size", type=int, default=100)
    ap.add_argument("--chunks-size", type=int, default=128, help="span window w' (words)")
    ap.add_argument("--cnn-depth", type=int, default=2, help="BiSPA blocks")
    ap.add_argument("--lora-lr", type=float, default=4e-4, help="Scholar-XL's lora_lr in train.py")
    ap.add_argument("--lr", type=float, default=7e-4, help="new layers (train.sh --lr)")
    ap.add_argument("--scatter", choices=["auto", "torch_scatter", "shim"], default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.shape == "minilm":
        print(json.dumps({"impl": "official", "mode": args.mode, "shape": "minilm", "tokens": args.tokens,
                          "skipped": "the official SeNER code supports only DeBERTa-v2 encoders "
                                     "(Arrow_Attention subclasses DeBERTa's disentangled attention)"}))
        return 0
    if args.tokens < 3:
        raise SystemExit("--tokens must be >= 3")

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    scatter = install_scatter(args.scatter)
    import peft
    import transformers
    from transformers import get_linear_schedule_with_warmup, set_seed

    set_seed(args.seed)
    model = build_model(args, args.types)
    vocab = model.base_model.model.pretrain_model.config.vocab_size
    trainable = sum(p.numel() for n, p in model.named_parameters()
                    if p.requires_grad or "pretrain_model" not in n)
    model_rss = rss_mib()

    seconds, enc_seconds, losses, extra = [], [], [], {}
    if args.mode == "forward":
        model.eval()
        enc = model.base_model.model.pretrain_model
        mark = {}
        enc.register_forward_pre_hook(lambda m, a: mark.__setitem__("t0", time.perf_counter()))
        enc.register_forward_hook(lambda m, a, o: mark.__setitem__("t1", time.perf_counter()))

        def run(tokens):
            input_ids, bpe_len, indexes, words = make_inputs(tokens, vocab)
            with torch.no_grad():
                t0 = time.perf_counter()
                out = model(input_ids, bpe_len, indexes)
                t = time.perf_counter() - t0
            assert out["scores"].shape == (1, words, 2 * args.chunks_size + 1, args.types), out["scores"].shape
            assert torch.isfinite(out["scores"]).all()
            del out
            return t, mark["t1"] - mark["t0"], words
    else:
        model.train()
        optimizer = official_optimizer(model, args.lora_lr, args.lr)
        total_steps = 1000  # (int(len(train)/batch)+1)*epochs in train.py; only sets the LR values
        scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0.1 * total_steps,
                                                    num_training_steps=total_steps)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        trainable = sum(p.numel() for p in params)

        def run(tokens):
            input_ids, bpe_len, indexes, words = make_inputs(tokens, vocab)
            matrix, n_ents = make_matrix(words, args.types, args.chunks_size)
            extra["entities"] = n_ents
            t0 = time.perf_counter()
            loss = model(input_ids, bpe_len, indexes, matrix)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # DeepSpeed "gradient_clipping": 1
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            t = time.perf_counter() - t0
            losses.append(float(loss.detach()))
            assert torch.isfinite(loss).item()
            return t, None, words

    if args.warmup_tokens > 0:
        run(min(args.warmup_tokens, args.tokens))
        losses.clear()
    peak_build = maxrss_mib()
    peak_reset = reset_peak()
    words = None
    for _ in range(max(1, args.repeat)):
        t, te, words = run(args.tokens)
        seconds.append(round(t, 4))
        if te is not None:
            enc_seconds.append(te)
    peak = maxrss_mib()

    order = sorted(range(len(seconds)), key=lambda i: seconds[i])
    mid = order[len(order) // 2]
    rec = {
        "impl": "official", "mode": args.mode, "shape": args.shape, "tokens": args.tokens, "words": words,
        "seconds": seconds, "median_s": statistics.median(seconds), "peak_rss_mib": round(peak, 1),
        "threads": args.threads, "torch": torch.__version__,
    }
    if enc_seconds:
        rec["encoder_s"] = round(enc_seconds[mid], 4)
        rec["span_s"] = round(seconds[mid] - enc_seconds[mid], 4)
    if losses:
        rec["loss"] = [round(x, 4) for x in losses]
    rec.update(extra)
    rec.update({
        "tokens_per_s": round(args.tokens / statistics.median(seconds), 1),
        "model_rss_mib": round(model_rss, 1), "peak_rss_build_mib": round(peak_build, 1),
        "peak_reset": peak_reset, "trainable_params": trainable,
        "arrow_window": ARROW_WINDOW, "span_window": args.chunks_size, "types": args.types,
        "warmup_tokens": min(args.warmup_tokens, args.tokens), "scatter_max": scatter,
        "transformers": transformers.__version__, "peft": peft.__version__,
    })
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
