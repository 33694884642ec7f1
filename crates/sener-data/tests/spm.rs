//! SentencePiece: the committed `fixtures/spm/spm.model` (trained by
//! `fixtures/make_spm_fixture.py`) gives the same ids and offsets as Python's
//! `DebertaV2TokenizerFast`, and the same ids as the `sentencepiece` library, on words and
//! sentences with unicode.

mod common;

use proptest::prelude::*;
use sener_data::align::WordTokenizer;
use sener_data::spm::{PieceType, SpmModel};
use serde_json::Value;

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(common::fixture("spm/golden.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn offsets(v: &Value) -> Vec<(usize, usize)> {
    v.as_array().unwrap().iter().map(|o| (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize)).collect()
}

#[test]
fn model_proto_is_parsed() {
    let m = SpmModel::from_file(&common::fixture("spm/spm.model")).unwrap();
    assert_eq!(m.pieces.len(), golden()["vocab_size"].as_u64().unwrap() as usize);
    assert_eq!((m.model_type, m.unk_id, m.byte_fallback), (1, 3, false));
    assert_eq!(m.normalizer_name, "nmt_nfkc");
    assert!(!m.precompiled_charsmap.is_empty() && m.add_dummy_prefix);
    let names: Vec<(&str, PieceType)> = m.pieces[..4].iter().map(|p| (p.piece.as_str(), p.kind)).collect();
    assert_eq!(names, vec![("[PAD]", PieceType::Control), ("[CLS]", PieceType::Control), ("[SEP]", PieceType::Control), ("[UNK]", PieceType::Unknown)]);
    assert!(m.pieces[4..].iter().all(|p| p.score < 0.0));
}

#[test]
fn words_and_sentences_match_python() {
    let g = golden();
    let mut tok = WordTokenizer::from_spm(&common::fixture("spm/spm.model")).unwrap();
    let sp = *tok.special();
    let mask = g["special"]["[MASK]"].as_u64().unwrap() as u32;
    assert_eq!((sp.pad, sp.cls, sp.sep, sp.unk, sp.mask), (0, 1, 2, Some(3), Some(mask)));
    assert_eq!(tok.vocab_size(), mask as usize + 1);
    let mut spm_differs = Vec::new();
    for e in g["words"].as_array().unwrap() {
        let w = e["text"].as_str().unwrap();
        let pieces = tok.encode_word(w).unwrap().to_vec();
        let got: Vec<u32> = pieces.iter().map(|p| p.id).collect();
        assert_eq!(got, ids(&e["hf_ids"]), "{w:?}");
        assert_eq!(pieces.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>(), offsets(&e["hf_offsets"]), "{w:?}");
        if got != ids(&e["spm_ids"]) {
            spm_differs.push(w.to_string());
        }
    }
    // The one documented difference between transformers and sentencepiece (see `sener_data::spm`).
    assert_eq!(spm_differs, vec!["\u{200b}".to_string()]);
    for e in g["sentences"].as_array().unwrap() {
        let s = e["text"].as_str().unwrap();
        let enc = tok.inner().encode_char_offsets(s, false).unwrap();
        assert_eq!(enc.get_ids(), &ids(&e["hf_ids"])[..], "{s:?}");
        assert_eq!(enc.get_ids(), &ids(&e["spm_ids"])[..], "{s:?}");
        assert_eq!(enc.get_offsets(), &offsets(&e["hf_offsets"])[..], "{s:?}");
    }
}

#[test]
fn broken_model_files_are_errors() {
    let bytes = std::fs::read(common::fixture("spm/spm.model")).unwrap();
    for cut in [1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        // A cut may still parse (cut between fields) but must never panic.
        let _ = SpmModel::parse("cut", &bytes[..cut]);
    }
    assert!(SpmModel::parse("empty", b"").is_err());
    assert!(SpmModel::parse("bad", &[0x0a, 0xff]).is_err());
}

/// Hides the panic messages of `spm_precompiled` (caught and turned into errors by the crate);
/// every other panic is still printed.
fn quiet_spm_precompiled_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|l| l.file().contains("spm_precompiled")) {
                default(info);
            }
        }));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_charsmaps_never_panic(trie_len in 0u32..64, body in prop::collection::vec(any::<u8>(), 0..128)) {
        use sener_data::spm::{deberta_v3_tokenizer, DebertaSpmOptions};
        quiet_spm_precompiled_panics();
        let base = SpmModel::from_file(&common::fixture("spm/spm.model")).unwrap();
        let mut cm = trie_len.to_le_bytes().to_vec();
        cm.extend(body);
        let m = SpmModel { precompiled_charsmap: cm, ..base };
        if let Ok(t) = deberta_v3_tokenizer(&m, &DebertaSpmOptions::default(), "fuzz") {
            let mut wt = WordTokenizer::from_tokenizer(t, "fuzz").unwrap();
            for s in ["abc", "日本", "é", "ǅ", "①"] {
                let _ = wt.encode_word(s);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_proto_reader(b in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = SpmModel::parse("fuzz", &b);
    }
}

/// Odd but well-formed models (empty or duplicate pieces, NaN scores, unk outside) give an error
/// or a working tokenizer, never a panic.
#[test]
fn odd_models_do_not_panic() {
    use sener_data::spm::{deberta_v3_tokenizer, DebertaSpmOptions, SpmPiece};
    let piece = |p: &str, score: f32, kind: PieceType| SpmPiece { piece: p.to_string(), score, kind };
    let base = SpmModel::from_file(&common::fixture("spm/spm.model")).unwrap();
    let variants: Vec<Vec<SpmPiece>> = vec![
        vec![piece("[UNK]", 0.0, PieceType::Unknown)],
        vec![piece("[UNK]", 0.0, PieceType::Unknown), piece("", -1.0, PieceType::Normal)],
        vec![piece("[UNK]", 0.0, PieceType::Unknown), piece("a", -1.0, PieceType::Normal), piece("a", -2.0, PieceType::Normal)],
        vec![piece("[UNK]", 0.0, PieceType::Unknown), piece("▁a", f32::NAN, PieceType::Normal), piece("b", f32::INFINITY, PieceType::Normal)],
    ];
    for pieces in variants {
        let m = SpmModel { pieces, unk_id: 0, precompiled_charsmap: Vec::new(), ..base.clone() };
        if let Ok(t) = deberta_v3_tokenizer(&m, &DebertaSpmOptions::default(), "odd") {
            for s in ["a", "ab b", "", "日本", " "] {
                let _ = t.encode_char_offsets(s, false);
            }
        }
    }
    let m = SpmModel { precompiled_charsmap: vec![1, 2, 3], ..base.clone() };
    assert!(deberta_v3_tokenizer(&m, &DebertaSpmOptions::default(), "odd").is_err());
    let m = SpmModel { model_type: 2, ..base };
    assert!(deberta_v3_tokenizer(&m, &DebertaSpmOptions::default(), "odd").is_err());
}
