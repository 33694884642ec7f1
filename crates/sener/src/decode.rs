//! Span decoding for SeNER (spec section 7, steps 1–5), reproducing the official
//! `sener/models/metrics.py` (`MetricsCalculator.get_evaluate_fpr_overlap`, `decode`,
//! `filter_clashed_by_priority`, `is_overlapped`, `is_nested`, `is_clashed`).
//!
//! # Band layout
//! For a segment of `n` words and one-sided span window `w`, the model emits logits of shape
//! `[n, K = 2w + 1, R]`, row-major `f32`. Band cell `(i, k)` holds the word pair
//! `(i, j = i + k − w)`: `k == w` is the single-word span `(i, i)`, `k > w` the upper triangle
//! (start `i`, end `j > i`), `k < w` the lower triangle (`j < i`). A pair with `j < 0` or
//! `j ≥ n` is a padding cell.
//!
//! # Decoding one segment ([`decode_segment`])
//! 1. `p = sigmoid(logit)`, then `p̄(i,k) = (p(i,k) + p((i+k−w) mod n, 2w−k)) / 2`: the upper cell
//!    `(s, e)` is averaged with the lower cell `(e, s)`, which lives at row `e`, column `w − (e−s)`.
//!    Probabilities are averaged, not logits.
//! 2. Candidates are the spans `(s, e = s + d)`, `d = 0..=w`, `e < n`. With a global threshold,
//!    `score = max_t p̄(s, w+d, t)`, `label = argmax_t` (the **lowest** type index among equal
//!    maxima, like `torch.argmax`), and the span is a candidate iff `score ≥ threshold`.
//! 3. Candidates are sorted by priority (descending key, then larger `s`, then larger `d`; see
//!    [`CandidateOrder`]) and kept greedily if they do not clash ([`clashes`]) with a span kept
//!    before.
//! 4. The kept spans are returned sorted by `(start, end)`.
//!
//! # Merging segments ([`merge_segments`])
//! See the function's documentation.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The official decision threshold on the symmetrised probability (`ent_thres = 0.5`).
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// The logit the official model writes into padding cells (pairs outside the segment) at
/// inference. Only [`CandidateOrder::OfficialColumnQuirk`] ever reads a padding cell, and it uses
/// this constant instead of whatever the caller's slice holds there.
pub const OFFICIAL_PAD_LOGIT: f32 = -1e-6;

/// One predicted entity span inside a segment (or, after [`merge_segments`], inside a document).
///
/// `start` and `end` are word indices and **`end` is inclusive**: a single-word entity has
/// `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// Index of the first word of the span.
    pub start: usize,
    /// Index of the last word of the span (inclusive).
    pub end: usize,
    /// Entity type index (`0..R`).
    pub label: usize,
    /// Symmetrised probability `p̄` of `label` for this span (after a merge: the maximum over the
    /// merged spans).
    pub score: f32,
}

/// Decision threshold(s) on the symmetrised probability `p̄`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Threshold {
    /// One threshold for every type (the official rule; default 0.5). A span is a candidate iff
    /// `max_t p̄_t ≥ threshold`; its label is the argmax over **all** types.
    Global(f32),
    /// One threshold per type (length `R`). A span is a candidate iff **some** type `t` has
    /// `p̄_t ≥ thresholds[t]`; its label is the argmax of `p̄` among the types that pass (lowest
    /// index on ties) and its score is that type's `p̄`. With all entries equal this is exactly
    /// [`Threshold::Global`].
    PerType(Vec<f32>),
}

/// How two spans that share exactly one boundary word are treated by the overlap test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Boundary {
    /// The official quirk: `overlap((s1,e1),(s2,e2)) = s1 < e2 && s2 < e1` on inclusive ends, so
    /// spans sharing only a boundary word (e.g. `(0,2)` and `(2,4)`) do **not** overlap, and a
    /// single-word span `(a,a)` overlaps another span only if `a` lies strictly inside it.
    Official,
    /// The natural inclusive test: `s1 <= e2 && s2 <= e1`; any shared word is an overlap.
    Strict,
}

/// Order in which candidates are offered to the greedy clash filter.
///
/// In both variants ties in the key go to the larger start `s`, then the larger length offset
/// `d = e − s` (Python's `sorted(zip(confidences, [[s, d], ...]), reverse=True)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CandidateOrder {
    /// Key = the candidate's own score (spec section 7 step 3, and the paper: "the span with the
    /// highest prediction score is selected").
    Score,
    /// Key = what the official code actually sorts by. `decode()` in `metrics.py` computes
    /// `confidences = curr_scores[chunks]` with `chunks` taken from the **sliced** tensor
    /// `curr_scores[:len, w:]`, so the key of candidate `(s, d)` is read at band column `d`
    /// instead of `w + d`: it is `max_t p̄(s, d, t)`, the score of the pair `(s, s + d − w)`,
    /// i.e. of the span `(s − w + d, s)`; when `s − w + d < 0` that is a padding cell and the
    /// key is `sigmoid(OFFICIAL_PAD_LOGIT)` ≈ 0.49999975. Filtering, label and reported score are
    /// unaffected; only the greedy order changes. Use this to reproduce the official numbers.
    /// (With [`Threshold::PerType`] the key is still the maximum over all types at column `d`.)
    OfficialColumnQuirk,
}

/// Options of [`decode_segment`]. [`Default`] gives the official settings except for
/// [`CandidateOrder`], which defaults to the spec's [`CandidateOrder::Score`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeOptions {
    /// Decision threshold(s); default `Global(0.5)`.
    pub threshold: Threshold,
    /// `true` (default, official `allow_nested=True`): nested spans may coexist and only
    /// overlapping, non-nested spans clash. `false`: every overlap clashes (flat output, subject
    /// to the [`Boundary`] rule).
    pub allow_nested: bool,
    /// Overlap rule; default [`Boundary::Official`].
    pub boundary: Boundary,
    /// Greedy order; default [`CandidateOrder::Score`].
    pub order: CandidateOrder,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            threshold: Threshold::Global(DEFAULT_THRESHOLD),
            allow_nested: true,
            boundary: Boundary::Official,
            order: CandidateOrder::Score,
        }
    }
}

