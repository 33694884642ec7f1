#!/usr/bin/env python3
"""Writes the fixture that checks `sener eval` against the official SeNER metric (spec section 7).

Pure Python 3, standard library only. Run from the repository root:

    python3 tools/metric_fixture.py [GOLD] [--seed N] [--out DIR]

GOLD defaults to ../shared/data/scholar-xl/test.jsonl (SeNER JSON lines: one document per line,
`{"doc_id", "text": [words], "entity": [[start, end_exclusive, [words], label], ...]}`).

The script
  1. builds deterministic predictions by perturbing the gold entities with random.Random(seed)
     (see `perturb`): most entities are kept, some dropped, some moved by one word at one
     boundary, some relabelled; spurious spans are added (random, nested inside and crossing a
     gold entity, exact duplicates); a few documents get no prediction line at all and the lines
     are written in shuffled order, so that predictions must be matched by doc_id;
  2. scores them with an independent implementation of the official metric written from the
     spec (section 7, step 6), not from the Rust code (see `score`);
  3. writes, under crates/sener-cli/tests/fixtures/metric/ (or --out):
       <stem>.pred.jsonl      predictions in the format `sener eval --pred` reads:
                              {"doc_id": ..., "entity": [[start, end_exclusive, label], ...]}
       <stem>.expected.json   the expected micro and per-type P/R/F1 with gold/pred/tp counts.

The fixture is read by crates/sener-cli/tests/eval_official.rs, which runs
`sener eval --data GOLD --pred <stem>.pred.jsonl --json ...` and compares.
"""
import argparse
import json
import os
import random
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GOLD = os.path.join(REPO, "..", "shared", "data", "scholar-xl", "test.jsonl")
DEFAULT_OUT = os.path.join(REPO, "crates", "sener-cli", "tests", "fixtures", "metric")
# Longest span the model can produce: w + 1 words with the default window w = 128 (spec §6).
MAX_SPAN_WORDS = 129


# --------------------------------------------------------------------------------------------
# The official metric, from spec section 7 step 6:
#   * micro P/R/F1 over (start, end, type) triples across the whole split; a prediction is
#     correct only if start, end and type all equal a gold entity *of the same document*;
#   * gold and predicted triples are de-duplicated per document (sets), and the per-document
#     counts are then summed (so equal triples in different documents count separately);
#   * per-type P/R/F1 over the same triples restricted to one type;
#   * recall = tp / gold, precision = tp / pred, each 0 when its denominator is 0, and
#     F1 = 2PR / (P + R), 0 when P + R = 0 (the official `compute`).
# Duplicates: the spec and the official code agree here (both use per-document sets), so there
# is no difference to resolve.
# Per-type listing: the official `result` lists only types that occur in the gold; a type that
# occurs only in predictions cannot appear in the official output but still counts in the micro
# numbers. We compute per-type numbers for every type in gold or predictions and record the gold
# types separately ("official_types"). With the Scholar-XL labels every label occurs in the test
# gold, so the two listings coincide for this fixture.
# --------------------------------------------------------------------------------------------


def prf(gold, pred, tp):
    recall = 0.0 if gold == 0 else tp / gold
    precision = 0.0 if pred == 0 else tp / pred
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "gold": gold, "pred": pred, "tp": tp}


def score(gold_docs, pred_docs):
    """gold_docs, pred_docs: lists (same order, one per document) of iterables of
    (start, end_inclusive, type). Returns (micro, per_type, gold_types)."""
    assert len(gold_docs) == len(pred_docs)
    counts = {}  # type -> [gold, pred, tp]
    total = [0, 0, 0]
    for gold, pred in zip(gold_docs, pred_docs):
        g = set(gold)
        p = set(pred)
        for (_, _, t) in g:
            counts.setdefault(t, [0, 0, 0])[0] += 1
            total[0] += 1
        for triple in p:
            c = counts.setdefault(triple[2], [0, 0, 0])
            c[1] += 1
            total[1] += 1
            if triple in g:
                c[2] += 1
                total[2] += 1
    per_type = {t: prf(*c) for t, c in sorted(counts.items())}
    gold_types = sorted(t for t, c in counts.items() if c[0] > 0)
    return prf(*total), per_type, gold_types


