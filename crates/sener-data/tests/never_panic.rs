//! Property tests: arbitrary bytes or strings never make a reader panic; whatever a reader accepts
//! is a valid document; documents built from arbitrary words round-trip exactly.
//!
//! CI runs the default case counts; `SENER_FUZZ_CASES=20000 cargo test --release -p sener-data
//! --test never_panic` runs each property that many times.

use proptest::prelude::*;
use sener_data::readers::{self, brat, PlainMode, TagScheme};
use sener_data::writers::{self, jsonl::OffsetUnit};
use sener_data::{Document, Format};

fn cases(default: u32) -> u32 {
    std::env::var("SENER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const FORMATS: [Format; 8] = [
    Format::Sener,
    Format::Scirex,
    Format::Conll(TagScheme::Bio),
    Format::Conll(TagScheme::Bioes),
    Format::Gliner,
    Format::Plain(PlainMode::Whole),
    Format::Plain(PlainMode::Lines),
    Format::Jsonl,
];

/// Readers either fail or give valid documents.
fn check_all(bytes: &[u8]) {
    for f in FORMATS {
        if let Ok(r) = readers::read_bytes(f, "fuzz", bytes) {
            for d in &r.documents {
                d.validate().unwrap_or_else(|e| panic!("{f:?} accepted an invalid document: {e}"));
            }
        }
    }
}

/// JSON-ish text that reaches past the JSON parser into the field checks.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "{", "}", "[", "]", ",", ":", "\"text\"", "\"entity\"", "\"words\"", "\"ner\"", "\"sentences\"", "\"tokenized_text\"",
        "\"entities\"", "\"start\"", "\"end\"", "\"label\"", "\"score\"", "\"offset_unit\"", "\"byte\"", "\"char\"", "\"doc_id\"",
        "\"id\"", "0", "1", "2", "3", "-1", "1.5", "null", "true", "\"a\"", "\"é\"", "\"日本\"", "\"👍🏽\"", "\"\"", "\n", " ", "O", "B-X",
        "I-X", "E-X", "S-X", "\t", "-DOCSTART-", "T1\tX 0 1\ta", "0 1;2 3", "#1\tAnnotatorNotes T1\tscore=x",
    ]);
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

