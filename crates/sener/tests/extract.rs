//! The extraction API on a model imported from an official-layout checkpoint (tiny fixture):
//! exact character offsets on unicode text, long inputs segmented and merged, edge inputs.

use std::path::{Path, PathBuf};

use sener::extract::Extractor;
use sener::official::{import, ImportOptions};
use sener::span::SpanConfig;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn tiny_model(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    let opts = ImportOptions {
        labels: ["a", "b", "c", "d", "e"].map(String::from).to_vec(),
        span: SpanConfig { window: 4, biaffine_size: 10, cnn_dim: 8, cnn_depth: 2, ..SpanConfig::default() },
        lora_alpha: 16.0,
        arrow: Default::default(),
        max_len: 5120,
        splitter: Default::default(),
    };
    import(&fixture("official_tiny.pth"), &fixture("deberta_v3_tiny_tok"), &out, &opts).unwrap();
    out
}

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