def self_test():
    """The hand-computed example of crates/sener-cli/tests/cli.rs
    (`eval_predictions_match_hand_computed_metric`), with inclusive ends."""
    gold = [[(0, 1, "x"), (3, 3, "y"), (3, 3, "y")], [(1, 2, "x")]]
    pred = [[(0, 1, "x"), (3, 3, "x"), (5, 5, "y")], [(1, 2, "x"), (1, 2, "x")]]
    micro, per_type, _ = score(gold, pred)
    assert (micro["gold"], micro["pred"], micro["tp"]) == (3, 4, 2), micro
    assert abs(micro["precision"] - 0.5) < 1e-12
    assert abs(micro["recall"] - 2 / 3) < 1e-12
    assert abs(micro["f1"] - 4 / 7) < 1e-12
    assert abs(per_type["x"]["f1"] - 0.8) < 1e-12 and per_type["y"]["tp"] == 0
    # A triple equal to a gold triple of *another* document is not correct.
    micro, _, _ = score([[(0, 0, "a")], []], [[], [(0, 0, "a")]])
    assert (micro["gold"], micro["pred"], micro["tp"]) == (1, 1, 0)


# --------------------------------------------------------------------------------------------
# Data and perturbation
# --------------------------------------------------------------------------------------------


def read_gold(path):
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            ents = []
            for e in d["entity"]:
                start, end, _words, label = e
                # The official loader keeps `start <= end` and stores (start, end - 1): an empty
                # span would become (s, s - 1). The spec defines spans of at least one word; the
                # shared data has none empty, so insist on it rather than guess.
                if not 0 <= start < end <= len(d["text"]):
                    raise SystemExit(f"{path}: {d['doc_id']}: invalid entity span {start}..{end}")
                ents.append((start, end - 1, label))  # inclusive end
            docs.append({"doc_id": d["doc_id"], "n": len(d["text"]), "gold": ents})
    return docs