/// Why [`decode_segment`] or [`symmetrise`] rejected its input.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// `r == 0`: there must be at least one entity type.
    NoTypes,
    /// `n * (2w + 1) * r` does not fit in `usize`.
    ShapeOverflow {
        /// Words in the segment.
        n: usize,
        /// One-sided window.
        w: usize,
        /// Number of types.
        r: usize,
    },
    /// `logits.len()` is not `n * (2w + 1) * r`.
    LogitsLength {
        /// `n * (2w + 1) * r`.
        expected: usize,
        /// `logits.len()`.
        actual: usize,
    },
    /// A NaN logit (the model head replaces non-finite logits by 0 before decoding, so a NaN here
    /// is an upstream bug). `±inf` is accepted.
    NanLogit {
        /// Row (word index) of the offending cell.
        row: usize,
        /// Band column of the offending cell.
        column: usize,
        /// Type index of the offending cell.
        label: usize,
    },
    /// `Threshold::PerType` does not have exactly `r` entries.
    ThresholdLength {
        /// `r`.
        expected: usize,
        /// Number of thresholds given.
        actual: usize,
    },
    /// A threshold is NaN.
    NanThreshold {
        /// Type index for `PerType`, `None` for `Global`.
        label: Option<usize>,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NoTypes => write!(f, "the number of entity types r must be at least 1"),
            DecodeError::ShapeOverflow { n, w, r } => {
                write!(
                    f,
                    "logits shape n={n} x (2w+1) (w={w}) x r={r} overflows usize"
                )
            }
            DecodeError::LogitsLength { expected, actual } => write!(
                f,
                "logits has {actual} values, expected n*(2w+1)*r = {expected}"
            ),
            DecodeError::NanLogit { row, column, label } => write!(
                f,
                "NaN logit at row {row}, band column {column}, type {label}"
            ),
            DecodeError::ThresholdLength { expected, actual } => write!(
                f,
                "per-type threshold vector has {actual} entries, expected r = {expected}"
            ),
            DecodeError::NanThreshold { label: Some(t) } => {
                write!(f, "threshold of type {t} is NaN")
            }
            DecodeError::NanThreshold { label: None } => write!(f, "global threshold is NaN"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Overlap test on inclusive-end spans `(start, end)` under the given [`Boundary`] rule.
///
/// `Official`: `s1 < e2 && s2 < e1`; `Strict`: `s1 <= e2 && s2 <= e1`.
pub fn overlaps(a: (usize, usize), b: (usize, usize), boundary: Boundary) -> bool {
    let ((s1, e1), (s2, e2)) = (a, b);
    match boundary {
        Boundary::Official => s1 < e2 && s2 < e1,
        Boundary::Strict => s1 <= e2 && s2 <= e1,
    }
}

/// Nesting test on inclusive-end spans: one contains the other (`≤` on both ends). Identical
/// spans are nested.
pub fn is_nested(a: (usize, usize), b: (usize, usize)) -> bool {
    let ((s1, e1), (s2, e2)) = (a, b);
    (s1 <= s2 && e2 <= e1) || (s2 <= s1 && e1 <= e2)
}

/// Clash test of the greedy filter: with `allow_nested`, an overlap that is not a nesting; without
/// it, any overlap.
///
/// Consequences worth knowing: with `allow_nested` identical spans never clash; in flat mode
/// under [`Boundary::Official`] identical multi-word spans clash but identical single-word spans
/// do not (`a < a` is false), and a single-word span at either end of a longer span does not
/// clash with it.
pub fn clashes(
    a: (usize, usize),
    b: (usize, usize),
    allow_nested: bool,
    boundary: Boundary,
) -> bool {
    if allow_nested {
        overlaps(a, b, boundary) && !is_nested(a, b)
    } else {
        overlaps(a, b, boundary)
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Validates the shape and the values of `logits`; returns `K = 2w + 1`.
fn validate(logits: &[f32], n: usize, w: usize, r: usize) -> Result<usize, DecodeError> {
    if r == 0 {
        return Err(DecodeError::NoTypes);
    }
    let k = w
        .checked_mul(2)
        .and_then(|x| x.checked_add(1))
        .ok_or(DecodeError::ShapeOverflow { n, w, r })?;
    let expected = n
        .checked_mul(k)
        .and_then(|x| x.checked_mul(r))
        .ok_or(DecodeError::ShapeOverflow { n, w, r })?;
    if logits.len() != expected {
        return Err(DecodeError::LogitsLength {
            expected,
            actual: logits.len(),
        });
    }
    if let Some(idx) = logits.iter().position(|x| x.is_nan()) {
        return Err(DecodeError::NanLogit {
            row: idx / (k * r),
            column: (idx / r) % k,
            label: idx % r,
        });
    }
    Ok(k)
}

/// The full symmetrised probability band `p̄`, shape `[n, 2w+1, r]`, computed exactly like the
/// official roll + flip: `p̄(i,k,t) = (σ(L[i,k,t]) + σ(L[(i+k−w) mod n, 2w−k, t])) / 2`.
///
/// Padding cells (pairs outside the segment) are averaged with another padding cell, so their
/// value is whatever the caller's padding logits give. Provided for inspection and tests;
/// [`decode_segment`] reads only the cells it needs.
pub fn symmetrise(logits: &[f32], n: usize, w: usize, r: usize) -> Result<Vec<f32>, DecodeError> {
    let k = validate(logits, n, w, r)?;
    let mut out = vec![0.0f32; logits.len()];
    for i in 0..n {
        for c in 0..k {
            // (i + c − w) mod n, non-negative like torch's `%`.
            let mi = (i as i128 + c as i128 - w as i128).rem_euclid(n as i128) as usize;
            let mc = 2 * w - c;
            for t in 0..r {
                let a = sigmoid(logits[(i * k + c) * r + t]);
                let b = sigmoid(logits[(mi * k + mc) * r + t]);
                out[(i * k + c) * r + t] = (a + b) / 2.0;
            }
        }
    }
    Ok(out)
}

/// Decodes one segment's band logits into non-clashing entity spans.
///
/// * `logits`: row-major `[n, 2w+1, r]` (see the module docs for the band layout).
/// * `n`: words in the segment; `w`: one-sided span window (spans of up to `w + 1` words);
///   `r`: number of entity types.
///
/// Returns the kept spans sorted by `(start, end)`; ends are inclusive and segment-local. At most
/// one label per span. Padding cells are never read except by
/// [`CandidateOrder::OfficialColumnQuirk`], which uses [`OFFICIAL_PAD_LOGIT`] for them.
///
/// # Errors
/// [`DecodeError`] if `r == 0`, the shape overflows, `logits.len() != n*(2w+1)*r`, a logit is
/// NaN, or the threshold is NaN / has the wrong length.
pub fn decode_segment(
    logits: &[f32],
    n: usize,
    w: usize,
    r: usize,
    opts: &DecodeOptions,
) -> Result<Vec<Span>, DecodeError> {
    let k = validate(logits, n, w, r)?;
    match &opts.threshold {
        Threshold::Global(x) if x.is_nan() => {
            return Err(DecodeError::NanThreshold { label: None });
        }
        Threshold::PerType(v) => {
            if v.len() != r {
                return Err(DecodeError::ThresholdLength {
                    expected: r,
                    actual: v.len(),
                });
            }
            if let Some(t) = v.iter().position(|x| x.is_nan()) {
                return Err(DecodeError::NanThreshold { label: Some(t) });
            }
        }
        Threshold::Global(_) => {}
    }

    // p̄ of pair (s, e) (s <= e < n, e - s <= w) for every type, into `buf`.
    let pair_probs = |s: usize, e: usize, buf: &mut [f32]| {
        let d = e - s;
        let up = (s * k + w + d) * r;
        let lo = (e * k + w - d) * r;
        for (t, slot) in buf.iter_mut().enumerate() {
            *slot = (sigmoid(logits[up + t]) + sigmoid(logits[lo + t])) / 2.0;
        }
    };

    // Candidates: (key, s, d, label, score).
    let mut cands: Vec<(f32, usize, usize, usize, f32)> = Vec::new();
    let mut probs = vec![0.0f32; r];
    let mut key_probs = vec![0.0f32; r];
    let pad_prob = sigmoid(OFFICIAL_PAD_LOGIT);
    for s in 0..n {
        for d in 0..=w {
            let e = s + d;
            if e >= n {
                break;
            }
            pair_probs(s, e, &mut probs);
            let picked = match &opts.threshold {
                Threshold::Global(thr) => {
                    let (label, score) = first_argmax(probs.iter().copied().enumerate());
                    (score >= *thr).then_some((label, score))
                }
                Threshold::PerType(thr) => {
                    let passing = probs
                        .iter()
                        .copied()
                        .enumerate()
                        .filter(|&(t, p)| p >= thr[t]);
                    let mut passing = passing.peekable();
                    if passing.peek().is_some() {
                        Some(first_argmax(passing))
                    } else {
                        None
                    }
                }
            };
            let Some((label, score)) = picked else {
                continue;
            };
            let key = match opts.order {
                CandidateOrder::Score => score,
                CandidateOrder::OfficialColumnQuirk => {
                    // Column d of row s: pair (s, s + d − w), i.e. span (s + d − w, s).
                    if s + d >= w {
                        pair_probs(s + d - w, s, &mut key_probs);
                        first_argmax(key_probs.iter().copied().enumerate()).1
                    } else {
                        pad_prob
                    }
                }
            };
            cands.push((key, s, d, label, score));
        }
    }

    // Descending (key, s, d), like Python's sorted(..., reverse=True) on (score, [s, d]).
    cands.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| b.1.cmp(&a.1))
            .then_with(|| b.2.cmp(&a.2))
    });

    // Greedy clash filter. Kept spans are indexed by start: a kept span (s2, e2) can overlap
    // (s, e) only if s2 <= e and e2 >= s, and e2 - s2 <= w, so s2 ∈ [s − w, e].
    let mut kept_ends: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut out: Vec<Span> = Vec::new();
    for &(_, s, d, label, score) in &cands {
        let e = s + d;
        let lo = s.saturating_sub(w);
        let clash = (lo..=e).any(|s2| {
            kept_ends[s2]
                .iter()
                .any(|&e2| clashes((s, e), (s2, e2), opts.allow_nested, opts.boundary))
        });
        if !clash {
            kept_ends[s].push(e);
            out.push(Span {
                start: s,
                end: e,
                label,
                score,
            });
        }
    }
    out.sort_by_key(|x| (x.start, x.end));
    Ok(out)
}

/// First maximum of `(index, value)` pairs (lowest index on ties); `(0, -inf)` if empty.
fn first_argmax(it: impl Iterator<Item = (usize, f32)>) -> (usize, f32) {
    let mut best = (0usize, f32::NEG_INFINITY);
    let mut first = true;
    for (t, p) in it {
        if first || p > best.1 {
            best = (t, p);
            first = false;
        }
    }
    best
}

/// Merges the per-segment predictions of one document into document-level spans, as the official
/// `get_evaluate_fpr_overlap` does.
///
/// `segments` is a list of `(word_offset, spans)` in document order (official order: feature
/// index); each segment's spans are segment-local and are shifted by `word_offset`
/// (saturating). Segments are processed in order, keeping a set `A` of accepted document-level
/// spans (initially empty). For segment `k`, each shifted span `x = (s', e', t)` is compared with
/// every span `a = (s1, e1, t1)` accepted from segments `< k`:
///
/// * if `t1 == t` and they overlap **inclusively** (`s1 <= e' && s' <= e1`; sharing one word is
///   enough), `a` is scheduled for removal and the union `(min(s1, s'), max(e1, e'), t)` is added;
/// * if `x` overlaps no such `a`, `x` itself is added.
///
/// After the whole segment: the scheduled spans are removed from `A` and the added ones inserted.
/// Consequences (all as in the official code):
/// * spans of the same segment are never merged with each other (even if they overlap), and they
///   are compared only with `A` as it was before the segment;
/// * a new span overlapping several accepted spans yields one union **per** accepted span (the
///   unions are not merged together), and several new spans overlapping the same accepted span
///   each yield their own union with it;
/// * spans of different types are never merged;
/// * `A` is a set on `(start, end, label)`: duplicates collapse.
///
/// Score (the spec leaves it open): a union takes the maximum of the two scores, and when
/// duplicates collapse the maximum is kept.
///
/// In the official pipeline segments are consecutive subword windows; a word cut by a window
/// border appears as the last word of one segment and the first word of the next (the next
/// offset is that word's index), which is where this inclusive merge takes effect.
///
/// Returns the spans sorted by `(start, end, label)`.
// Accepted spans are indexed by (label, start): a new span [s, e] can only overlap an accepted
// [s1, e1] of its label with s − L ≤ s1 ≤ e, L being the longest accepted length of that label,
// so only that key range is scanned (a plain scan of every accepted span per new span was
// quadratic: hours for a 10 MB text with millions of predicted spans). The test module keeps the
// plain scan as the reference.
pub fn merge_segments(segments: &[(usize, Vec<Span>)]) -> Vec<Span> {
    // (label, start, end) -> score, and per label an upper bound on end − start of its entries.
    let mut accepted: BTreeMap<(usize, usize, usize), f32> = BTreeMap::new();
    let mut longest: BTreeMap<usize, usize> = BTreeMap::new();
    for (offset, spans) in segments {
        let mut removed: Vec<(usize, usize, usize)> = Vec::new();
        let mut added: Vec<((usize, usize, usize), f32)> = Vec::new();
        for sp in spans {
            let (s, e, t) = (sp.start.saturating_add(*offset), sp.end.saturating_add(*offset), sp.label);
            let mut merged = false;
            if let Some(&len) = longest.get(&t) {
                let lo = s.saturating_sub(len);
                if lo <= e {
                    for (&(_, s1, e1), &score1) in accepted.range((t, lo, 0)..=(t, e, usize::MAX)) {
                        if s <= e1 {
                            merged = true;
                            removed.push((t, s1, e1));
                            added.push(((t, s1.min(s), e1.max(e)), score1.max(sp.score)));
                        }
                    }
                }
            }
            if !merged {
                added.push(((t, s, e), sp.score));
            }
        }
        for key in &removed {
            accepted.remove(key);
        }
        for ((t, s, e), score) in added {
            let l = longest.entry(t).or_insert(0);
            *l = (*l).max(e.saturating_sub(s));
            accepted.entry((t, s, e)).and_modify(|old| *old = old.max(score)).or_insert(score);
        }
    }
    let mut out: Vec<Span> = accepted.into_iter().map(|((label, start, end), score)| Span { start, end, label, score }).collect();
    out.sort_by_key(|a| (a.start, a.end, a.label));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merge as first written: every accepted span scanned for every new one.
    fn merge_segments_reference(segments: &[(usize, Vec<Span>)]) -> Vec<Span> {
        // Accepted set: (start, end, label) -> score.
        let mut accepted: BTreeMap<(usize, usize, usize), f32> = BTreeMap::new();
        for (offset, spans) in segments {
            let mut removed: Vec<(usize, usize, usize)> = Vec::new();
            let mut added: Vec<((usize, usize, usize), f32)> = Vec::new();
            for sp in spans {
                let (s, e, t) = (
                    sp.start.saturating_add(*offset),
                    sp.end.saturating_add(*offset),
                    sp.label,
                );
                let mut merged = false;
                for (&(s1, e1, t1), &score1) in &accepted {
                    if t1 == t && s1 <= e && s <= e1 {
                        merged = true;
                        removed.push((s1, e1, t1));
                        added.push(((s1.min(s), e1.max(e), t), score1.max(sp.score)));
                    }
                }
                if !merged {
                    added.push(((s, e, t), sp.score));
                }
            }
            for key in &removed {
                accepted.remove(key);
            }
            for (key, score) in added {
                accepted
                    .entry(key)
                    .and_modify(|old| *old = old.max(score))
                    .or_insert(score);
            }
        }
        accepted
            .into_iter()
            .map(|((start, end, label), score)| Span {
                start,
                end,
                label,
                score,
            })
            .collect()
    }

    /// The indexed merge equals the plain all-pairs scan on random overlapping segments
    /// (nested, chained and repeated spans, several labels, consecutive and overlapping offsets).
    #[test]
    fn indexed_merge_equals_merge_segments() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| -> usize {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % n as u64) as usize
        };
        for case in 0..400 {
            let n_seg = 1 + next(6);
            let seg_words = 3 + next(12);
            let mut offset = 0usize;
            let mut segments = Vec::new();
            for _ in 0..n_seg {
                let mut spans = Vec::new();
                for _ in 0..next(3 + case % 20) {
                    let s = next(seg_words);
                    let e = (s + next(5)).min(seg_words - 1);
                    // A few malformed spans (start after end) too: both must agree on them.
                    let (s, e) = if next(50) == 0 { (e + 1, s) } else { (s, e) };
                    spans.push(Span { start: s, end: e, label: next(3), score: next(1000) as f32 / 1000.0 });
                }
                segments.push((offset, spans));
                offset += 1 + next(seg_words);
            }
            assert_eq!(merge_segments(&segments), merge_segments_reference(&segments), "case {case}: {segments:?}");
        }
    }


    /// Background logit: σ(−20) ≈ 2.1e-9, far below any threshold.
    const LOW: f32 = -20.0;

    fn logit(p: f32) -> f32 {
        (p / (1.0 - p)).ln()
    }

    /// A band `[n, 2w+1, r]` filled with `LOW`, written by word pair.
    struct Band {
        n: usize,
        w: usize,
        r: usize,
        data: Vec<f32>,
    }

    impl Band {
        fn new(n: usize, w: usize, r: usize) -> Band {
            Band {
                n,
                w,
                r,
                data: vec![LOW; n * (2 * w + 1) * r],
            }
        }
        /// Index of pair (i, j), type t: row i, column j − i + w.
        fn idx(&self, i: usize, j: usize, t: usize) -> usize {
            let k = j + self.w - i;
            assert!(i < self.n && k <= 2 * self.w && t < self.r);
            (i * (2 * self.w + 1) + k) * self.r + t
        }
        /// Sets the raw logit of band cell (row, column) directly (for padding cells).
        fn set_cell(&mut self, row: usize, col: usize, t: usize, x: f32) {
            self.data[(row * (2 * self.w + 1) + col) * self.r + t] = x;
        }
        /// Sets the upper cell (s, e) and the lower cell (e, s) of type t to the given logits.
        fn set_logits(&mut self, s: usize, e: usize, t: usize, upper: f32, lower: f32) {
            let (a, b) = (self.idx(s, e, t), self.idx(e, s, t));
            self.data[a] = upper;
            self.data[b] = lower;
        }
        /// Sets both cells of (s, e), type t, to probability p, so p̄ ≈ p.
        fn set_p(&mut self, s: usize, e: usize, t: usize, p: f32) {
            self.set_logits(s, e, t, logit(p), logit(p));
        }
        fn decode(&self, opts: &DecodeOptions) -> Vec<Span> {
            decode_segment(&self.data, self.n, self.w, self.r, opts).expect("valid band")
        }
    }

    fn se(spans: &[Span]) -> Vec<(usize, usize)> {
        spans.iter().map(|s| (s.start, s.end)).collect()
    }

    fn opts(allow_nested: bool, boundary: Boundary) -> DecodeOptions {
        DecodeOptions {
            allow_nested,
            boundary,
            ..DecodeOptions::default()
        }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn defaults_are_official_except_order() {
        let o = DecodeOptions::default();
        assert_eq!(o.threshold, Threshold::Global(0.5));
        assert!(o.allow_nested);
        assert_eq!(o.boundary, Boundary::Official);
        assert_eq!(o.order, CandidateOrder::Score);
    }

    #[test]
    fn symmetrise_matches_roll_flip_by_hand() {
        // n = 3, w = 1, r = 1: K = 3. Put distinct logits everywhere and check cells by hand.
        // Cell (i, k) is pair (i, i+k−1); mirror is row (i+k−1) mod 3, column 2−k.
        let n = 3;
        let w = 1;
        let logits: Vec<f32> = (0..9).map(|x| x as f32 * 0.25 - 1.0).collect();
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let pb = symmetrise(&logits, n, w, 1).expect("ok");
        // (0,2): pair (0,1) ↔ row 1, column 0 (pair (1,0)) → cells 2 and 3.
        assert!(close(pb[2], (sig(logits[2]) + sig(logits[3])) / 2.0));
        assert_eq!(pb[2], pb[3], "upper (0,1) and lower (1,0) carry the same p̄");
        // (1,1): the diagonal is its own mirror → p̄ = p.
        assert!(close(pb[4], sig(logits[4])));
        // (0,0): pair (0,−1) wraps to row 2, column 2 (pair (2,3)): both padding.
        assert!(close(pb[0], (sig(logits[0]) + sig(logits[8])) / 2.0));
        // (2,2): pair (2,3) wraps to row 0, column 0.
        assert_eq!(pb[8], pb[0]);
    }

    #[test]
    fn symmetrisation_averages_probabilities_not_logits() {
        // n = 4, w = 2, r = 1.
        let mut b = Band::new(4, 2, 1);
        // (0,1): upper 0.9, lower 0.05 → p̄ = (0.9 + 0.05)/2 = 0.475 < 0.5 → rejected, although
        // the upper cell alone (0.9) would pass.
        b.set_logits(0, 1, 0, logit(0.9), logit(0.05));
        // (2,3): upper 0.3, lower 0.8 → p̄ = 0.55 ≥ 0.5 → kept, although the upper cell fails.
        b.set_logits(2, 3, 0, logit(0.3), logit(0.8));
        // (1,1): the diagonal is its own mirror → p̄ = 0.7.
        b.set_p(1, 1, 0, 0.7);
        // (0,2): upper 0.99, lower 0.02 → p̄ = 0.505. Averaging logits instead would give
        // σ((4.595 − 3.892)/2) = σ(0.3516) ≈ 0.587. (At threshold 0.5 the two rules always make
        // the same decision, since σ(−x) = 1 − σ(x); the score tells them apart.)
        b.set_logits(0, 2, 0, logit(0.99), logit(0.02));
        let out = b.decode(&DecodeOptions::default());
        assert_eq!(se(&out), vec![(0, 2), (1, 1), (2, 3)]);
        assert!(close(out[0].score, 0.505), "{}", out[0].score);
        assert!(close(out[1].score, 0.7));
        assert!(close(out[2].score, 0.55));
    }

    #[test]
    fn threshold_edge_exactly_half_passes() {
        let mut b = Band::new(5, 2, 1);
        // σ(0) = 0.5 exactly; (0.5 + 0.5)/2 = 0.5 exactly → passes (≥).
        b.set_logits(0, 0, 0, 0.0, 0.0);
        b.set_logits(1, 2, 0, 0.0, 0.0);
        // σ(−0.0004) = 1/(1 + e^0.0004) ≈ 0.4999 → p̄ ≈ 0.4999 < 0.5 → rejected.
        b.set_logits(3, 4, 0, -0.0004, -0.0004);
        let out = b.decode(&DecodeOptions::default());
        assert_eq!(se(&out), vec![(0, 0), (1, 2)]);
        assert_eq!(out[0].score, 0.5);
        assert_eq!(out[1].score, 0.5);
        // A global threshold just above 0.5 rejects them; one at 0.4999 accepts (3,4) too.
        let hi = DecodeOptions {
            threshold: Threshold::Global(0.500_001),
            ..Default::default()
        };
        assert!(b.decode(&hi).is_empty());
        let lo = DecodeOptions {
            threshold: Threshold::Global(0.4998),
            ..Default::default()
        };
        assert_eq!(se(&b.decode(&lo)), vec![(0, 0), (1, 2), (3, 4)]);
    }

    #[test]
    fn equal_scores_larger_start_wins() {
        // n = 6, w = 3. (0,2) and (1,3) cross: 0 < 3 && 1 < 2 and neither contains the other.
        // Same logits → bit-identical scores → priority by larger s → (1,3) kept, (0,2) dropped.
        let mut b = Band::new(6, 3, 1);
        b.set_p(0, 2, 0, 0.8);
        b.set_p(1, 3, 0, 0.8);
        let out = b.decode(&DecodeOptions::default());
        assert_eq!(se(&out), vec![(1, 3)]);
        // Control: a strictly higher score beats the tie rule.
        b.set_p(0, 2, 0, 0.81);
        assert_eq!(se(&b.decode(&DecodeOptions::default())), vec![(0, 2)]);
    }

    #[test]
    fn equal_scores_same_start_larger_length_wins() {
        // Same start never clashes when nesting is allowed, so use flat output.
        // (1,2) vs (1,4): overlap 1 < 4 && 1 < 2 → clash in flat mode. Equal scores → larger d
        // (the longer span (1,4)) is tried first and kept.
        let mut b = Band::new(6, 3, 1);
        b.set_p(1, 2, 0, 0.8);
        b.set_p(1, 4, 0, 0.8);
        let flat = opts(false, Boundary::Official);
        assert_eq!(se(&b.decode(&flat)), vec![(1, 4)]);
        // Nested allowed: both kept.
        assert_eq!(
            se(&b.decode(&DecodeOptions::default())),
            vec![(1, 2), (1, 4)]
        );
        // Control: the shorter one with a higher score wins in flat mode.
        b.set_p(1, 2, 0, 0.81);
        assert_eq!(se(&b.decode(&flat)), vec![(1, 2)]);
    }

    #[test]
    fn nested_allowed_vs_flat() {
        // n = 8, w = 4.
        // (0,4) 0.9; (1,2) 0.8 nested inside it; (3,6) 0.7 crosses (0,4) (0 < 6 && 3 < 4, not
        // nested); (5,7) 0.6 is disjoint from (0,4) (5 < 4 false) and crosses only (3,6).
        let mut b = Band::new(8, 4, 1);
        b.set_p(0, 4, 0, 0.9);
        b.set_p(1, 2, 0, 0.8);
        b.set_p(3, 6, 0, 0.7);
        b.set_p(5, 7, 0, 0.6);
        // Nested: (0,4) kept; (1,2) nested → kept; (3,6) clashes with (0,4) → dropped;
        // (5,7) vs (0,4) no overlap, vs (1,2) no overlap → kept.
        assert_eq!(
            se(&b.decode(&opts(true, Boundary::Official))),
            vec![(0, 4), (1, 2), (5, 7)]
        );
        // Flat: (1,2) overlaps (0,4) → dropped too.
        assert_eq!(
            se(&b.decode(&opts(false, Boundary::Official))),
            vec![(0, 4), (5, 7)]
        );
    }

    #[test]
    fn boundary_sharing_official_vs_strict() {
        // (0,2) 0.9 and (2,4) 0.8 share word 2.
        let mut b = Band::new(5, 2, 1);
        b.set_p(0, 2, 0, 0.9);
        b.set_p(2, 4, 0, 0.8);
        // Official: 0 < 4 && 2 < 2 → false → no overlap → both kept, even in flat mode.
        assert_eq!(
            se(&b.decode(&opts(true, Boundary::Official))),
            vec![(0, 2), (2, 4)]
        );
        assert_eq!(
            se(&b.decode(&opts(false, Boundary::Official))),
            vec![(0, 2), (2, 4)]
        );
        // Strict: 0 <= 4 && 2 <= 2 → overlap, not nested → (2,4) dropped in both modes.
        assert_eq!(se(&b.decode(&opts(true, Boundary::Strict))), vec![(0, 2)]);
        assert_eq!(se(&b.decode(&opts(false, Boundary::Strict))), vec![(0, 2)]);
    }

    #[test]
    fn flat_official_keeps_single_words_at_span_ends() {
        // n = 5, w = 3: (0,3) 0.9, (0,0) 0.8, (3,3) 0.7, (1,1) 0.6.
        let mut b = Band::new(5, 3, 1);
        b.set_p(0, 3, 0, 0.9);
        b.set_p(0, 0, 0, 0.8);
        b.set_p(3, 3, 0, 0.7);
        b.set_p(1, 1, 0, 0.6);
        // Flat + Official: (0,0) vs (0,3): 0 < 3 && 0 < 0 false → kept; (3,3): 0 < 3 && 3 < 3
        // false → kept; (1,1): 0 < 1 && 1 < 3 → overlap → dropped. "Flat" output is not flat.
        assert_eq!(
            se(&b.decode(&opts(false, Boundary::Official))),
            vec![(0, 0), (0, 3), (3, 3)]
        );
        // Flat + Strict: everything inside (0,3) is dropped.
        assert_eq!(se(&b.decode(&opts(false, Boundary::Strict))), vec![(0, 3)]);
        // Nested (either boundary): all nested in (0,3) → all kept.
        let all = vec![(0, 0), (0, 3), (1, 1), (3, 3)];
        assert_eq!(se(&b.decode(&opts(true, Boundary::Official))), all);
        assert_eq!(se(&b.decode(&opts(true, Boundary::Strict))), all);
    }

    #[test]
    fn identical_spans_are_nested() {
        use Boundary::*;
        assert!(is_nested((2, 5), (2, 5)));
        assert!(is_nested((2, 2), (2, 2)));
        // Nesting allowed: identical spans never clash.
        assert!(!clashes((2, 5), (2, 5), true, Official));
        assert!(!clashes((2, 5), (2, 5), true, Strict));
        // Flat: identical multi-word spans overlap (2 < 5) and clash ...
        assert!(clashes((2, 5), (2, 5), false, Official));
        // ... but identical single-word spans do not overlap under the official rule (2 < 2 false).
        assert!(!overlaps((2, 2), (2, 2), Official));
        assert!(!clashes((2, 2), (2, 2), false, Official));
        assert!(clashes((2, 2), (2, 2), false, Strict));
        // Other helper cases: crossing, disjoint, boundary-sharing.
        assert!(clashes((0, 3), (2, 5), true, Official));
        assert!(!overlaps((0, 1), (3, 4), Strict));
        assert!(!overlaps((0, 2), (2, 4), Official));
        assert!(overlaps((0, 2), (2, 4), Strict));
        // Symmetry of the helpers.
        assert_eq!(
            overlaps((0, 3), (2, 5), Official),
            overlaps((2, 5), (0, 3), Official)
        );
    }

    #[test]
    fn argmax_type_after_symmetrisation_lowest_index_on_ties() {
        // n = 4, w = 1, r = 3.
        let mut b = Band::new(4, 1, 3);
        // (0,0): [0.6, 0.9, 0.7] → label 1, score 0.9.
        for (t, p) in [0.6, 0.9, 0.7].into_iter().enumerate() {
            b.set_p(0, 0, t, p);
        }
        // (1,1): [0.8, 0.3, 0.8] with bit-identical logits for types 0 and 2 → exact tie →
        // the lowest index, 0 (torch.argmax returns the first maximum).
        for (t, p) in [0.8, 0.3, 0.8].into_iter().enumerate() {
            b.set_p(1, 1, t, p);
        }
        // (2,3): upper [0.9, 0.6, ~0], lower [0.2, 0.8, ~0] → p̄ = [0.55, 0.7, ~0] → label 1,
        // although the upper cell alone would say type 0.
        b.set_logits(2, 3, 0, logit(0.9), logit(0.2));
        b.set_logits(2, 3, 1, logit(0.6), logit(0.8));
        let out = b.decode(&DecodeOptions::default());
        assert_eq!(se(&out), vec![(0, 0), (1, 1), (2, 3)]);
        assert_eq!((out[0].label, out[1].label, out[2].label), (1, 0, 1));
        assert!(close(out[0].score, 0.9) && close(out[1].score, 0.8) && close(out[2].score, 0.7));
    }

    #[test]
    fn per_type_thresholds() {
        // n = 5, w = 1, r = 2, thresholds [0.9, 0.5].
        let mut b = Band::new(5, 1, 2);
        // (0,0): [0.8, 0.6] → type 0 fails 0.9, type 1 passes → label 1, score 0.6.
        b.set_p(0, 0, 0, 0.8);
        b.set_p(0, 0, 1, 0.6);
        // (2,2): [0.95, 0.97] → both pass → argmax among passing = 1, score 0.97.
        b.set_p(2, 2, 0, 0.95);
        b.set_p(2, 2, 1, 0.97);
        // (4,4): [0.85, 0.4] → none passes → not a candidate.
        b.set_p(4, 4, 0, 0.85);
        b.set_p(4, 4, 1, 0.4);
        let per = DecodeOptions {
            threshold: Threshold::PerType(vec![0.9, 0.5]),
            ..Default::default()
        };
        let out = b.decode(&per);
        assert_eq!(se(&out), vec![(0, 0), (2, 2)]);
        assert_eq!((out[0].label, out[1].label), (1, 1));
        assert!(close(out[0].score, 0.6) && close(out[1].score, 0.97));
        // Global 0.5: (0,0) → label 0 (0.8); (4,4) → label 0 (0.85).
        let glob = b.decode(&DecodeOptions::default());
        assert_eq!(se(&glob), vec![(0, 0), (2, 2), (4, 4)]);
        assert_eq!((glob[0].label, glob[2].label), (0, 0));
        // Equal per-type thresholds reproduce the global rule exactly.
        let eq = DecodeOptions {
            threshold: Threshold::PerType(vec![0.5, 0.5]),
            ..Default::default()
        };
        assert_eq!(b.decode(&eq), glob);
    }

    #[test]
    fn per_type_score_sets_priority() {
        // n = 4, w = 2, r = 2, thresholds [0.9, 0.5]; (0,2) and (1,3) cross.
        // (0,2): [0.85, 0.6] → label 1, score 0.6 (type 0 fails).
        // (1,3): [0.0, 0.7] → label 1, score 0.7 → wins the clash.
        // Under Global(0.5), (0,2) would score 0.85 and win instead.
        let mut b = Band::new(4, 2, 2);
        b.set_p(0, 2, 0, 0.85);
        b.set_p(0, 2, 1, 0.6);
        b.set_p(1, 3, 1, 0.7);
        let per = DecodeOptions {
            threshold: Threshold::PerType(vec![0.9, 0.5]),
            ..Default::default()
        };
        assert_eq!(se(&b.decode(&per)), vec![(1, 3)]);
        assert_eq!(se(&b.decode(&DecodeOptions::default())), vec![(0, 2)]);
    }

    #[test]
    fn spans_at_segment_end_and_window_edge_padding_ignored() {
        // n = 5, w = 2 (spans of at most 3 words).
        let mut b = Band::new(5, 2, 1);
        b.set_p(3, 4, 0, 0.9); // e = n − 1
        b.set_p(2, 4, 0, 0.8); // d = w and e = n − 1
        b.set_p(0, 2, 0, 0.7); // d = w at the start
        // Padding cells set very high must be ignored: row 4 columns 3, 4 (pairs (4,5), (4,6)),
        // row 3 column 4 (pair (3,5)), row 0 columns 0, 1 (pairs (0,−2), (0,−1)).
        for (row, col) in [(4, 3), (4, 4), (3, 4), (0, 0), (0, 1), (1, 0)] {
            b.set_cell(row, col, 0, 20.0);
        }
        let out = b.decode(&DecodeOptions::default());
        // (0,2) and (2,4) share word 2 (no overlap under Official); (3,4) ⊂ (2,4).
        assert_eq!(se(&out), vec![(0, 2), (2, 4), (3, 4)]);
        assert!(close(out[0].score, 0.7) && close(out[1].score, 0.8) && close(out[2].score, 0.9));
        // Every span respects the window: at most w + 1 = 3 words.
        assert!(out.iter().all(|s| s.end - s.start <= 2 && s.end < 5));
    }

    #[test]
    fn window_zero_gives_single_words() {
        // w = 0: K = 1, only (i,i).
        let logits = [logit(0.6), logit(0.4), logit(0.9)];
        let out = decode_segment(&logits, 3, 0, 1, &DecodeOptions::default()).expect("ok");
        assert_eq!(se(&out), vec![(0, 0), (2, 2)]);
    }

    #[test]
    fn official_column_quirk_order() {
        // n = 4, w = 2, r = 1, flat output. Candidates A = (0,2) p̄ 0.6 and B = (1,3) p̄ 0.7 cross.
        // Spec order (by score): B first → [B].
        // Official order: key(s, d) is read at column d, not w + d:
        //   key(A) = column 2 of row 0 = pair (0,0) → 0.45 (not itself a candidate),
        //   key(B) = column 2 of row 1 = pair (1,1) → 0.3.
        // So A is tried first → [A].
        let mut b = Band::new(4, 2, 1);
        b.set_p(0, 2, 0, 0.6);
        b.set_p(1, 3, 0, 0.7);
        b.set_p(0, 0, 0, 0.45);
        b.set_p(1, 1, 0, 0.3);
        let score = opts(false, Boundary::Official);
        let quirk = DecodeOptions {
            order: CandidateOrder::OfficialColumnQuirk,
            ..score.clone()
        };
        assert_eq!(se(&b.decode(&score)), vec![(1, 3)]);
        let q = b.decode(&quirk);
        assert_eq!(se(&q), vec![(0, 2)]);
        // The reported score is still the span's own score.
        assert!(close(q[0].score, 0.6));
        // Padding key: candidate C = (0,1) (s + d = 1 < w) gets key σ(−1e-6) ≈ 0.49999975.
        // Against D = (1,2)? They share word 1 → no clash under Official. Use Strict to make
        // them clash: C p̄ 0.9, D = (1,2) p̄ 0.55 with key = column 1 of row 1 = pair (1,0) =
        // p̄(0,1) = 0.9 → D first under the quirk, C first by score.
        let mut b = Band::new(3, 2, 1);
        b.set_p(0, 1, 0, 0.9);
        b.set_p(1, 2, 0, 0.55);
        let strict = opts(false, Boundary::Strict);
        let quirk = DecodeOptions {
            order: CandidateOrder::OfficialColumnQuirk,
            ..strict.clone()
        };
        assert_eq!(se(&b.decode(&strict)), vec![(0, 1)]);
        assert_eq!(se(&b.decode(&quirk)), vec![(1, 2)]);
    }

    #[test]
    fn golden_cases_from_official_python() {
        // Logits written with 2 decimals; expected outputs produced by running the official
        // `sener/models/metrics.py` (roll + flip, decode, argmax) under torch on the same values
        // (padding cells −1e-6, allow_nested=True, thres=0.5), and by the same code with the
        // sort key fixed to column w + d for the score order.
        let n = 5;
        let w = 2;
        let r = 2;
        const P: f32 = OFFICIAL_PAD_LOGIT;
        #[rustfmt::skip]
        let logits: [f32; 50] = [
            P, P, P, P, -0.22, -1.08, 2.38, -0.50, 0.15, 1.40,
            P, P, -1.77, -2.12, -1.23, -0.73, -3.30, -0.57, -3.83, 2.28,
            -0.66, -1.78, -2.32, -1.27, -0.95, -2.59, -2.34, -0.87, -1.54, 1.38,
            1.78, -0.47, 0.45, -3.17, 0.77, -0.56, 0.47, 2.70, P, P,
            -2.70, 0.68, -3.13, -1.49, -0.09, 0.73, P, P, P, P,
        ];
        let official = DecodeOptions {
            order: CandidateOrder::OfficialColumnQuirk,
            ..Default::default()
        };
        let out = decode_segment(&logits, n, w, r, &official).expect("ok");
        let got: Vec<(usize, usize, usize)> =
            out.iter().map(|s| (s.start, s.end, s.label)).collect();
        // Official: (1,3) is kept and the crossing (2,4) dropped.
        assert_eq!(
            got,
            vec![(0, 1, 0), (1, 3, 1), (3, 3, 0), (3, 4, 1), (4, 4, 1)]
        );
        let out = decode_segment(&logits, n, w, r, &DecodeOptions::default()).expect("ok");
        let got: Vec<(usize, usize, usize)> =
            out.iter().map(|s| (s.start, s.end, s.label)).collect();
        // By score (the official code with the sort key read at column w + d): (2,4) wins.
        assert_eq!(
            got,
            vec![(0, 1, 0), (2, 4, 1), (3, 3, 0), (3, 4, 1), (4, 4, 1)]
        );
    }

    #[test]
    fn errors_are_reported() {
        let o = DecodeOptions::default();
        assert_eq!(
            decode_segment(&[0.0; 5], 2, 1, 1, &o),
            Err(DecodeError::LogitsLength {
                expected: 6,
                actual: 5
            })
        );
        assert_eq!(decode_segment(&[], 2, 1, 0, &o), Err(DecodeError::NoTypes));
        assert!(matches!(
            decode_segment(&[], usize::MAX, 1, 1, &o),
            Err(DecodeError::ShapeOverflow { .. })
        ));
        assert!(matches!(
            decode_segment(&[], 1, usize::MAX, 1, &o),
            Err(DecodeError::ShapeOverflow { .. })
        ));
        // NaN at row 1, column 2, type 1 of [2, 3, 2]: index (1*3 + 2)*2 + 1 = 11.
        let mut l = vec![0.0f32; 12];
        l[11] = f32::NAN;
        assert_eq!(
            decode_segment(&l, 2, 1, 2, &o),
            Err(DecodeError::NanLogit {
                row: 1,
                column: 2,
                label: 1
            })
        );
        let l = vec![0.0f32; 12];
        let per = DecodeOptions {
            threshold: Threshold::PerType(vec![0.5]),
            ..Default::default()
        };
        assert_eq!(
            decode_segment(&l, 2, 1, 2, &per),
            Err(DecodeError::ThresholdLength {
                expected: 2,
                actual: 1
            })
        );
        let per = DecodeOptions {
            threshold: Threshold::PerType(vec![0.5, f32::NAN]),
            ..Default::default()
        };
        assert_eq!(
            decode_segment(&l, 2, 1, 2, &per),
            Err(DecodeError::NanThreshold { label: Some(1) })
        );
        let g = DecodeOptions {
            threshold: Threshold::Global(f32::NAN),
            ..Default::default()
        };
        assert_eq!(
            decode_segment(&l, 2, 1, 2, &g),
            Err(DecodeError::NanThreshold { label: None })
        );
        // ±inf logits are fine: σ(+inf) = 1, σ(−inf) = 0.
        let mut l = vec![f32::NEG_INFINITY; 6];
        l[1] = f32::INFINITY; // row 0, column 1 = (0,0)
        let out = decode_segment(&l, 2, 1, 1, &o).expect("ok");
        assert_eq!(se(&out), vec![(0, 0)]);
        assert_eq!(out[0].score, 1.0);
        // Empty segment.
        assert_eq!(decode_segment(&[], 0, 3, 2, &o), Ok(vec![]));
        // Display and Error.
        let e: Box<dyn std::error::Error> = Box::new(DecodeError::LogitsLength {
            expected: 6,
            actual: 5,
        });
        assert_eq!(
            e.to_string(),
            "logits has 5 values, expected n*(2w+1)*r = 6"
        );
        for e in [
            DecodeError::NoTypes,
            DecodeError::ShapeOverflow { n: 1, w: 2, r: 3 },
            DecodeError::NanLogit {
                row: 0,
                column: 0,
                label: 0,
            },
            DecodeError::ThresholdLength {
                expected: 1,
                actual: 2,
            },
            DecodeError::NanThreshold { label: None },
            DecodeError::NanThreshold { label: Some(3) },
        ] {
            assert!(!e.to_string().is_empty());
        }
    }

    // ---------------------------------------------------------------- merge

    fn sp(start: usize, end: usize, label: usize, score: f32) -> Span {
        Span {
            start,
            end,
            label,
            score,
        }
    }

    fn sel(spans: &[Span]) -> Vec<(usize, usize, usize)> {
        spans.iter().map(|s| (s.start, s.end, s.label)).collect()
    }

    #[test]
    fn merge_shifts_and_sorts_disjoint_segments() {
        let out = merge_segments(&[
            (10, vec![sp(0, 1, 0, 0.6)]),
            (0, vec![sp(3, 4, 1, 0.7), sp(0, 0, 0, 0.9)]),
        ]);
        assert_eq!(sel(&out), vec![(0, 0, 0), (3, 4, 1), (10, 11, 0)]);
        assert_eq!(out[2].score, 0.6);
        assert!(merge_segments(&[]).is_empty());
    }

    #[test]
    fn merge_overlap_same_type_takes_union_and_max_score() {
        // Segment 0 (offset 0): (2,5,t0). Segment 1 (offset 5): (0,3,t0) → (5,8): shares word 5
        // → inclusive overlap (2 <= 8 && 5 <= 5) → replaced by the union (2,8), score max(0.7, 0.9).
        let out = merge_segments(&[(0, vec![sp(2, 5, 0, 0.7)]), (5, vec![sp(0, 3, 0, 0.9)])]);
        assert_eq!(sel(&out), vec![(2, 8, 0)]);
        assert_eq!(out[0].score, 0.9);
    }

    #[test]
    fn merge_different_types_are_kept_apart() {
        let out = merge_segments(&[(0, vec![sp(2, 5, 0, 0.7)]), (5, vec![sp(0, 3, 1, 0.9)])]);
        assert_eq!(sel(&out), vec![(2, 5, 0), (5, 8, 1)]);
    }

    #[test]
    fn merge_never_within_one_segment() {
        // Overlapping same-type spans of one segment stay separate.
        let out = merge_segments(&[(0, vec![sp(0, 3, 0, 0.7), sp(2, 5, 0, 0.8)])]);
        assert_eq!(sel(&out), vec![(0, 3, 0), (2, 5, 0)]);
        // Two spans of the same later segment overlapping each other (and nothing earlier) too.
        let out = merge_segments(&[
            (0, vec![sp(0, 0, 0, 0.7)]),
            (10, vec![sp(0, 3, 0, 0.7), sp(2, 5, 0, 0.8)]),
        ]);
        assert_eq!(sel(&out), vec![(0, 0, 0), (10, 13, 0), (12, 15, 0)]);
    }

    #[test]
    fn merge_one_new_span_over_two_accepted_gives_two_unions() {
        // Accepted A = (0,5), B = (8,12) (type 0). New (0,5) at offset 4 → (4,9) overlaps both:
        // A: 0 <= 9 && 4 <= 5; B: 8 <= 9 && 4 <= 12. Unions (0,9) and (4,12); A, B removed.
        let out = merge_segments(&[
            (0, vec![sp(0, 5, 0, 0.6), sp(8, 12, 0, 0.95)]),
            (4, vec![sp(0, 5, 0, 0.7)]),
        ]);
        assert_eq!(sel(&out), vec![(0, 9, 0), (4, 12, 0)]);
        assert_eq!((out[0].score, out[1].score), (0.7, 0.95));
    }

    #[test]
    fn merge_two_new_spans_over_one_accepted() {
        // Accepted A = (0,5). Segment at offset 5: (0,0) → (5,5) and (0,2) → (5,7), both overlap
        // A → unions (0,5) and (0,7); A itself is removed but re-added as the first union.
        let out = merge_segments(&[
            (0, vec![sp(0, 5, 0, 0.6)]),
            (5, vec![sp(0, 0, 0, 0.8), sp(0, 2, 0, 0.7)]),
        ]);
        assert_eq!(sel(&out), vec![(0, 5, 0), (0, 7, 0)]);
        assert_eq!((out[0].score, out[1].score), (0.8, 0.7));
    }

    #[test]
    fn merge_chains_across_three_segments() {
        // (0,4) | offset 4: (4,7) → union (0,7) | offset 7: (7,9) → union with (0,7) → (0,9).
        let out = merge_segments(&[
            (0, vec![sp(0, 4, 2, 0.6)]),
            (4, vec![sp(0, 3, 2, 0.7)]),
            (7, vec![sp(0, 2, 2, 0.65)]),
        ]);
        assert_eq!(sel(&out), vec![(0, 9, 2)]);
        assert_eq!(out[0].score, 0.7);
    }

    #[test]
    fn merge_collapses_duplicates_keeping_max_score() {
        let out = merge_segments(&[(
            3,
            vec![sp(1, 2, 0, 0.6), sp(1, 2, 0, 0.8), sp(1, 2, 1, 0.5)],
        )]);
        assert_eq!(sel(&out), vec![(4, 5, 0), (4, 5, 1)]);
        assert_eq!(out[0].score, 0.8);
    }

    // ---------------------------------------------------------------- property test

    /// Deterministic 64-bit LCG (Knuth's MMIX constants), top bits as a uniform in [0, 1).
    struct Lcg(u64);
    impl Lcg {
        fn next_f32(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
        }
        fn below(&mut self, m: usize) -> usize {
            ((self.next_f32() * m as f32) as usize).min(m - 1)
        }
    }

    /// Naive reference: all candidates, O(C²) greedy, straight from the definition.
    fn reference_decode(pb: &[f32], n: usize, w: usize, r: usize, o: &DecodeOptions) -> Vec<Span> {
        let k = 2 * w + 1;
        let mut cands = vec![];
        for s in 0..n {
            for d in 0..=w {
                if s + d >= n {
                    continue;
                }
                let probs: Vec<f32> = (0..r).map(|t| pb[(s * k + w + d) * r + t]).collect();
                let thr: Vec<f32> = match &o.threshold {
                    Threshold::Global(x) => vec![*x; r],
                    Threshold::PerType(v) => v.clone(),
                };
                let mut best: Option<(usize, f32)> = None;
                for t in 0..r {
                    if probs[t] >= thr[t] && best.is_none_or(|(_, b)| probs[t] > b) {
                        best = Some((t, probs[t]));
                    }
                }
                if let Some((label, score)) = best {
                    let key = match o.order {
                        CandidateOrder::Score => score,
                        CandidateOrder::OfficialColumnQuirk => (0..r)
                            .map(|t| pb[(s * k + d) * r + t])
                            .fold(f32::NEG_INFINITY, f32::max),
                    };
                    cands.push((key, s, d, label, score));
                }
            }
        }
        cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        let mut kept: Vec<Span> = vec![];
        for (_, s, d, label, score) in cands {
            if kept
                .iter()
                .all(|x| !clashes((s, s + d), (x.start, x.end), o.allow_nested, o.boundary))
            {
                kept.push(Span {
                    start: s,
                    end: s + d,
                    label,
                    score,
                });
            }
        }
        kept.sort_by_key(|x| (x.start, x.end));
        kept
    }

    #[test]
    fn property_random_logits() {
        let mut rng = Lcg(0x5e4e_2025);
        let mut total_spans = 0usize;
        for case in 0..600 {
            let n = rng.below(14);
            let w = rng.below(6);
            let r = 1 + rng.below(4);
            let k = 2 * w + 1;
            // Padding cells hold the official −1e-6 (the quirk order reads them via the mirror).
            let mut logits = vec![0.0f32; n * k * r];
            for i in 0..n {
                for c in 0..k {
                    let j = i as isize + c as isize - w as isize;
                    for t in 0..r {
                        logits[(i * k + c) * r + t] = if j < 0 || j >= n as isize {
                            OFFICIAL_PAD_LOGIT
                        } else {
                            // Mostly negative, some positive; coarse grid → frequent exact ties.
                            ((rng.next_f32() * 12.0).floor() - 8.0) * 0.5
                        };
                    }
                }
            }
            let threshold = if case % 3 == 2 {
                Threshold::PerType((0..r).map(|_| 0.3 + 0.5 * rng.next_f32()).collect())
            } else {
                Threshold::Global([0.5, 0.3, 0.7][case % 3])
            };
            let o = DecodeOptions {
                threshold: threshold.clone(),
                allow_nested: case % 2 == 0,
                boundary: if case % 5 < 3 {
                    Boundary::Official
                } else {
                    Boundary::Strict
                },
                order: if case % 7 < 4 {
                    CandidateOrder::Score
                } else {
                    CandidateOrder::OfficialColumnQuirk
                },
            };
            let out = decode_segment(&logits, n, w, r, &o).expect("valid");
            let pb = symmetrise(&logits, n, w, r).expect("valid");
            // Same result as the naive reference on the roll+flip p̄ (this also checks that the
            // direct mirror index equals roll + flip for every cell read).
            assert_eq!(out, reference_decode(&pb, n, w, r, &o), "case {case}");
            total_spans += out.len();
            for (a, x) in out.iter().enumerate() {
                assert!(
                    x.start <= x.end && x.end < n && x.end - x.start <= w,
                    "case {case}"
                );
                let thr = match &threshold {
                    Threshold::Global(t) => *t,
                    Threshold::PerType(v) => v[x.label],
                };
                assert!(x.score >= thr, "case {case}: score {} < {thr}", x.score);
                assert_eq!(
                    x.score,
                    pb[(x.start * k + w + x.end - x.start) * r + x.label]
                );
                for y in &out[a + 1..] {
                    assert!((x.start, x.end) < (y.start, y.end), "sorted and unique");
                    assert!(!clashes(
                        (x.start, x.end),
                        (y.start, y.end),
                        o.allow_nested,
                        o.boundary
                    ));
                }
            }
        }
        assert!(
            total_spans > 300,
            "the generator should produce spans ({total_spans})"
        );
    }
}
