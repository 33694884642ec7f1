//! Entity-level evaluation for SeNER (spec section 7 step 6), reproducing the official
//! `MetricsCalculator.get_evaluate_fpr_overlap` / `compute` / `result` counting.
//!
//! An entity is a `(start, end, type)` triple with an **inclusive** `end` (word indices). A
//! prediction is correct only if start, end and type all equal a gold entity of the same
//! document. Per document, gold and predicted triples are de-duplicated (sets); counts are then
//! summed over the split (micro averaging). Every ratio with a zero denominator is 0, and F1 is 0
//! when precision + recall is 0.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Length buckets (in words, inclusive bounds; `None` = unbounded) used by
/// [`MetricResult::by_length`]: 1, 2–3, 4–7, 8–15, 16–31, 32–63, 64–129, >129. The 64–129 bucket
/// ends at 129 = w + 1 for the default window w = 128.
pub const LENGTH_BUCKETS: [(usize, Option<usize>, &str); 8] = [
    (1, Some(1), "1"),
    (2, Some(3), "2-3"),
    (4, Some(7), "4-7"),
    (8, Some(15), "8-15"),
    (16, Some(31), "16-31"),
    (32, Some(63), "32-63"),
    (64, Some(129), "64-129"),
    (130, None, ">129"),
];

/// Index into [`LENGTH_BUCKETS`] of an entity of `len` words (the first bucket whose upper bound
/// is `>= len`; `len` is at least 1 for valid spans, 0 would map to bucket `"1"`).
pub fn length_bucket(len: usize) -> usize {
    LENGTH_BUCKETS
        .iter()
        .position(|&(_, hi, _)| hi.is_none_or(|h| len <= h))
        .unwrap_or(LENGTH_BUCKETS.len() - 1)
}

/// Precision, recall and F1 with the counts they come from.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Prf {
    /// `tp / pred` (0 if `pred == 0`). The official code calls it `acc`.
    pub precision: f64,
    /// `tp / gold` (0 if `gold == 0`).
    pub recall: f64,
    /// `2PR / (P + R)` (0 if `P + R == 0`).
    pub f1: f64,
    /// Number of gold entities (official `origin`).
    pub gold: usize,
    /// Number of predicted entities (official `found`).
    pub pred: usize,
    /// Correct predictions (official `right`).
    pub tp: usize,
    /// `pred − tp`.
    pub fp: usize,
    /// `gold − tp` (serialised as `fn`).
    #[serde(rename = "fn")]
    pub fn_: usize,
}

impl MetricResult {
    /// Macro average over the types that occur in the gold: the mean of their P, R and F1
    /// (counts summed).
    pub fn macro_avg(&self) -> Prf {
        let types: Vec<&Prf> = self.per_type.values().filter(|p| p.gold > 0).collect();
        let n = types.len().max(1) as f64;
        let mean = |f: fn(&Prf) -> f64| types.iter().map(|p| f(p)).sum::<f64>() / n;
        let (gold, pred, tp) = types.iter().fold((0, 0, 0), |a, p| (a.0 + p.gold, a.1 + p.pred, a.2 + p.tp));
        Prf { precision: mean(|p| p.precision), recall: mean(|p| p.recall), f1: mean(|p| p.f1), gold, pred, tp, fp: pred - tp, fn_: gold - tp }
    }
}

impl Prf {
    /// Builds the numbers from `gold`, `pred` and `tp` counts (`tp <= gold`, `tp <= pred`).
    pub fn from_counts(gold: usize, pred: usize, tp: usize) -> Prf {
        let recall = if gold == 0 {
            0.0
        } else {
            tp as f64 / gold as f64
        };
        let precision = if pred == 0 {
            0.0
        } else {
            tp as f64 / pred as f64
        };
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Prf {
            precision,
            recall,
            f1,
            gold,
            pred,
            tp,
            fp: pred - tp.min(pred),
            fn_: gold - tp.min(gold),
        }
    }
}

