//! Tokenizer alignment with the real all-MiniLM-L6-v2 `tokenizer.json` (BERT WordPiece), found
//! through `SENER_MINILM_DIR`; skipped with a message when it is not set.

mod common;

use std::path::Path;

use sener_data::align::{align, WordTokenizer};
use sener_data::readers::sener;
use sener_data::segment::{segment, SegmentConfig};
use sener_data::{DataError, Document, Issue, Span};
use serde_json::Value;

fn tokenizer(dir: &Path) -> WordTokenizer {
    WordTokenizer::from_file(&dir.join("tokenizer.json")).unwrap()
}

/// (word, ids, char offsets) from Python.
type Golden = Vec<(String, Vec<u32>, Vec<(usize, usize)>)>;

fn golden() -> Golden {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(common::fixture("minilm_golden.json")).unwrap()).unwrap();
    v["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let ids = w["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let offs = w["offsets"].as_array().unwrap().iter().map(|o| (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize)).collect();
            (w["word"].as_str().unwrap().to_string(), ids, offs)
        })
        .collect()
}

#[test]
fn missing_tokenizer_is_a_typed_error() {
    let e = WordTokenizer::from_file(Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(matches!(e, DataError::Tokenizer { .. }), "{e}");
}

#[test]
fn words_match_python_ids_and_offsets() {
    let Some(dir) = common::minilm_dir("words_match_python_ids_and_offsets") else { return };
    let mut tok = tokenizer(&dir);
    let sp = *tok.special();
    assert_eq!((sp.cls, sp.sep, sp.pad, sp.mask, sp.unk), (101, 102, 0, Some(103), Some(100)));
    for (w, ids, offs) in golden() {
        let pieces = tok.encode_word(&w).unwrap().to_vec();
        let got_ids: Vec<u32> = pieces.iter().map(|p| p.id).collect();
        let got_offs: Vec<(usize, usize)> = pieces.iter().map(|p| (p.start, p.end)).collect();
        assert_eq!(got_ids, ids, "{w:?}");
        assert_eq!(got_offs, offs, "{w:?}");
        // Cached: same answer again.
        assert_eq!(tok.encode_word(&w).unwrap(), &pieces[..]);
    }
}

#[test]
fn document_alignment_is_exact_on_unicode() {
    let Some(dir) = common::minilm_dir("document_alignment_is_exact_on_unicode") else { return };
    let mut tok = tokenizer(&dir);
    let g = golden();
    let words: Vec<&str> = g.iter().map(|(w, _, _)| w.as_str()).collect();
    let doc = Document::from_words("u", &words);
    let a = align(&doc, &mut tok).unwrap();
    let spans = doc.words.as_ref().unwrap();
    let mut k = 0;
    for (m, (_, ids, offs)) in g.iter().enumerate() {
        assert_eq!(a.word_subwords[m], Span::new(k, k + ids.len()));
        for (id, (s, e)) in ids.iter().zip(offs) {
            assert_eq!(a.ids[k], *id);
            assert_eq!(a.word_index[k], m);
            assert_eq!(a.char_spans[k], Span::new(spans[m].start + s, spans[m].start + e));
            k += 1;
        }
    }
    assert_eq!(k, a.len());
    // "\u{200b}", "\u{200d}", "\t", "", " ", "\u{301}" produce no subwords.
    assert_eq!(a.report.count(Issue::WordWithoutSubwords), 6);
    // The subword of "日" reads back as "日" from the raw text.
    let ja = words.iter().position(|w| *w == "日本語").unwrap();
    let s = a.char_spans[a.word_subwords[ja].start];
    assert_eq!(doc.slice_chars(s.start, s.end), Some("日"));
}

#[test]
fn real_documents_align_and_segment() {
    let Some(dir) = common::minilm_dir("real_documents_align_and_segment") else { return };
    let Some(data) = common::data_dir("real_documents_align_and_segment") else { return };
    let mut tok = tokenizer(&dir);
    let sp = *tok.special();
    let cfg = SegmentConfig::new(512);
    let (mut total, mut kept_any, mut segs) = (0usize, 0usize, 0usize);
    for f in ["profiling-07/dev.jsonl", "scholar-xl/test.jsonl"] {
        let r = sener::read(&data.join(f)).unwrap();
        for d in &r.documents {
            let a = align(d, &mut tok).unwrap();
            let spans = d.words.as_ref().unwrap();
            for k in 0..a.len() {
                let w = spans[a.word_index[k]];
                let c = a.char_spans[k];
                assert!(w.start <= c.start && c.start <= c.end && c.end <= w.end, "{} subword {k}", d.id);
                if k > 0 {
                    assert!(a.word_index[k - 1] <= a.word_index[k] && a.char_spans[k - 1].start <= c.start);
                }
            }
            let (we, rep) = d.word_entities().unwrap();
            assert!(rep.is_empty());
            let s = segment(d, &a, &we, &sp, &cfg).unwrap();
            let mut covered = 0;
            for g in &s.segments {
                assert!(g.len() <= 512);
                assert_eq!(g.subword_offset, covered);
                covered += g.len() - 2;
                assert_eq!((g.input_ids[0], *g.input_ids.last().unwrap()), (sp.cls, sp.sep));
                assert_eq!(*g.indexes.iter().max().unwrap() as usize, g.n_words);
                for e in &g.entities {
                    let span = g.word_span_chars(d, e.start, e.end).unwrap();
                    assert!(d.entities.iter().any(|x| (x.start, x.end, &x.label) == (span.start, span.end, &e.label)));
                }
            }
            assert_eq!(covered, a.len());
            total += we.len();
            kept_any += we.len() - s.report.count(Issue::EntityOutsideSegments);
            segs += s.segments.len();
        }
    }
    eprintln!("max_len 512: {segs} segments, {kept_any} of {total} entities inside a segment");
    assert_eq!(total, 860 + 3877);
    assert!(segs > 71 + 350 && kept_any < total && kept_any > total * 9 / 10);
}

/// Arbitrary unicode words (any char class: marks, CJK, emoji, controls, whitespace) align
/// inside their own word spans, in order, with both the MiniLM tokenizer.json and the spm fixture.
#[test]
fn arbitrary_unicode_words_align_inside_their_spans() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let mut toks = vec![WordTokenizer::from_spm(&common::fixture("spm/spm.model")).unwrap()];
    if let Some(dir) = common::minilm_dir("arbitrary_unicode_words_align_inside_their_spans (MiniLM part)") {
        toks.push(tokenizer(&dir));
    }
    let mut runner = TestRunner::new(Config { cases: 100, failure_persistence: None, ..Config::default() });
    let words = prop::collection::vec("(\\PC|\\p{M}|\\p{Cf}|[\\t\\n \u{200b}\u{200d}\u{301}👩‍🔬日本שלום]){0,5}", 1..12);
    let toks = std::cell::RefCell::new(toks);
    runner
        .run(&words, |words| {
            let doc = Document::from_words("p", &words);
            for tok in toks.borrow_mut().iter_mut() {
                let a = align(&doc, tok).unwrap();
                let spans = doc.words.as_ref().unwrap();
                for k in 0..a.len() {
                    let (w, c) = (spans[a.word_index[k]], a.char_spans[k]);
                    prop_assert!(w.start <= c.start && c.start <= c.end && c.end <= w.end);
                    if k > 0 {
                        prop_assert!(a.word_index[k - 1] <= a.word_index[k]);
                        prop_assert!(a.char_spans[k - 1].start <= c.start);
                    }
                }
                let empty = a.word_subwords.iter().filter(|s| s.is_empty()).count();
                prop_assert_eq!(empty, a.report.count(Issue::WordWithoutSubwords));
            }
            Ok(())
        })
        .unwrap();
}