def perturb(docs, seed):
    """Deterministic predictions (inclusive ends, duplicates kept) per document, or None for a
    document that gets no prediction line. Returns (predictions, tally of what was done)."""
    rng = random.Random(seed)
    labels = sorted({t for d in docs for (_, _, t) in d["gold"]})
    # Type-dependent noise so that per-type numbers clearly differ: drop rate 4%..26%,
    # relabel rate 10%..4%.
    drop_rate = {t: 0.04 + 0.02 * i for i, t in enumerate(labels)}
    relabel_rate = {t: 0.10 - 0.005 * i for i, t in enumerate(labels)}
    shift_rate = 0.10
    tally = {k: 0 for k in ["kept", "dropped", "shifted", "relabelled", "duplicated",
                            "spurious_random", "spurious_nested", "spurious_crossing", "spurious_enclosing",
                            "spurious_duplicate", "same_span_second_type",
                            "documents_without_line", "documents_with_empty_line"]}
    out = []
    for d in docs:
        n, gold = d["n"], d["gold"]
        u = rng.random()
        if u < 0.02:
            out.append(None)  # no prediction line: treated as no predictions
            tally["documents_without_line"] += 1
            continue
        if u < 0.04:
            out.append([])  # a line with an empty entity list
            tally["documents_with_empty_line"] += 1
            continue
        pred = []
        for (s, e, t) in gold:
            r = rng.random()
            if r < drop_rate[t]:
                tally["dropped"] += 1
                continue
            r -= drop_rate[t]
            if r < shift_rate:
                # Move one boundary by one word, keeping at least one word and staying inside
                # the document.
                opts = [(s2, e2) for (s2, e2) in [(s - 1, e), (s + 1, e), (s, e - 1), (s, e + 1)]
                        if 0 <= s2 <= e2 < n]
                s, e = rng.choice(opts)
                pred.append((s, e, t))
                tally["shifted"] += 1
                continue
            r -= shift_rate
            if r < relabel_rate[t]:
                pred.append((s, e, rng.choice([x for x in labels if x != t])))
                tally["relabelled"] += 1
                continue
            pred.append((s, e, t))
            tally["kept"] += 1
            v = rng.random()
            if v < 0.05:
                pred.append((s, e, t))  # exact duplicate of a correct prediction
                tally["duplicated"] += 1
            elif v < 0.08:
                pred.append((s, e, rng.choice([x for x in labels if x != t])))
                tally["same_span_second_type"] += 1
        # Spurious spans.
        for _ in range(rng.randint(0, 3)):
            kind = rng.random()
            long_enough = [g for g in gold if g[1] > g[0]]
            if kind < 0.4 and long_enough:
                # Strictly nested inside a gold entity (a proper sub-span).
                gs, ge, gt = rng.choice(long_enough)
                while True:
                    s = rng.randint(gs, ge)
                    e = rng.randint(s, ge)
                    if (s, e) != (gs, ge):
                        break
                pred.append((s, e, rng.choice(labels)))
                tally["spurious_nested"] += 1
            elif kind < 0.7 and gold:
                # Crossing a gold entity's boundary (overlapping, neither nested in the other),
                # with the gold entity's type; around a one-word entity, a span enclosing it.
                gs, ge, gt = rng.choice(gold)
                left = gs > 0 and ge > gs
                right = ge + 1 < n and ge > gs
                if left and (not right or rng.random() < 0.5):
                    s, e = rng.randint(max(0, gs - 4), gs - 1), rng.randint(gs, ge - 1)
                    tally["spurious_crossing"] += 1
                elif right:
                    s, e = rng.randint(gs + 1, ge), rng.randint(ge + 1, min(n - 1, ge + 4))
                    tally["spurious_crossing"] += 1
                else:
                    s, e = max(0, gs - 1), min(n - 1, ge + 1)
                    tally["spurious_enclosing"] += 1
                pred.append((s, e, gt))
            else:
                s = rng.randrange(n)
                e = min(n - 1, s + rng.randint(0, 7))
                pred.append((s, e, rng.choice(labels)))
                tally["spurious_random"] += 1
            if rng.random() < 0.25:
                pred.append(pred[-1])
                tally["spurious_duplicate"] += 1
        rng.shuffle(pred)
        out.append(pred)
    return out, tally


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gold", nargs="?", default=DEFAULT_GOLD)
    ap.add_argument("--seed", type=int, default=20250)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--max-docs", type=int, default=0,
                    help="use only the first N documents (0 = all); the stem then says so")
    ap.add_argument("--stem", default="scholar-xl-test")
    a = ap.parse_args()

    self_test()
    docs = read_gold(a.gold)
    if a.max_docs:
        docs = docs[: a.max_docs]
    stem = a.stem + (f"-first{len(docs)}" if a.max_docs else "")
    preds, tally = perturb(docs, a.seed)

    micro, per_type, gold_types = score([d["gold"] for d in docs], [p or [] for p in preds])
    for k in ("precision", "recall", "f1"):
        assert 0.05 < micro[k] < 0.95, (k, micro[k])
    long_gold = {(i, g) for i, d in enumerate(docs) for g in d["gold"] if g[1] - g[0] + 1 > MAX_SPAN_WORDS}
    long_hit = sum(1 for (i, g) in long_gold if preds[i] and g in set(preds[i]))

    os.makedirs(a.out, exist_ok=True)
    lines = [json.dumps({"doc_id": d["doc_id"], "entity": [[s, e + 1, t] for (s, e, t) in p]},
                        separators=(",", ":"), ensure_ascii=False)
             for d, p in zip(docs, preds) if p is not None]
    random.Random(a.seed + 1).shuffle(lines)  # predictions are matched by doc_id, not by order
    pred_path = os.path.join(a.out, stem + ".pred.jsonl")
    with open(pred_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")

    expected = {
        "generator": "tools/metric_fixture.py (official metric re-implemented from spec section 7)",
        "gold": os.path.relpath(os.path.abspath(a.gold), REPO),
        "documents": len(docs),
        "first_n_documents": a.max_docs or None,
        "seed": a.seed,
        "predictions": os.path.basename(pred_path),
        "perturbation": tally,
        "micro": micro,
        "per_type": per_type,
        "official_types": gold_types,
        "max_span_words": MAX_SPAN_WORDS,
        "unreachable_gold": len(long_gold),
        "unreachable_gold_predicted": long_hit,
    }
    exp_path = os.path.join(a.out, stem + ".expected.json")
    with open(exp_path, "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"{pred_path}: {os.path.getsize(pred_path)} bytes, {len(lines)} lines")
    print(f"{exp_path}")
    print("micro: P {precision:.6f} R {recall:.6f} F1 {f1:.6f} (gold {gold}, pred {pred}, tp {tp})".format(**micro))
    for t, p in per_type.items():
        print(f"  {t:20s} P {p['precision']:.4f} R {p['recall']:.4f} F1 {p['f1']:.4f} "
              f"gold {p['gold']:4d} pred {p['pred']:4d} tp {p['tp']:4d}")
    print("perturbation:", tally, "unreachable gold", len(long_gold), "of which predicted", long_hit)


if __name__ == "__main__":
    sys.exit(main())
