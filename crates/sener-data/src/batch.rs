//! Batching of segments (sort-by-length buckets, padding) and seeded whole-word masking, as in
//! the official SeNER training code (`collate` and `torch_mask_tokens` in
//! `sener/utils/data_loader.py`; spec section 6).

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::align::{Alignment, SpecialTokens};
use crate::error::{DataError, Result};
use crate::segment::Segment;

/// Groups item indices into batches of similar length: indices sorted by length (ties by index),
/// cut into batches of `batch_size`; with a seed, the order of the batches is shuffled
/// (ChaCha8, deterministic per seed).
pub fn length_batches(lengths: &[usize], batch_size: usize, shuffle_seed: Option<u64>) -> Result<Vec<Vec<usize>>> {
    if batch_size == 0 {
        return Err(DataError::Config("batch size must be at least 1".into()));
    }
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    idx.sort_by_key(|&i| (lengths[i], i));
    let mut batches: Vec<Vec<usize>> = idx.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if let Some(seed) = shuffle_seed {
        batches.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
    Ok(batches)
}

/// Padding settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PadConfig {
    /// The token length is rounded up to a multiple of this (1 = batch maximum, as the official
    /// collate; 256 = the arrow-attention band multiple).
    pub token_multiple: usize,
    /// The word length is rounded up to a multiple of this (256 for the banded biaffine).
    pub word_multiple: usize,
}

impl Default for PadConfig {
    fn default() -> Self {
        PadConfig { token_multiple: 1, word_multiple: 1 }
    }
}

/// A padded batch, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Number of rows.
    pub size: usize,
    /// Padded token length T.
    pub seq_len: usize,
    /// `size × seq_len` ids, padded with the pad id.
    pub input_ids: Vec<u32>,
    /// `size × seq_len` subword → word indexes (0 for specials and padding).
    pub indexes: Vec<u32>,
    /// Real token count of each row (the official `bpe_len`).
    pub lengths: Vec<usize>,
    /// Word count of each row (the official `word_len`).
    pub n_words: Vec<usize>,
    /// Padded word length: the largest word count rounded up to `word_multiple`.
    pub word_len: usize,
}

fn round_up(x: usize, m: usize) -> usize {
    if m <= 1 {
        x
    } else {
        x.div_ceil(m) * m
    }
}

/// Pads the segments' ids (with `pad_id`) and indexes (with 0) into one batch.
pub fn pad_batch(segments: &[&Segment], pad_id: u32, cfg: &PadConfig) -> Result<Batch> {
    if segments.is_empty() {
        return Err(DataError::Config("cannot pad an empty batch".into()));
    }
    if let Some(s) = segments.iter().find(|s| s.indexes.len() != s.input_ids.len()) {
        return Err(DataError::Config(format!("segment {} has {} ids but {} indexes", s.index, s.input_ids.len(), s.indexes.len())));
    }
    let max_t = segments.iter().map(|s| s.len()).max().unwrap_or(0);
    let seq_len = round_up(max_t, cfg.token_multiple);
    let max_w = segments.iter().map(|s| s.n_words).max().unwrap_or(0);
    let mut input_ids = vec![pad_id; segments.len() * seq_len];
    let mut indexes = vec![0u32; segments.len() * seq_len];
    for (r, s) in segments.iter().enumerate() {
        input_ids[r * seq_len..r * seq_len + s.len()].copy_from_slice(&s.input_ids);
        indexes[r * seq_len..r * seq_len + s.len()].copy_from_slice(&s.indexes);
    }
    Ok(Batch {
        size: segments.len(),
        seq_len,
        input_ids,
        indexes,
        lengths: segments.iter().map(|s| s.len()).collect(),
        n_words: segments.iter().map(|s| s.n_words).collect(),
        word_len: round_up(max_w, cfg.word_multiple),
    })
}

