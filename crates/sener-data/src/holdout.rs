//! A deterministic held-out part of a corpus, for model selection and calibration without
//! touching test data: the same documents whatever their order in the file, from their ids alone.

use crate::document::Document;

/// Splits `docs` into (kept, held out): the `round(fraction · n)` documents (at least one when
/// `fraction > 0` and there are two or more documents, never all) whose ids hash lowest
/// (FNV-1a 64 of the id; the position breaks ties) are held out. Both parts keep file order.
pub fn holdout_split(docs: Vec<Document>, fraction: f64) -> (Vec<Document>, Vec<Document>) {
    if fraction <= 0.0 || docs.len() < 2 {
        return (docs, Vec::new());
    }
    let k = ((fraction * docs.len() as f64).round() as usize).clamp(1, docs.len() - 1);
    let fnv = |s: &str| s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    let mut order: Vec<(u64, usize)> = docs.iter().enumerate().map(|(i, d)| (fnv(&d.id), i)).collect();
    order.sort_unstable();
    let held: std::collections::HashSet<usize> = order[..k].iter().map(|&(_, i)| i).collect();
    let (mut train, mut out) = (Vec::new(), Vec::new());
    for (i, d) in docs.into_iter().enumerate() {
        if held.contains(&i) { out.push(d) } else { train.push(d) }
    }
    (train, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_out_part_depends_on_the_ids_only() {
        let docs: Vec<Document> = (0..20).map(|i| Document::new(format!("doc{i}"), "x")).collect();
        let (train, held) = holdout_split(docs.clone(), 0.2);
        assert_eq!((train.len(), held.len()), (16, 4));
        let mut rev = docs.clone();
        rev.reverse();
        let (_, held_rev) = holdout_split(rev, 0.2);
        let ids = |d: &[Document]| {
            let mut v: Vec<String> = d.iter().map(|d| d.id.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&held), ids(&held_rev));
        assert!(train.iter().all(|d| !ids(&held).contains(&d.id)));
        assert_eq!(holdout_split(docs.clone(), 0.0).1.len(), 0);
        assert_eq!(holdout_split(docs.clone(), 0.01).1.len(), 1);
        assert_eq!(holdout_split(docs[..1].to_vec(), 0.5).1.len(), 0);
    }
}
