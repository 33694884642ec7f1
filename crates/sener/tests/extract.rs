//! The extraction API on a model imported from an official-layout checkpoint (tiny fixture):
//! exact character offsets on unicode text, long inputs segmented and merged, edge inputs.

use sener::extract::Extractor;

mod common;
use common::tiny_model;

#[test]
fn offsets_are_exact_on_unicode_text_and_long_inputs_are_segmented() {
    let dir = std::env::temp_dir().join(format!("sener-extract-{}", std::process::id()));
    let mut ex = Extractor::load(&tiny_model(&dir)).unwrap();

    // Edge inputs: nothing to extract, no error.
    for t in ["", "   \n\t  "] {
        let r = ex.extract(t).unwrap();
        assert!(r.entities.is_empty() && r.segments == 0);
    }

    // Unicode-heavy text: combining marks, CJK, emoji, RTL, zero-width, tabs and newlines between
    // vocabulary words (the tiny tokenizer knows w4…w96; the rest is [UNK]).
    let text = "w5 Zoë\u{301} w6\tw7 日本語 w8\n\nw9 🎉🎉 w10 שלום w11\u{200b} w12 w13 w14 w15";
    let r = ex.extract(text).unwrap();
    assert_eq!(r.segments, 1);
    assert_eq!(r.words, 15); // U+200B is not whitespace: "w11\u{200b}" is one word
    assert!(!r.entities.is_empty(), "random tiny model predicts some spans");
    let chars: Vec<char> = text.chars().collect();
    for e in &r.entities {
        let by_chars: String = chars[e.start..e.end].iter().collect();
        assert_eq!(by_chars, e.text, "{e:?}");
        assert_eq!(&text[e.byte_start..e.byte_end], e.text);
        // Spans start and end at word boundaries (whitespace or text ends around them).
        assert!(e.start == 0 || chars[e.start - 1].is_whitespace(), "{e:?}");
        assert!(e.end == chars.len() || chars[e.end].is_whitespace(), "{e:?}");
        assert!(!e.text.starts_with(char::is_whitespace) && !e.text.ends_with(char::is_whitespace));
    }

    // A long input is cut into segments (here of 64 tokens) and merged; offsets stay exact.
    let long: String = (0..600).map(|i| format!("w{}", 4 + (i * 7) % 90)).collect::<Vec<_>>().join(" ");
    ex.options.max_len = Some(64);
    let r = ex.extract(&long).unwrap();
    assert_eq!(r.words, 600);
    assert_eq!(r.segments, 600usize.div_ceil(62));
    assert!(r.entities.iter().any(|e| e.start > long.len() / 2), "entities found in later segments");
    for e in &r.entities {
        assert_eq!(&long[e.byte_start..e.byte_end], e.text);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Batching: segments of many texts share forward passes, and every segment decodes to what it
/// gives alone in its own pass (spans identical, scores equal to 1e-5), across several LogN
/// length buckets (the tiny model's 2w = 256 tokens); `extract_batch` equals extracting each text
/// by itself, in input order, empty texts included.
#[test]
fn batched_extraction_equals_one_segment_per_pass() {
    let dir = std::env::temp_dir().join(format!("sener-extract-batch-{}", std::process::id()));
    let mut ex = Extractor::load(&tiny_model(&dir)).unwrap();
    ex.options.max_len = Some(300);
    let word = |i: usize| format!("w{}", 4 + (i * 7 + i / 3) % 90);
    let texts: Vec<String> = [3usize, 40, 0, 120, 17, 700, 250, 5, 260, 90, 1, 400]
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| word(i + 13 * k)).collect::<Vec<_>>().join(if k % 2 == 0 { " " } else { "  \n" }))
        .chain(["Zoë w5 日本語 w6 🎉 w7".to_string()])
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    let docs: Vec<_> = refs.iter().map(|t| ex.document(t)).filter(|d| d.word_count() > 0).collect();
    let segs: Vec<_> = docs.iter().flat_map(|d| ex.segments_of(d, &ex.options).unwrap()).collect();
    let lens: std::collections::BTreeSet<usize> = segs.iter().map(|s| ex.model.config.arrow.logn_length(s.input_ids.len())).collect();
    assert!(lens.len() >= 2 && segs.len() > docs.len(), "several buckets {lens:?}, multi-segment texts");
    let seg_refs: Vec<_> = segs.iter().collect();
    let batched = ex.model.predict_batch(&seg_refs, 0, &ex.options.decode, &|| false).unwrap();
    let mut found = 0;
    for (s, b) in segs.iter().zip(&batched) {
        let (_, alone) = ex.model.predict_segment(s, 0, &ex.options.decode).unwrap();
        assert_eq!(alone.len(), b.len());
        for (x, y) in alone.iter().zip(b) {
            assert_eq!((x.start, x.end, x.label), (y.start, y.end, y.label));
            assert!((x.score - y.score).abs() < 1e-5, "{x:?} {y:?}");
        }
        found += alone.len();
    }
    assert!(found > 0, "the random tiny model predicts some spans");

    let all = ex.extract_batch(&refs).unwrap();
    assert_eq!(all.len(), refs.len());
    for (t, r) in refs.iter().zip(&all) {
        let one = ex.extract(t).unwrap();
        assert_eq!((one.words, one.segments), (r.words, r.segments));
        assert_eq!(one.entities.len(), r.entities.len());
        for (x, y) in one.entities.iter().zip(&r.entities) {
            assert_eq!((x.start, x.end, &x.label, &x.text), (y.start, y.end, &y.label, &y.text));
            assert!((x.score - y.score).abs() < 1e-5);
        }
    }
    assert!(ex.extract_batch_until(&refs, &ex.options, &|| true).is_err_and(|e| matches!(e, sener::Error::Cancelled)));
    std::fs::remove_dir_all(dir).ok();
}