/// Scores for one entity-length bucket: recall is counted on gold entities of that length,
/// precision on predicted entities of that length (a correct prediction has the same length as
/// its gold entity, so `tp` is the same on both sides).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketResult {
    /// Bucket name, e.g. `"4-7"` or `">129"`.
    pub bucket: String,
    /// Smallest length in the bucket (words).
    pub min_len: usize,
    /// Largest length in the bucket (words), `None` if unbounded.
    pub max_len: Option<usize>,
    /// Numbers for this bucket.
    pub prf: Prf,
}

/// The result of a [`Scorer`]: micro, per-type and per-length numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricResult {
    /// Micro P/R/F1 over all `(doc, start, end, type)` triples.
    pub micro: Prf,
    /// P/R/F1 per type name, for every type that occurs in the gold **or** the predictions
    /// (the official `result` lists only gold types; micro numbers are unaffected).
    pub per_type: BTreeMap<String, Prf>,
    /// P/R/F1 per entity-length bucket, in [`LENGTH_BUCKETS`] order (all 8 buckets, even empty).
    pub by_length: Vec<BucketResult>,
    /// Documents added.
    pub documents: usize,
    /// Longest span (words) the model can produce: `w + 1`.
    pub max_span_words: usize,
    /// De-duplicated gold entities longer than `max_span_words` (they can never be predicted by
    /// one segment and count as misses; they are included in `micro.gold`).
    pub unreachable_gold: usize,
}

/// Why [`Scorer::add`] rejected a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricError {
    /// An entity with `end < start` (ends are inclusive, so a span has at least one word).
    InvalidSpan {
        /// `true` for a gold entity, `false` for a prediction.
        gold: bool,
        /// Position of the entity in the slice passed to `add`.
        index: usize,
        /// Its start.
        start: usize,
        /// Its (inclusive) end.
        end: usize,
    },
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricError::InvalidSpan {
                gold,
                index,
                start,
                end,
            } => write!(
                f,
                "{} entity #{index} has end {end} < start {start} (ends are inclusive)",
                if *gold { "gold" } else { "predicted" }
            ),
        }
    }
}

impl std::error::Error for MetricError {}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    gold: usize,
    pred: usize,
    tp: usize,
}

/// Accumulates entity counts document by document; [`Scorer::result`] gives the scores.
#[derive(Debug, Clone)]
pub struct Scorer {
    max_span_words: usize,
    documents: usize,
    micro: Counts,
    per_type: BTreeMap<String, Counts>,
    by_length: [Counts; 8],
    unreachable_gold: usize,
}

impl Scorer {
    /// A scorer for a model with one-sided span window `w`: gold entities of more than `w + 1`
    /// words are counted as unreachable.
    pub fn new(w: usize) -> Scorer {
        Scorer {
            max_span_words: w.saturating_add(1),
            documents: 0,
            micro: Counts::default(),
            per_type: BTreeMap::new(),
            by_length: [Counts::default(); 8],
            unreachable_gold: 0,
        }
    }

    /// Adds one document: its gold entities and its (document-level, e.g. merged) predictions,
    /// each `(start, end_inclusive, type_name)`. Duplicates within each list are ignored.
    ///
    /// # Errors
    /// [`MetricError::InvalidSpan`] if any entity has `end < start`; the scorer is then left
    /// unchanged.
    pub fn add<S: AsRef<str>>(
        &mut self,
        gold: &[(usize, usize, S)],
        pred: &[(usize, usize, S)],
    ) -> Result<(), MetricError> {
        self.add_with_len(gold, pred, |s, e| e - s + 1)
    }

