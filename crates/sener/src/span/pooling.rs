//! Subword → word max-pooling (spec §2): `h_m = max over the subwords of word m`.
//!
//! The official code uses `scatter_max` over an index where each subword of word m carries m + 1
//! and [CLS], [SEP] and padding carry 0 (dropped). A word with **no** subwords gets the zero
//! vector there (scatter_max's empty value); sener keeps that definition.
//!
//! Implementation: a running element-wise maximum over the r-th subword of every word
//! (`index_select` + `maximum`, both differentiable), so memory stays O(n·d) however many
//! subwords a word has.

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Word pooling plan of one batch: for each word, the positions of its subwords.
#[derive(Clone, Debug)]
pub struct WordPooling {
    /// batch size
    b: usize,
    /// token length T of the batch
    t: usize,
    /// words per batch row (padded to `n`)
    n: usize,
    /// `lists[r]`: for every (batch, word) slot, the flat row of its r-th subword, or the zero
    /// row (for words with no subwords or padding words) / the "repeat" row for words that have
    /// fewer than r + 1 subwords (their first subword again, so the max is unchanged).
    lists: Vec<Vec<u32>>,
}

impl WordPooling {
    /// `indexes[b]`: per token of row b, 0 for special/padding tokens and m + 1 for a subword of
    /// word m (the official `indexes`). Rows shorter than `t` count as padded. `n`: words per
    /// output row (≥ the largest word index).
    pub fn new(indexes: &[Vec<u32>], t: usize, n: usize) -> Result<Self> {
        let b = indexes.len();
        let mut subwords: Vec<Vec<u32>> = vec![Vec::new(); b * n];
        for (bi, row) in indexes.iter().enumerate() {
            if row.len() > t {
                return Err(Error::Input(format!("word index row {bi} has {} tokens, batch length is {t}", row.len())));
            }
            for (pos, &m) in row.iter().enumerate() {
                if m == 0 {
                    continue;
                }
                let w = m as usize - 1;
                if w >= n {
                    return Err(Error::Input(format!("word index {m} in row {bi} exceeds {n} words")));
                }
                subwords[bi * n + w].push((bi * (t + 1) + pos) as u32);
            }
        }
        let depth = subwords.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let zero_row = |bi: usize| (bi * (t + 1) + t) as u32;
        let lists = (0..depth)
            .map(|r| {
                subwords
                    .iter()
                    .enumerate()
                    .map(|(slot, s)| match (s.get(r), s.first()) {
                        (Some(&p), _) => p,
                        (None, Some(&first)) => first,
                        (None, None) => zero_row(slot / n),
                    })
                    .collect()
            })
            .collect();
        Ok(Self { b, t, n, lists })
    }

    /// Words per row.
    pub fn words(&self) -> usize {
        self.n
    }

    /// `[B, T, d]` hidden states → `[B, n, d]` word vectors.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let (b, t, d) = hidden.dims3()?;
        if (b, t) != (self.b, self.t) {
            return Err(Error::Input(format!("pooling plan is for [{}, {}], hidden is [{b}, {t}]", self.b, self.t)));
        }
        // One zero row after each batch row: [B, T + 1, d] flattened.
        let flat = hidden.pad_with_zeros(1, 0, 1)?.reshape((b * (t + 1), d))?;
        let dev: &Device = hidden.device();
        let mut out: Option<Tensor> = None;
        for list in &self.lists {
            let idx = Tensor::from_vec(list.clone(), list.len(), dev)?;
            let sel = flat.index_select(&idx, 0)?;
            out = Some(match out {
                None => sel,
                Some(o) => o.maximum(&sel)?,
            });
        }
        let out = out.ok_or_else(|| Error::Input("empty pooling plan".into()))?;
        Ok(out.reshape((b, self.n, d))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_over_each_words_subwords_and_zero_for_empty_words() {
        // Row 0: [CLS] w0 w0 w1 w3 w3 w3 [SEP] (word 2 has no subword); row 1: [CLS] w0 [SEP] pad…
        let idx = vec![vec![0, 1, 1, 2, 4, 4, 4, 0], vec![0, 1, 0]];
        let p = WordPooling::new(&idx, 8, 4).unwrap();
        let h: Vec<f32> = vec![
            9., 9., /* CLS */ 1., -5., 3., -2., /* w0 */ -1., -1., /* w1 */ 0., 7., 2., 1., 5., -3., /* w3 */ 9., 9.,
            8., 8., 4., 4., 8., 8., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.,
        ];
        let h = Tensor::from_vec(h, (2, 8, 2), &Device::Cpu).unwrap();
        let out = p.forward(&h).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(out[0], vec![vec![3., -2.], vec![-1., -1.], vec![0., 0.], vec![5., 7.]]);
        assert_eq!(out[1], vec![vec![4., 4.], vec![0., 0.], vec![0., 0.], vec![0., 0.]]);
    }

    #[test]
    fn gradient_reaches_the_maximal_subword() {
        let idx = vec![vec![0, 1, 1, 2, 0]];
        let p = WordPooling::new(&idx, 5, 2).unwrap();
        let h = candle_core::Var::from_vec(vec![0f32, 1., 3., 2., 0.], (1, 5, 1), &Device::Cpu).unwrap();
        let g = p.forward(h.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = g.get(&h).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![0., 0., 1., 1., 0.]);
    }

    #[test]
    fn bad_indexes_are_errors() {
        assert!(WordPooling::new(&[vec![0, 5, 0]], 3, 2).is_err());
        assert!(WordPooling::new(&[vec![0, 1, 1, 0]], 3, 2).is_err());
    }
}