/// A valid document of the given format with a few bytes flipped.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = prop::sample::select(vec![
        "{\"doc_id\": \"a\", \"text\": [\"He\", \"é\", \"日本\"], \"entity\": [[0, 2, [\"He\", \"é\"], \"X\"]]}\n",
        "{\"doc_id\": \"a\", \"words\": [\"He\", \"is\"], \"sentences\": [[0, 2]], \"ner\": [[1, 2, \"Task\"]]}\n",
        "[{\"tokenized_text\": [\"a\", \"b\"], \"ner\": [[0, 1, \"X\"]]}]",
        "{\"id\": \"d\", \"text\": \"ab 日本\", \"entities\": [{\"start\": 3, \"end\": 5, \"label\": \"X\", \"score\": 0.5}], \"words\": [[0, 2], [3, 5]], \"sentences\": [[0, 2]]}\n",
        "-DOCSTART- O\n\nNew B-LOC\nYork E-LOC\nis O\n\nx S-A\n",
    ]);
    (seeds, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)).prop_map(|(s, flips)| {
        let mut b = s.as_bytes().to_vec();
        for (i, v) in flips {
            let k = i.index(b.len());
            b[k] = v;
        }
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(200), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_all(&bytes);
        let s = String::from_utf8_lossy(&bytes);
        if let Ok(r) = brat::parse("fuzz.ann", "some text 日本 here\n", &s) {
            for d in &r.documents { d.validate().unwrap(); }
        }
    }

    #[test]
    fn jsonish_text_never_panics(s in jsonish()) {
        check_all(s.as_bytes());
        if let Ok(r) = brat::parse("fuzz.ann", &s, &s) {
            for d in &r.documents { d.validate().unwrap(); }
        }
    }

    #[test]
    fn mutated_valid_files_never_panic(b in mutated()) {
        check_all(&b);
    }

    #[test]
    fn arbitrary_words_round_trip(words in prop::collection::vec(".{0,6}", 0..12), spans in prop::collection::vec((0usize..12, 1usize..4), 0..5)) {
        let mut d = Document::from_words("p", &words);
        prop_assert_eq!(d.word_strs().unwrap(), words.iter().map(String::as_str).collect::<Vec<_>>());
        for (s, len) in spans {
            let e = s + len;
            // A range covers characters unless it is one empty word (separators count).
            if e <= words.len() && (e - s > 1 || !words[s].is_empty()) {
                d.push_word_entity(s, e, "X", Some(0.5)).unwrap();
                let ent = d.entities.last().unwrap().clone();
                prop_assert_eq!(d.entity_text(&ent).unwrap(), words[s..e].join(" "));
            } else {
                prop_assert!(d.push_word_entity(s, e, "X", None).is_err());
            }
        }
        d.validate().unwrap();
        for unit in [OffsetUnit::Char, OffsetUnit::Byte] {
            let line = writers::jsonl::to_string(std::slice::from_ref(&d), unit).unwrap();
            let back = readers::read_bytes(Format::Jsonl, "p", line.as_bytes()).unwrap();
            prop_assert_eq!(&back.documents[0], &d);
        }
        // brat keeps text and entities exactly (words are re-segmented).
        if !d.entities.is_empty() {
            let (txt, ann) = writers::brat::render(&d).unwrap();
            let back = brat::parse("p", &txt, &ann).unwrap();
            prop_assert_eq!(&back.documents[0].text, &d.text);
            prop_assert_eq!(&back.documents[0].entities, &d.entities);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(150), failure_persistence: None, ..ProptestConfig::default() })]

    /// CoNLL writer → reader keeps the text and exactly the entities the writer did not report.
    #[test]
    fn conll_write_read_keeps_unreported_entities(
        words in prop::collection::vec("[a-zé日👍.]{1,4}", 1..15),
        spans in prop::collection::vec((0usize..15, 1usize..5, 0usize..3), 0..6),
        bioes in any::<bool>(),
    ) {
        let mut d = Document::from_words("0", &words);
        for (s, len, l) in spans {
            if s + len <= words.len() {
                d.push_word_entity(s, s + len, ["A", "B", "C"][l], None).unwrap();
            }
        }
        let scheme = if bioes { TagScheme::Bioes } else { TagScheme::Bio };
        let (text, rep) = writers::conll::to_string(std::slice::from_ref(&d), scheme).unwrap();
        let back = readers::conll::parse("mem", &text, scheme).unwrap();
        prop_assert!(back.report.is_empty());
        prop_assert_eq!(&back.documents[0].text, &d.text);
        let n = back.documents[0].entities.len();
        prop_assert_eq!(n + rep.count(sener_data::Issue::NestedEntityDropped), d.entities.len());
        for e in &back.documents[0].entities {
            prop_assert!(d.entities.contains(e));
        }
    }

    /// Segmentation covers every subword once (without overlap) and keeps exactly the entities
    /// that lie inside a segment.
    #[test]
    fn segmentation_invariants(
        words in prop::collection::vec("[a-c]{0,4}", 1..30),
        spans in prop::collection::vec((0usize..30, 1usize..6), 0..8),
        max_len in 3usize..12,
        overlap in 0usize..4,
    ) {
        use sener_data::align::{align_with, Piece, SpecialTokens};
        use sener_data::segment::{segment, SegmentConfig};
        let mut d = Document::from_words("d", &words);
        for (s, len) in spans {
            if s + len <= words.len() {
                let _ = d.push_word_entity(s, s + len, "X", None);
            }
        }
        let a = align_with(&d, |w| Ok(w.chars().enumerate().map(|(i, _)| Piece { id: 9, start: i, end: i + 1 }).collect())).unwrap();
        let (we, _) = d.word_entities().unwrap();
        let sp = SpecialTokens { cls: 1, sep: 2, pad: 0, mask: None, unk: None };
        let cfg = SegmentConfig { max_len, overlap };
        match segment(&d, &a, &we, &sp, &cfg) {
            Err(_) => prop_assert!(overlap >= max_len - 2),
            Ok(s) => {
                let mut inside = 0;
                for e in &we {
                    let fits = s.segments.iter().any(|g| {
                        let first = g.word_offset;
                        let last = g.word_offset + g.n_words - 1;
                        first <= e.start && e.end - 1 <= last
                    });
                    inside += fits as usize;
                }
                prop_assert_eq!(inside + s.report.count(sener_data::Issue::EntityOutsideSegments), we.len());
                for g in &s.segments {
                    prop_assert!(g.len() <= max_len);
                    prop_assert_eq!(g.indexes.len(), g.input_ids.len());
                    for (p, ix) in g.indexes.iter().enumerate().skip(1).take(g.len() - 2) {
                        let k = g.subword_offset + p - 1;
                        prop_assert_eq!(*ix as usize, a.word_index[k] - g.word_offset + 1);
                    }
                }
                if overlap == 0 {
                    let total: usize = s.segments.iter().map(|g| g.len() - 2).sum();
                    prop_assert_eq!(total, a.len());
                }
            }
        }
    }
}