    /// [`Scorer::add`] for spans in other units (e.g. characters, inclusive ends): `len(s, e)`
    /// gives a span's length in words, for the length buckets and the unreachable count.
    pub fn add_with_len<S: AsRef<str>>(
        &mut self,
        gold: &[(usize, usize, S)],
        pred: &[(usize, usize, S)],
        len: impl Fn(usize, usize) -> usize,
    ) -> Result<(), MetricError> {
        let gold = to_set(gold, true)?;
        let pred = to_set(pred, false)?;
        self.documents += 1;
        for &(s, e, t) in &gold {
            let len = len(s, e);
            let hit = pred.contains(&(s, e, t));
            let c = self.per_type.entry(t.to_string()).or_default();
            c.gold += 1;
            self.micro.gold += 1;
            self.by_length[length_bucket(len)].gold += 1;
            if hit {
                c.tp += 1;
                self.micro.tp += 1;
                self.by_length[length_bucket(len)].tp += 1;
            }
            if len > self.max_span_words {
                self.unreachable_gold += 1;
            }
        }
        for &(s, e, t) in &pred {
            self.per_type.entry(t.to_string()).or_default().pred += 1;
            self.micro.pred += 1;
            self.by_length[length_bucket(len(s, e))].pred += 1;
        }
        Ok(())
    }

    /// The scores of everything added so far.
    pub fn result(&self) -> MetricResult {
        let prf = |c: &Counts| Prf::from_counts(c.gold, c.pred, c.tp);
        MetricResult {
            micro: prf(&self.micro),
            per_type: self
                .per_type
                .iter()
                .map(|(k, c)| (k.clone(), prf(c)))
                .collect(),
            by_length: LENGTH_BUCKETS
                .iter()
                .zip(&self.by_length)
                .map(|(&(lo, hi, name), c)| BucketResult {
                    bucket: name.to_string(),
                    min_len: lo,
                    max_len: hi,
                    prf: prf(c),
                })
                .collect(),
            documents: self.documents,
            max_span_words: self.max_span_words,
            unreachable_gold: self.unreachable_gold,
        }
    }
}

fn to_set<S: AsRef<str>>(
    items: &[(usize, usize, S)],
    gold: bool,
) -> Result<BTreeSet<(usize, usize, &str)>, MetricError> {
    let mut set = BTreeSet::new();
    for (index, (s, e, t)) in items.iter().enumerate() {
        if e < s {
            return Err(MetricError::InvalidSpan {
                gold,
                index,
                start: *s,
                end: *e,
            });
        }
        set.insert((*s, *e, t.as_ref()));
    }
    Ok(set)
}

/// Spans `(start, end_inclusive, label)` of one document, in words or characters.
pub type Spans = Vec<(usize, usize, String)>;

