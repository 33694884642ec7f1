//! Checks every reader on the real data under ../shared/data: counts equal the data README's, and
//! every entity's text read back from the raw text equals the entity's words in the file.

mod common;

use std::path::Path;

use sener_data::readers::{scirex, sener};
use sener_data::writers::jsonl::{self, OffsetUnit};
use sener_data::writers;
use sener_data::stats::Stats;
use sener_data::{readers, Document, Format};
use serde_json::Value;

/// Checks documents against the raw JSON lines: same ids, text = words joined by one space,
/// word spans give the words back, entity texts equal their words (joined by one space) and the
/// word-level view gives back the file's indices.
fn check_against_raw(path: &Path, docs: &[Document], words_key: &str, ents_key: &str) {
    let raw = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), docs.len());
    for (l, d) in lines.iter().zip(docs) {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["doc_id"].as_str().unwrap(), d.id);
        let words: Vec<&str> = v[words_key].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
        assert_eq!(d.text, words.join(" "));
        assert_eq!(d.word_strs().unwrap(), words);
        let ents = v[ents_key].as_array().unwrap();
        assert_eq!(ents.len(), d.entities.len(), "{}", d.id);
        let (we, rep) = d.word_entities().unwrap();
        assert!(rep.is_empty());
        for ((e, w), r) in d.entities.iter().zip(&we).zip(ents) {
            let s = r[0].as_u64().unwrap() as usize;
            let t = r[1].as_u64().unwrap() as usize;
            assert_eq!((w.start, w.end), (s, t));
            let expect: Vec<&str> = match r[2].as_array() {
                Some(a) => a.iter().map(|x| x.as_str().unwrap()).collect(),
                None => words[s..t].to_vec(),
            };
            assert_eq!(d.entity_text(e).unwrap(), expect.join(" "), "{} {:?}", d.id, r);
            assert_eq!(e.label, r[r.as_array().unwrap().len() - 1].as_str().unwrap());
        }
        d.validate().unwrap();
    }
}

#[test]
fn sener_files_match_readme_counts_and_words() {
    let Some(dir) = common::data_dir("sener_files_match_readme_counts_and_words") else { return };
    // (file, documents, entities, (entities longer than 129 words: spec section 6, longest entity))
    let cases = [
        ("scholar-xl/dev.jsonl", 349, 3308, Some((46, 480))),
        ("scholar-xl/test.jsonl", 350, 3877, Some((23, 463))),
        ("profiling-07/dev.jsonl", 71, 860, None),
    ];
    for (f, nd, ne, long) in cases {
        let p = dir.join(f);
        let r = sener::read(&p).unwrap();
        assert!(r.report.is_empty(), "{f}: {}", r.report);
        assert_eq!(r.documents.len(), nd, "{f}");
        assert_eq!(r.documents.iter().map(|d| d.entities.len()).sum::<usize>(), ne, "{f}");
        check_against_raw(&p, &r.documents, "text", "entity");
        if let Some((long, longest)) = long {
            let st = Stats::of_documents(&r.documents, 128).unwrap();
            assert_eq!(st.longer_than_span_window, long, "{f}");
            assert_eq!((st.documents, st.entities, st.per_label.len()), (nd, ne, 12), "{f}");
            assert_eq!(st.length_histogram.values().sum::<usize>(), ne);
            assert_eq!(*st.length_histogram.keys().max().unwrap(), longest, "{f}");
        }
        // SeNER writer → reader: the same documents.
        let (s, rep) = writers::sener::to_string(&r.documents).unwrap();
        assert!(rep.is_empty());
        assert_eq!(sener::parse("mem", &s).unwrap().documents, r.documents, "{f}");
        // Own format round trip, in both offset units.
        for unit in [OffsetUnit::Char, OffsetUnit::Byte] {
            let s = jsonl::to_string(&r.documents, unit).unwrap();
            let back = readers::read_bytes(Format::Jsonl, "mem", s.as_bytes()).unwrap();
            assert_eq!(back.documents, r.documents, "{f} {unit:?}");
        }
    }
}

#[test]
fn scirex_files_match_readme_counts_and_words() {
    let Some(dir) = common::data_dir("scirex_files_match_readme_counts_and_words") else { return };
    for (f, nd, ne) in [("scirex/train.jsonl", 206, 73494), ("scirex/dev.jsonl", 50, 16095)] {
        let p = dir.join(f);
        let r = scirex::read(&p).unwrap();
        assert!(r.report.is_empty(), "{f}: {}", r.report);
        assert_eq!(r.documents.len(), nd, "{f}");
        assert_eq!(r.documents.iter().map(|d| d.entities.len()).sum::<usize>(), ne, "{f}");
        check_against_raw(&p, &r.documents, "words", "ner");
        assert!(r.documents.iter().all(|d| d.sentences.as_ref().is_some_and(|s| !s.is_empty())));
        if f.ends_with("dev.jsonl") {
            let s = jsonl::to_string(&r.documents, OffsetUnit::Char).unwrap();
            let back = readers::read_bytes(Format::Jsonl, "mem", s.as_bytes()).unwrap();
            assert_eq!(back.documents, r.documents);
        }
    }
}