/// Whole-word-masking settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskConfig {
    /// Fraction of the segment's tokens to cover (official 0.15).
    pub probability: f64,
    /// The `[MASK]` id.
    pub mask_id: u32,
    /// Random replacements are drawn from `0..vocab_size` (Python `len(tokenizer)`).
    pub vocab_size: u32,
    /// Reproduce the official quirk: candidate positions are computed from the **document's**
    /// words (document subword index + 1), so later segments of a long document mask positions
    /// of the document's first words. `false` uses the segment's own words.
    pub document_positions: bool,
}

/// A masked copy of a segment's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    /// The ids after masking.
    pub input_ids: Vec<u32>,
    /// Which positions were selected (whether replaced by `[MASK]`, a random id, or kept).
    pub selected: Vec<bool>,
}

/// Whole-word masking of one segment:
/// 1. shuffle the candidate words (each a list of positions);
/// 2. select whole words until `max(1, round(p · T))` positions are covered (Python's `round`,
///    ties to even), skipping a word that would overshoot;
/// 3. drop positions ≥ T and positions holding a special id (`[CLS]`, `[SEP]`, pad, `[UNK]`,
///    `[MASK]`: HF's special-tokens mask);
/// 4. each selected position becomes `[MASK]` with probability 0.8, else a random id with
///    probability 0.5, else stays.
///
/// `doc` is the document's alignment (used when `cfg.document_positions` is set).
pub fn whole_word_mask<R: Rng>(seg: &Segment, doc: &Alignment, special: &SpecialTokens, cfg: &MaskConfig, rng: &mut R) -> Masked {
    let t = seg.len();
    let mut cands: Vec<Vec<usize>> = if cfg.document_positions {
        doc.word_subwords.iter().map(|s| (s.start + 1..s.end + 1).collect()).collect()
    } else {
        let mut c: Vec<Vec<usize>> = vec![Vec::new(); seg.n_words];
        for (p, &ix) in seg.indexes.iter().enumerate() {
            if ix > 0 {
                if let Some(v) = c.get_mut(ix as usize - 1) {
                    v.push(p);
                }
            }
        }
        c
    };
    cands.shuffle(rng);
    let target = ((t as f64 * cfg.probability).round_ties_even() as usize).max(1);
    let mut selected = vec![false; t];
    let mut count = 0usize;
    for c in &cands {
        if count >= target {
            break;
        }
        if count + c.len() > target {
            continue;
        }
        for &p in c {
            if p < t {
                selected[p] = true;
            }
        }
        count += c.len();
    }
    let is_special = |id: u32| id == special.cls || id == special.sep || id == special.pad || Some(id) == special.unk || Some(id) == special.mask;
    let mut ids = seg.input_ids.clone();
    for p in 0..t {
        if selected[p] && is_special(ids[p]) {
            selected[p] = false;
        }
        if !selected[p] {
            continue;
        }
        if rng.random::<f64>() < 0.8 {
            ids[p] = cfg.mask_id;
        } else if rng.random::<f64>() < 0.5 && cfg.vocab_size > 0 {
            ids[p] = rng.random_range(0..cfg.vocab_size);
        }
    }
    Masked { input_ids: ids, selected }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::{align_with, Piece};
    use crate::document::Document;
    use crate::segment::{segment, SegmentConfig};

    const SP: SpecialTokens = SpecialTokens { cls: 1, sep: 2, pad: 0, mask: Some(3), unk: Some(4) };

    fn chars(w: &str) -> Result<Vec<Piece>> {
        Ok(w.chars().enumerate().map(|(i, _)| Piece { id: 10 + i as u32, start: i, end: i + 1 }).collect())
    }

    fn segs() -> (Alignment, Vec<Segment>) {
        let words: Vec<String> = (0..40).map(|i| "x".repeat(1 + i % 3)).collect();
        let d = Document::from_words("d", &words);
        let a = align_with(&d, chars).unwrap();
        let s = segment(&d, &a, &[], &SP, &SegmentConfig::new(30)).unwrap();
        (a, s.segments)
    }

    #[test]
    fn batches_by_length_and_padding() {
        let b = length_batches(&[5, 1, 3, 1, 9], 2, None).unwrap();
        assert_eq!(b, vec![vec![1, 3], vec![2, 0], vec![4]]);
        let s1 = length_batches(&[5, 1, 3, 1, 9], 2, Some(7)).unwrap();
        assert_eq!(s1, length_batches(&[5, 1, 3, 1, 9], 2, Some(7)).unwrap());
        let mut flat: Vec<usize> = s1.concat();
        flat.sort();
        assert_eq!(flat, vec![0, 1, 2, 3, 4]);
        assert!(length_batches(&[1], 0, None).is_err());

        let (_, segs) = segs();
        let last = segs.last().unwrap();
        let b = pad_batch(&[&segs[0], last], 0, &PadConfig { token_multiple: 16, word_multiple: 256 }).unwrap();
        assert_eq!((b.size, b.seq_len, b.word_len), (2, 32, 256));
        assert_eq!(&b.input_ids[..30], &segs[0].input_ids[..]);
        assert_eq!(&b.input_ids[32..32 + last.len()], &last.input_ids[..]);
        assert!(b.input_ids[32 + last.len()..].iter().all(|&x| x == 0));
        assert!(b.indexes[32 + last.len()..].iter().all(|&x| x == 0));
        assert_eq!(b.lengths, vec![30, last.len()]);
        assert!(pad_batch(&[], 0, &PadConfig::default()).is_err());
    }

    #[test]
    fn whole_word_masking_is_seeded_and_whole() {
        let (a, segs) = segs();
        let cfg = MaskConfig { probability: 0.15, mask_id: 3, vocab_size: 50, document_positions: false };
        let (mut n_mask, mut n_rand_or_keep) = (0, 0);
        for seed in 0..200u64 {
            let s = &segs[1];
            let m = whole_word_mask(s, &a, &SP, &cfg, &mut ChaCha8Rng::seed_from_u64(seed));
            assert_eq!(m, whole_word_mask(s, &a, &SP, &cfg, &mut ChaCha8Rng::seed_from_u64(seed)));
            let sel: Vec<usize> = (0..s.len()).filter(|&p| m.selected[p]).collect();
            assert!(!sel.is_empty() && sel.len() <= 4, "{sel:?}"); // round(0.15 * 30) = 4 (ties even: 4.5 -> 4)
            assert!(!m.selected[0] && !m.selected[s.len() - 1]);
            // Whole words: a selected word has all its positions selected.
            for &p in &sel {
                let w = s.indexes[p];
                assert!((1..s.len() - 1).filter(|&q| s.indexes[q] == w).all(|q| m.selected[q]));
                if m.input_ids[p] == 3 { n_mask += 1 } else { n_rand_or_keep += 1 }
            }
            for p in 0..s.len() {
                if !m.selected[p] {
                    assert_eq!(m.input_ids[p], s.input_ids[p]);
                }
            }
        }
        let frac = n_mask as f64 / (n_mask + n_rand_or_keep) as f64;
        assert!((0.7..0.9).contains(&frac), "{frac}");
    }

    #[test]
    fn document_positions_quirk_uses_document_words() {
        let (a, segs) = segs();
        let cfg = MaskConfig { probability: 0.5, mask_id: 3, vocab_size: 50, document_positions: true };
        let s = &segs[2];
        let m = whole_word_mask(s, &a, &SP, &cfg, &mut ChaCha8Rng::seed_from_u64(1));
        // Selected positions are document-level word positions (+1) that fall below T.
        let cands: Vec<Vec<usize>> = a.word_subwords.iter().map(|w| (w.start + 1..w.end + 1).collect()).collect();
        for p in (0..s.len()).filter(|&p| m.selected[p]) {
            assert!(cands.iter().any(|c| c.contains(&p)));
        }
        assert!(m.selected.iter().any(|&x| x));
    }
}