/// Scores predictions against annotated documents: gold from each document's entities, on word
/// spans (`chars == false`: the entities must be word-aligned) or character spans (lengths for
/// the buckets in the document's words, or whitespace words when it has none). `window` is the
/// model's span window (longer gold entities are counted as unreachable).
pub fn score_documents(docs: &[sener_data::Document], preds: &[Spans], chars: bool, window: usize) -> Result<MetricResult, String> {
    if docs.len() != preds.len() {
        return Err(format!("{} documents but {} prediction lists", docs.len(), preds.len()));
    }
    let mut scorer = Scorer::new(window);
    for (d, pred) in docs.iter().zip(preds) {
        let r = if chars {
            let gold: Spans = d.entities.iter().map(|e| (e.start, e.end.saturating_sub(1), e.label.clone())).collect();
            let words = match &d.words {
                Some(w) => w.clone(),
                None => sener_data::split::Splitter::Whitespace.split(&d.text),
            };
            let len = |s: usize, e: usize| {
                let first = words.partition_point(|w| w.end <= s);
                let last = words.partition_point(|w| w.start <= e);
                last.saturating_sub(first).max(1)
            };
            scorer.add_with_len(&gold, pred, len)
        } else {
            let (we, report) = d.word_entities().map_err(|e| e.to_string())?;
            if !report.is_empty() {
                return Err(format!("document {}: {} gold entities do not start and end on word boundaries", d.id, report.counts().values().sum::<usize>()));
            }
            let gold: Spans = we.iter().map(|e| (e.start, e.end - 1, e.label.clone())).collect();
            scorer.add(&gold, pred)
        };
        r.map_err(|e| format!("document {}: {e}", d.id))?;
    }
    Ok(scorer.result())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: usize, t: usize, ty: &str) -> (usize, usize, String) {
        (s, t, ty.to_string())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn assert_prf(p: &Prf, gold: usize, pred: usize, tp: usize, prec: f64, rec: f64, f1: f64) {
        assert_eq!(
            (p.gold, p.pred, p.tp, p.fp, p.fn_),
            (gold, pred, tp, pred - tp, gold - tp),
            "{p:?}"
        );
        assert!(
            close(p.precision, prec) && close(p.recall, rec) && close(p.f1, f1),
            "{p:?}"
        );
    }

    /// The hand-worked split used by several tests (w = 128):
    ///
    /// doc 1 gold  {gender(0,0), title(2,4), title(2,4) dup, work_for(6,9)}   → 3 distinct
    ///       pred  {gender(0,0), gender(0,0) dup, work_for(2,4), work_for(6,9)} → 3 distinct
    ///       tp: gender(0,0), work_for(6,9) = 2   (work_for(2,4) has the wrong type)
    /// doc 2 gold  {title(1,2)}; pred {title(1,2), gender(3,3), awards(5,5)}; tp 1
    /// doc 3 gold  {gender(0,1)}; pred {gender(0,0)}; tp 0 (matches a doc-1 gold triple, but the
    ///       document differs)
    /// doc 4 gold {}; pred {}
    /// doc 5 gold {title(0,0)}; pred {} (empty predictions)
    fn example() -> Scorer {
        let mut sc = Scorer::new(128);
        sc.add(
            &[
                e(0, 0, "gender"),
                e(2, 4, "title"),
                e(2, 4, "title"),
                e(6, 9, "work_for"),
            ],
            &[
                e(0, 0, "gender"),
                e(0, 0, "gender"),
                e(2, 4, "work_for"),
                e(6, 9, "work_for"),
            ],
        )
        .expect("valid");
        sc.add(
            &[e(1, 2, "title")],
            &[e(1, 2, "title"), e(3, 3, "gender"), e(5, 5, "awards")],
        )
        .expect("valid");
        sc.add(&[e(0, 1, "gender")], &[e(0, 0, "gender")])
            .expect("valid");
        let none: [(usize, usize, &str); 0] = [];
        sc.add(&none, &none).expect("valid");
        sc.add(&[(0, 0, "title")], &none).expect("valid");
        sc
    }

    #[test]
    fn micro_counts_dedup_per_document() {
        let r = example().result();
        assert_eq!(r.documents, 5);
        // gold 3 + 1 + 1 + 0 + 1 = 6; pred 3 + 3 + 1 + 0 + 0 = 7; tp 2 + 1 + 0 = 3.
        // P = 3/7, R = 3/6 = 0.5, F1 = 2·(3/7)(1/2)/((3/7)+(1/2)) = (3/7)/(13/14) = 6/13.
        assert_prf(&r.micro, 6, 7, 3, 3.0 / 7.0, 0.5, 6.0 / 13.0);
    }

    #[test]
    fn per_type_numbers() {
        let r = example().result();
        let names: Vec<&str> = r.per_type.keys().map(|k| k.as_str()).collect();
        // Sorted names; "awards" occurs only in predictions and is still listed.
        assert_eq!(names, vec!["awards", "gender", "title", "work_for"]);
        // awards: gold 0, pred 1, tp 0 → P 0, R 0/0 = 0, F1 0.
        assert_prf(&r.per_type["awards"], 0, 1, 0, 0.0, 0.0, 0.0);
        // gender: gold {d1 (0,0), d3 (0,1)} = 2; pred {d1 (0,0), d2 (3,3), d3 (0,0)} = 3; tp 1.
        // P 1/3, R 1/2, F1 = 2·(1/6)/(5/6) = 0.4.
        assert_prf(&r.per_type["gender"], 2, 3, 1, 1.0 / 3.0, 0.5, 0.4);
        // title: gold {d1 (2,4), d2 (1,2), d5 (0,0)} = 3; pred {d2 (1,2)} = 1; tp 1.
        // P 1, R 1/3, F1 = 2·(1/3)/(4/3) = 0.5.
        assert_prf(&r.per_type["title"], 3, 1, 1, 1.0, 1.0 / 3.0, 0.5);
        // work_for: gold {d1 (6,9)} = 1; pred {d1 (2,4), d1 (6,9)} = 2; tp 1 → P 0.5, R 1, F1 2/3.
        assert_prf(&r.per_type["work_for"], 1, 2, 1, 0.5, 1.0, 2.0 / 3.0);
        // The per-type counts add up to the micro counts.
        let sum = |f: fn(&Prf) -> usize| r.per_type.values().map(f).sum::<usize>();
        assert_eq!((sum(|p| p.gold), sum(|p| p.pred), sum(|p| p.tp)), (6, 7, 3));
    }

    #[test]
    fn length_buckets_of_example() {
        let r = example().result();
        assert_eq!(r.by_length.len(), 8);
        let names: Vec<&str> = r.by_length.iter().map(|b| b.bucket.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-129", ">129"
            ]
        );
        // Gold lengths: d1 gender(0,0)=1, title(2,4)=3, work_for(6,9)=4; d2 title(1,2)=2;
        //               d3 gender(0,1)=2; d5 title(0,0)=1.
        // Pred lengths: d1 gender(0,0)=1, work_for(2,4)=3, work_for(6,9)=4; d2 title(1,2)=2,
        //               gender(3,3)=1, awards(5,5)=1; d3 gender(0,0)=1.
        // "1":   gold 2, pred 4, tp 1 (d1 gender) → P 1/4, R 1/2, F1 = 2·(1/8)/(3/4) = 1/3.
        assert_prf(&r.by_length[0].prf, 2, 4, 1, 0.25, 0.5, 1.0 / 3.0);
        // "2-3": gold 3, pred 2, tp 1 (d2 title) → P 1/2, R 1/3, F1 = 2·(1/6)/(5/6) = 0.4.
        assert_prf(&r.by_length[1].prf, 3, 2, 1, 0.5, 1.0 / 3.0, 0.4);
        // "4-7": gold 1, pred 1, tp 1 → all 1.
        assert_prf(&r.by_length[2].prf, 1, 1, 1, 1.0, 1.0, 1.0);
        for b in &r.by_length[3..] {
            assert_prf(&b.prf, 0, 0, 0, 0.0, 0.0, 0.0);
        }
        assert_eq!(
            (r.by_length[6].min_len, r.by_length[6].max_len),
            (64, Some(129))
        );
        assert_eq!(
            (r.by_length[7].min_len, r.by_length[7].max_len),
            (130, None)
        );
        assert_eq!(r.unreachable_gold, 0);
        assert_eq!(r.max_span_words, 129);
    }

    #[test]
    fn bucket_boundaries() {
        let cases = [
            (1, 0),
            (2, 1),
            (3, 1),
            (4, 2),
            (7, 2),
            (8, 3),
            (15, 3),
            (16, 4),
            (31, 4),
            (32, 5),
            (63, 5),
            (64, 6),
            (128, 6),
            (129, 6),
            (130, 7),
            (480, 7),
            (usize::MAX, 7),
        ];
        for (len, b) in cases {
            assert_eq!(length_bucket(len), b, "len {len}");
        }
    }

    #[test]
    fn unreachable_gold_counts_distinct_entities_longer_than_w_plus_one() {
        // w = 2 → spans of at most 3 words can be produced.
        let mut sc = Scorer::new(2);
        let gold = [
            e(0, 2, "a"),   // 3 words: reachable
            e(0, 3, "a"),   // 4 words: unreachable
            e(0, 3, "a"),   // duplicate: not counted again
            e(10, 72, "b"), // 63 words
            e(10, 73, "b"), // 64 words
            e(0, 128, "b"), // 129 words
            e(0, 129, "b"), // 130 words
        ];
        // A merged (cross-segment) prediction may still hit a long gold entity.
        sc.add(&gold, &[e(0, 129, "b")]).expect("valid");
        let r = sc.result();
        assert_eq!(r.max_span_words, 3);
        assert_eq!(r.unreachable_gold, 5); // lengths 4, 63, 64, 129, 130
        assert_prf(
            &r.micro,
            6,
            1,
            1,
            1.0,
            1.0 / 6.0,
            2.0 * (1.0 / 6.0) / (7.0 / 6.0),
        );
        // Buckets: "2-3" gold 1; "4-7" gold 1; "32-63" gold 1; "64-129" gold 2; ">129" gold 1,
        // pred 1, tp 1.
        let g: Vec<usize> = r.by_length.iter().map(|b| b.prf.gold).collect();
        assert_eq!(g, vec![0, 1, 1, 0, 0, 1, 2, 1]);
        assert_prf(&r.by_length[7].prf, 1, 1, 1, 1.0, 1.0, 1.0);
    }

    #[test]
    fn empty_predictions_and_empty_scorer() {
        let r = Scorer::new(128).result();
        assert_eq!(r.documents, 0);
        assert_prf(&r.micro, 0, 0, 0, 0.0, 0.0, 0.0);
        assert!(r.per_type.is_empty());
        assert_eq!(r.by_length.len(), 8);
        let mut sc = Scorer::new(128);
        let none: [(usize, usize, String); 0] = [];
        sc.add(&[e(0, 1, "x"), e(3, 3, "y")], &none).expect("valid");
        let r = sc.result();
        assert_prf(&r.micro, 2, 0, 0, 0.0, 0.0, 0.0);
        assert_prf(&r.per_type["x"], 1, 0, 0, 0.0, 0.0, 0.0);
        // Predictions but no gold: P = 0/2 = 0, R = 0/0 = 0.
        let mut sc = Scorer::new(128);
        sc.add(&none, &[e(0, 1, "x"), e(0, 1, "x"), e(2, 2, "x")])
            .expect("valid");
        assert_prf(&sc.result().micro, 0, 2, 0, 0.0, 0.0, 0.0);
    }

    #[test]
    fn perfect_prediction() {
        let mut sc = Scorer::new(128);
        let g = [e(0, 1, "x"), e(0, 0, "y"), e(0, 1, "y")];
        sc.add(&g, &g).expect("valid");
        assert_prf(&sc.result().micro, 3, 3, 3, 1.0, 1.0, 1.0);
    }

    #[test]
    fn invalid_span_is_rejected_and_state_unchanged() {
        let mut sc = Scorer::new(128);
        sc.add(&[e(0, 0, "x")], &[e(0, 0, "x")]).expect("valid");
        let before = sc.result();
        let err = sc
            .add(&[e(0, 0, "x")], &[e(0, 0, "x"), e(5, 4, "x")])
            .unwrap_err();
        assert_eq!(
            err,
            MetricError::InvalidSpan {
                gold: false,
                index: 1,
                start: 5,
                end: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "predicted entity #1 has end 4 < start 5 (ends are inclusive)"
        );
        let err = sc.add(&[e(3, 2, "x")], &[]).unwrap_err();
        assert!(matches!(
            err,
            MetricError::InvalidSpan {
                gold: true,
                index: 0,
                ..
            }
        ));
        let _: &dyn std::error::Error = &err;
        assert_eq!(sc.result(), before);
    }

    #[test]
    fn prf_from_counts_zero_denominators() {
        assert_eq!(Prf::from_counts(0, 0, 0), Prf::default());
        let p = Prf::from_counts(4, 0, 0);
        assert_eq!((p.precision, p.recall, p.f1, p.fn_), (0.0, 0.0, 0.0, 4));
        let p = Prf::from_counts(0, 3, 0);
        assert_eq!((p.precision, p.recall, p.f1, p.fp), (0.0, 0.0, 0.0, 3));
        // 2PR/(P+R) with P = 2/4, R = 2/5: 2·0.2/0.9 = 4/9.
        assert!(close(Prf::from_counts(5, 4, 2).f1, 4.0 / 9.0));
    }

    #[test]
    fn result_types_are_serialisable() {
        fn is_serde<T: Serialize + for<'de> Deserialize<'de>>() {}
        is_serde::<MetricResult>();
        is_serde::<Prf>();
        is_serde::<BucketResult>();
    }
}
