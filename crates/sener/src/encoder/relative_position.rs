//! DeBERTa-v2/v3 relative positions: the log-bucket function and the index into the projected
//! relative-embedding table (spec §3.3).
//!
//! Port of `make_log_bucket_position` / `build_relative_position` and of the `clamp(r + att_span)`
//! gather index of Hugging Face `modeling_deberta_v2.py`. Deliberate deviation: nothing here builds
//! the N×N position matrix; callers ask for the indices of exactly the offsets they need (the band
//! and the [CLS] row/column).

/// Maps a relative offset `i − j` (query minus key) to a row of the relative-embedding table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelativeIndex {
    /// `position_buckets` (≤ 0: no log bucketing, raw offsets as in DeBERTa-v2 without buckets).
    pub position_buckets: i64,
    /// `max_relative_positions` after HF's defaulting (< 1 → `max_position_embeddings`).
    pub max_relative_positions: i64,
    /// `att_span` = `pos_ebd_size`: the table has `2 · att_span` rows.
    pub att_span: i64,
}

impl RelativeIndex {
    pub fn new(position_buckets: i64, max_relative_positions: i64) -> Self {
        let att_span = if position_buckets > 0 { position_buckets } else { max_relative_positions };
        Self { position_buckets, max_relative_positions, att_span }
    }

    /// Rows of the relative-embedding table that are used: `2 · att_span`.
    pub fn table_rows(&self) -> usize {
        (2 * self.att_span) as usize
    }

    /// `bucket(r)`: the identity for |r| ≤ buckets/2, logarithmic beyond (computed in f32 exactly as
    /// the reference does, so that `ceil` lands on the same side at bucket edges).
    pub fn bucket(&self, r: i64) -> i64 {
        if self.position_buckets <= 0 || self.max_relative_positions <= 0 {
            return r;
        }
        let mid = self.position_buckets / 2;
        let abs = if r < mid && r > -mid { mid - 1 } else { r.abs() };
        if abs <= mid {
            return r;
        }
        let midf = mid as f32;
        let log_pos = ((abs as f32 / midf).ln() / ((self.max_relative_positions - 1) as f32 / midf).ln()
            * (mid - 1) as f32)
            .ceil()
            + midf;
        (log_pos as i64) * r.signum()
    }

    /// Row of the projected table for offset `r = i − j`: `clamp(bucket(r) + att_span, 0, 2·att_span − 1)`.
    /// The same row serves c2p (`q_i · Pk[row]`) and p2c (`k_j · Pq[row]`): HF's p2c index
    /// `−bucket(j − i)` equals `bucket(i − j)` because the bucket function is odd.
    pub fn row(&self, r: i64) -> u32 {
        (self.bucket(r) + self.att_span).clamp(0, 2 * self.att_span - 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_inside_half_bucket_range() {
        let ri = RelativeIndex::new(256, 512);
        for r in -128..=128 {
            assert_eq!(ri.bucket(r), r);
            assert_eq!(ri.row(r), (r + 256) as u32);
        }
    }

    #[test]
    fn log_buckets_match_hand_computed_values() {
        // deberta-v3: buckets 256, max 512. r = 129: ceil(ln(129/128)/ln(511/128)·127) + 128.
        let ri = RelativeIndex::new(256, 512);
        let expect = |r: f64| ((r / 128.0).ln() / (511.0f64 / 128.0).ln() * 127.0).ceil() as i64 + 128;
        for r in [129i64, 200, 300, 511, 512, 1000, 5000] {
            assert_eq!(ri.bucket(r), expect(r as f64), "r={r}");
            assert_eq!(ri.bucket(-r), -expect(r as f64), "r=-{r}");
        }
        // Far offsets are clamped to the table's last rows.
        assert_eq!(ri.row(100_000), 511);
        assert_eq!(ri.row(-100_000), 0);
        // Odd symmetry, used for p2c.
        for r in -3000..3000 {
            assert_eq!(ri.bucket(-r), -ri.bucket(r));
        }
    }

    #[test]
    fn no_buckets_clamps_raw_offsets() {
        let ri = RelativeIndex::new(-1, 12);
        assert_eq!(ri.table_rows(), 24);
        assert_eq!(ri.row(0), 12);
        assert_eq!(ri.row(11), 23);
        assert_eq!(ri.row(40), 23);
        assert_eq!(ri.row(-12), 0);
        assert_eq!(ri.row(-40), 0);
    }
}
