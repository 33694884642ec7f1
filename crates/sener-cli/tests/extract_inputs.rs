//! `sener extract` on awkward inputs and in every output format: the real binary on a tiny model
//! imported from the official-layout fixture checkpoint (labels a–e, span window 4, random
//! weights, so it predicts many nested spans). Every bad input must give a clear error naming the
//! file (exit status 2), or an empty result; never a panic.
//!
//! The two `#[ignore]`d tests are slow with the debug build on a small machine; run them with
//! `cargo test -p sener-cli --test extract_inputs -- --ignored --nocapture`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::Value;

mod common;
use common::tiny_model;

/// A fresh temporary folder holding a tiny model; removed on drop.
struct Setup {
    dir: PathBuf,
    model: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

impl Setup {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("sener-extract-inputs-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        let model = tiny_model(&dir);
        Setup { dir, model }
    }

    /// Writes `bytes` to `rel` inside the folder (parents created) and returns the path.
    fn file(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn cmd<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sener"));
        c.arg("extract").arg("--model").arg(&self.model).args(args);
        c
    }

    /// `sener extract --model MODEL ARGS…`
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().expect("running sener extract")
    }

    /// The same with `input` on standard input.
    fn run_stdin<S: AsRef<OsStr>>(&self, args: &[S], input: &[u8]) -> Output {
        let mut child = self.cmd(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().ok();
        out
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "exit {:?}\n{}", o.status.code(), stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

/// A failure with exit status 2 (an error, not a panic: Rust panics exit with 101) whose message
/// holds every needle.
fn fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

fn jsonl(o: &Output) -> Vec<Value> {
    stdout(o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// Words the tiny tokenizer knows (w4…w93), `n` of them.
fn words(n: usize, seed: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{}", 4 + (i * 7 + seed) % 90)).collect()
}

/// Every entity's text is exactly the text at its code-point and byte offsets.
fn check_offsets(text: &str, v: &Value) {
    let chars: Vec<char> = text.chars().collect();
    for e in v["entities"].as_array().unwrap() {
        let (s, t) = (e["start"].as_u64().unwrap() as usize, e["end"].as_u64().unwrap() as usize);
        let (bs, bt) = (e["byte_start"].as_u64().unwrap() as usize, e["byte_end"].as_u64().unwrap() as usize);
        let want = e["text"].as_str().unwrap();
        assert_eq!(&text[bs..bt], want, "{e}");
        assert_eq!(chars[s..t].iter().collect::<String>(), want, "{e}");
    }
}

#[test]
fn empty_and_whitespace_only_files_give_empty_results_in_every_format() {
    let s = Setup::new();
    let empty = s.file("empty.txt", "");
    let blank = s.file("blank.txt", " \n\t \r\n \u{3000} ");
    let o = s.run(&[&empty, &blank]);
    ok(&o);
    let v = jsonl(&o);
    assert_eq!(v.len(), 2);
    for d in &v {
        assert_eq!(d["words"], 0);
        assert_eq!(d["segments"], 0);
        assert_eq!(d["entities"], serde_json::json!([]));
    }
    // Whitespace only (a byte-order mark alone counts as empty too).
    let bom = s.file("bom.txt", "\u{feff}");
    let o = s.run(&[&bom]);
    ok(&o);
    assert_eq!(jsonl(&o)[0]["words"], 0);
    for f in ["json", "table", "conll", "conll-bioes", "brat"] {
        let o = s.run(&[OsStr::new("--output-format"), OsStr::new(f), empty.as_os_str()]);
        ok(&o);
    }
    let out = s.dir.join("brat");
    let o = s.run(&[OsStr::new("--output-format"), OsStr::new("brat"), OsStr::new("--output-dir"), out.as_os_str(), empty.as_os_str(), blank.as_os_str()]);
    ok(&o);
    assert_eq!(std::fs::read_to_string(out.join("empty.ann")).unwrap(), "");
    assert_eq!(std::fs::read_to_string(out.join("blank.ann")).unwrap(), "");
    // Empty standard input.
    let o = s.run_stdin(&["-"], b"");
    ok(&o);
    assert_eq!(jsonl(&o)[0]["entities"], serde_json::json!([]));
}

#[test]
fn invalid_utf8_is_named_with_its_line() {
    let s = Setup::new();
    let bad = s.file("bad.txt", b"w5 w6\nw7 \xff\xfe w8");
    let o = s.run(&[&bad]);
    fails_with(&o, &["bad.txt", "not valid UTF-8", "line 2"]);
    assert!(o.stdout.is_empty());
    let o = s.run_stdin(&["-"], b"w5 \xc3\x28 w6");
    fails_with(&o, &["<stdin>", "not valid UTF-8"]);
    // A reader format names the file too.
    let o = s.run(&[OsStr::new("--format"), OsStr::new("jsonl"), bad.as_os_str()]);
    fails_with(&o, &["bad.txt", "UTF-8"]);
}

#[test]
fn binary_files_are_refused_as_binary() {
    let s = Setup::new();
    let png = s.file("image.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10");
    let o = s.run(&[&png]);
    fails_with(&o, &["image.png", "looks binary", "NUL byte at offset 8"]);
    // UTF-16 text is not UTF-8: also refused, not extracted from garbage.
    let utf16: Vec<u8> = "\u{feff}w5 w6".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    let u = s.file("utf16.txt", &utf16);
    fails_with(&s.run(&[&u]), &["utf16.txt", "looks binary"]);
    // Binary bytes without NUL are invalid UTF-8.
    let noise = s.file("noise.bin", [0x80u8, 0x81, 0xfe, 0xff, 0x90]);
    fails_with(&s.run(&[&noise]), &["noise.bin", "not valid UTF-8"]);
    // Reader formats check too.
    let o = s.run(&[OsStr::new("--format"), OsStr::new("sener"), png.as_os_str()]);
    fails_with(&o, &["image.png", "looks binary"]);
}

/// One 10 MiB line (no newline): 2,000 words in long runs of spaces, tabs and U+3000 (so code
/// points and bytes differ), extracted in one segment with exact offsets.
#[test]
fn ten_megabyte_single_line_extracts() {
    let s = Setup::new();
    let target = 10 << 20;
    let ws = words(2000, 3);
    let gap = target / ws.len();
    let mut text = String::with_capacity(target + 4096);
    for (i, w) in ws.iter().enumerate() {
        text.push_str(w);
        let mut g = String::new();
        while g.len() + w.len() + 8 < gap {
            g.push_str(["        ", "\t\t\t\t", "\u{3000}  "][(i + g.len()) % 3]);
        }
        text.push_str(&g);
    }
    assert!(text.len() > 10_000_000 && !text.contains('\n'), "{}", text.len());
    let f = s.file("line.txt", &text);
    let t0 = Instant::now();
    let o = s.run(&[&f]);
    eprintln!("10 MiB line: {:.1} s", t0.elapsed().as_secs_f64());
    ok(&o);
    let v = jsonl(&o);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["words"], 2000);
    assert!(!v[0]["entities"].as_array().unwrap().is_empty());
    check_offsets(&text, &v[0]);
    let last = v[0]["entities"].as_array().unwrap().iter().map(|e| e["byte_end"].as_u64().unwrap()).max().unwrap();
    assert!(last > 9_000_000, "entities found near the end of the line ({last})");
}

/// One dense 10 MiB line (≈ 2.6 million words, ≈ 510 segments of 5,120 tokens):
/// `cargo test -p sener-cli --test extract_inputs -- --ignored ten_megabyte_dense_line --nocapture`.
/// `--flat` keeps the random model's output to about one entity per word (nested, it writes
/// close to a gigabyte of JSON); the output is checked with borrowed strings to stay small.
#[test]
#[ignore]
fn ten_megabyte_dense_line_extracts() {
    #[derive(serde::Deserialize)]
    struct E<'a> {
        start: usize,
        end: usize,
        byte_start: usize,
        byte_end: usize,
        #[serde(borrow)]
        text: std::borrow::Cow<'a, str>,
    }
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        words: usize,
        segments: usize,
        #[serde(borrow)]
        entities: Vec<E<'a>>,
    }
    let s = Setup::new();
    let mut text = String::with_capacity((10 << 20) + 16);
    let mut n = 0usize;
    while text.len() < 10 << 20 {
        text.push_str(&format!("w{} ", 4 + (n * 7) % 90));
        n += 1;
    }
    let f = s.file("dense.txt", &text);
    let out = s.dir.join("dense.jsonl");
    let t0 = Instant::now();
    let st = s.cmd(&[OsStr::new("--flat"), f.as_os_str()]).stdout(std::fs::File::create(&out).unwrap()).status().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(st.success());
    let json = std::fs::read_to_string(&out).unwrap();
    let d: Doc = serde_json::from_str(json.trim()).unwrap();
    eprintln!("dense 10 MiB line: {n} words, {} segments, {} entities, {secs:.0} s", d.segments, d.entities.len());
    assert_eq!(d.words, n);
    assert_eq!(d.segments, n.div_ceil(5118));
    assert!(!d.entities.is_empty());
    // ASCII text: code points and bytes coincide.
    for e in &d.entities {
        assert_eq!((e.start, e.end), (e.byte_start, e.byte_end));
        assert_eq!(&text[e.byte_start..e.byte_end], e.text);
    }
}

/// A 100,000-word document with the tiny model (20 segments); prints time and the peak RSS of
/// the `sener extract` process:
/// `cargo test -p sener-cli --test extract_inputs -- --ignored long_document_100k_words --nocapture`.
#[test]
#[ignore]
fn long_document_100k_words_prints_peak_rss() {
    let s = Setup::new();
    let text = words(100_000, 0).join(" ");
    let f = s.file("long.txt", &text);
    let out = s.dir.join("long.jsonl");
    let t0 = Instant::now();
    let st = s.cmd(&[&f]).stdout(std::fs::File::create(&out).unwrap()).status().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    assert!(st.success());
    // SAFETY: plain getrusage into a zeroed struct; RUSAGE_CHILDREN covers the waited-for
    // children of this test (import-official and extract; extract is by far the larger).
    let peak_kib = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    };
    let v: Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!(v["words"], 100_000);
    assert_eq!(v["segments"], 100_000usize.div_ceil(5118));
    check_offsets(&text, &v);
    eprintln!(
        "100,000 words: {} segments, {} entities, {secs:.1} s, peak RSS {:.0} MiB",
        v["segments"],
        v["entities"].as_array().unwrap().len(),
        peak_kib as f64 / 1024.0
    );
}

#[test]
fn unknown_format_values_list_the_valid_ones() {
    let s = Setup::new();
    let f = s.file("a.txt", "w5 w6");
    let o = s.run(&[OsStr::new("--format"), OsStr::new("xml"), f.as_os_str()]);
    fails_with(&o, &["xml", "--format"]);
    for name in ["sener", "scirex", "conll", "conll-bioes", "gliner", "brat", "text", "text-lines", "jsonl"] {
        assert!(stderr(&o).contains(name), "{name} not listed: {}", stderr(&o));
    }
    let o = s.run(&[OsStr::new("--output-format"), OsStr::new("yaml"), f.as_os_str()]);
    fails_with(&o, &["yaml", "--output-format", "jsonl", "json", "table", "brat", "conll", "conll-bioes"]);
    // The hidden aliases still work.
    ok(&s.run(&[OsStr::new("--format"), OsStr::new("plain"), f.as_os_str()]));
}

#[test]
fn missing_files_are_named_before_any_output() {
    let s = Setup::new();
    let good = s.file("a.txt", "w5 w6");
    let missing = s.dir.join("nope/missing.txt");
    let o = s.run(&[&good, &missing]);
    fails_with(&o, &["missing.txt", "No such file"]);
    assert!(o.stdout.is_empty(), "inputs are checked before the model runs");
    // A missing model folder is named as well.
    let o = Command::new(env!("CARGO_BIN_EXE_sener")).args(["extract", "--model", "/no/such/model"]).arg(&good).output().unwrap();
    fails_with(&o, &["/no/such/model"]);
}

#[test]
fn globs_and_folders_expand_and_a_glob_matching_nothing_is_an_error() {
    let s = Setup::new();
    s.file("docs/b.txt", "w5 w6 w7");
    s.file("docs/a.txt", "w8 w9");
    s.file("docs/notes.md", "w10");
    s.file("docs/sub/c.txt", "w11 w12");
    s.file("docs/.hidden.txt", "w13");
    let docs = s.dir.join("docs");
    let sources = |o: &Output| -> Vec<String> {
        ok(o);
        jsonl(o).iter().map(|v| Path::new(v["source"].as_str().unwrap()).strip_prefix(&docs).unwrap().display().to_string()).collect()
    };
    // A folder: every file inside, recursively, sorted; hidden files skipped.
    let o = s.run(&[&docs]);
    assert_eq!(sources(&o), ["a.txt", "b.txt", "notes.md", "sub/c.txt"]);
    // stderr is a pipe here, so no bar is drawn: progress is logged instead (at the end at least).
    assert!(stderr(&o).contains("extract progress documents=4 of=4"), "{}", stderr(&o));
    // A quoted pattern is expanded by sener (the shell would pass it as is).
    let pat = docs.join("*.txt");
    assert_eq!(sources(&s.run(&[&pat])), ["a.txt", "b.txt"]);
    assert_eq!(sources(&s.run(&[docs.join("**/*.txt")])), ["a.txt", "b.txt", "sub/c.txt"]);
    // Nothing matches: an error naming the pattern.
    let none = docs.join("*.pdf");
    fails_with(&s.run(&[&none]), &["no file matches", "*.pdf"]);
    // An invalid pattern is named.
    fails_with(&s.run(&[docs.join("[z-a")]), &["glob pattern", "[z-a"]);
    // An empty folder is an error, not silence.
    std::fs::create_dir_all(s.dir.join("void")).unwrap();
    fails_with(&s.run(&[s.dir.join("void")]), &["void", "no files"]);
    // Standard input twice is refused.
    fails_with(&s.run(&["-", "-"]), &["more than once"]);
}

#[test]
fn reader_formats_give_one_result_per_document() {
    let s = Setup::new();
    let f = s.file(
        "in.jsonl",
        "{\"doc_id\": \"d1\", \"text\": [\"w5\", \"w6\", \"w7\"], \"entity\": []}\n{\"doc_id\": \"d2\", \"text\": [\"w8\"], \"entity\": []}\n",
    );
    let o = s.run(&[OsStr::new("--format"), OsStr::new("sener"), f.as_os_str()]);
    ok(&o);
    let v = jsonl(&o);
    assert_eq!(v.len(), 2);
    assert!(v[0]["source"].as_str().unwrap().ends_with("in.jsonl#d1"));
    assert_eq!(v[1]["words"], 1);
    // Malformed input is named with its line.
    let bad = s.file("bad.jsonl", "{\"doc_id\": \"d1\", \"text\": [\"w5\"], \"entity\": []}\n{not json\n");
    fails_with(&s.run(&[OsStr::new("--format"), OsStr::new("sener"), bad.as_os_str()]), &["bad.jsonl:2", "invalid JSON"]);
}

#[test]
fn brat_output_writes_one_ann_per_document() {
    let s = Setup::new();
    let texts = ["w5 Zoë w6\tw7 日本 w8\nw9 w10", "w11 w12 w13 w14"];
    let a = s.file("in/a.txt", texts[0]);
    let b = s.file("in/b.txt", texts[1]);
    let o = s.run(&[&a, &b]);
    ok(&o);
    let expected = jsonl(&o);
    let out = s.dir.join("out");
    let o = s.run(&[OsStr::new("--output-format"), OsStr::new("brat"), OsStr::new("--output-dir"), out.as_os_str(), a.as_os_str(), b.as_os_str()]);
    ok(&o);
    for (k, stem) in ["a", "b"].iter().enumerate() {
        assert_eq!(std::fs::read_to_string(out.join(format!("{stem}.txt"))).unwrap(), texts[k]);
        let ann = std::fs::read_to_string(out.join(format!("{stem}.ann"))).unwrap();
        let chars: Vec<char> = texts[k].chars().collect();
        let t_lines: Vec<&str> = ann.lines().filter(|l| l.starts_with('T')).collect();
        assert_eq!(t_lines.len(), expected[k]["entities"].as_array().unwrap().len());
        for l in t_lines {
            // The text column is everything after the second tab (it may hold tabs itself).
            // An entity across line breaks is written as brat does: fragments between the breaks
            // (`Type a b;c d`), the text column their texts joined by a space.
            let cols: Vec<&str> = l.splitn(3, '\t').collect();
            let (_, offs) = cols[1].split_once(' ').unwrap();
            let frags: Vec<(usize, usize)> = offs
                .split(';')
                .map(|f| {
                    let (a, b) = f.split_once(' ').unwrap();
                    (a.parse().unwrap(), b.parse().unwrap())
                })
                .collect();
            let text = frags.iter().map(|&(a, b)| chars[a..b].iter().collect::<String>()).collect::<Vec<_>>().join(" ");
            assert_eq!(text, cols[2], "{l}");
            for w in frags.windows(2) {
                assert!(chars[w[0].1..w[1].0].iter().all(|c| *c == '\n' || *c == '\r'), "{l}: only line breaks between fragments");
            }
        }
    }
    // Several documents without --output-dir: a clear error; one document: the .ann on stdout.
    let o = s.run(&[OsStr::new("--output-format"), OsStr::new("brat"), a.as_os_str(), b.as_os_str()]);
    fails_with(&o, &["--output-dir", "2 documents"]);
    let o = s.run_stdin(&["--output-format", "brat"], texts[1].as_bytes());
    ok(&o);
    // The same annotations as in the two-document batch above, scores to 1e-5.
    let alone = stdout(&o);
    let batched = std::fs::read_to_string(out.join("b.ann")).unwrap();
    assert_eq!(alone.lines().count(), batched.lines().count());
    for (x, y) in alone.lines().zip(batched.lines()) {
        match (x.rsplit_once("score="), y.rsplit_once("score=")) {
            (Some((hx, sx)), Some((hy, sy))) => {
                assert_eq!(hx, hy);
                assert!((sx.parse::<f64>().unwrap() - sy.parse::<f64>().unwrap()).abs() < 1e-5, "{x} / {y}");
            }
            _ => assert_eq!(x, y),
        }
    }
    // --output-dir belongs to brat.
    fails_with(&s.run(&[OsStr::new("--output-dir"), out.as_os_str(), a.as_os_str()]), &["--output-dir", "brat"]);
}

#[test]
fn conll_output_reports_dropped_nested_entities() {
    let s = Setup::new();
    let text = words(40, 1).join(" ");
    let f = s.file("doc.txt", &text);
    let n_entities = jsonl(&s.run(&[&f]))[0]["entities"].as_array().unwrap().len();
    let o = s.run(&[OsStr::new("--output-format"), OsStr::new("conll"), f.as_os_str()]);
    ok(&o);
    let conll = stdout(&o);
    let rows: Vec<&str> = conll.lines().filter(|l| !l.is_empty() && !l.starts_with("-DOCSTART-")).collect();
    assert_eq!(rows.len(), 40);
    let written = rows.iter().filter(|r| r.split('\t').nth(1).unwrap().starts_with("B-")).count();
    let err = stderr(&o);
    let dropped = n_entities - written;
    assert!(dropped > 0, "the random tiny model nests spans");
    assert!(
        err.contains(&format!("conll: {written} of {n_entities} entities written; {dropped} nested or overlapping entities dropped")),
        "{err}"
    );
    // BIOES: same entities, other tags.
    let o = s.run(&[OsStr::new("--output-format"), OsStr::new("conll-bioes"), f.as_os_str()]);
    ok(&o);
    assert!(stderr(&o).contains(&format!("{dropped} nested")));
    assert!(stdout(&o).lines().any(|l| l.contains("\tS-") || l.contains("\tE-")));
}

/// The same documents with the same entities (spans, labels, texts), scores equal to 1e-5: a
/// document's segments share forward passes with other documents of its batch, which may change
/// the last bits of its scores.
fn same_up_to_scores(a: &[Value], b: &[Value], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        let strip = |v: &Value| {
            let mut v = v.clone();
            for e in v["entities"].as_array_mut().into_iter().flatten() {
                e.as_object_mut().unwrap().remove("score");
            }
            v
        };
        assert_eq!(strip(x), strip(y), "{what}");
        for (p, q) in x["entities"].as_array().unwrap().iter().zip(y["entities"].as_array().unwrap()) {
            assert!((p["score"].as_f64().unwrap() - q["score"].as_f64().unwrap()).abs() < 1e-5, "{what}: {p} / {q}");
        }
    }
}

#[test]
fn batches_give_the_same_results_as_single_documents() {
    let s = Setup::new();
    let files: Vec<PathBuf> = (0..5).map(|k| s.file(&format!("d/{k}.txt"), words(10 + 7 * k, k).join(" "))).collect();
    let folder = s.dir.join("d");
    let one = s.run(&[OsStr::new("--batch-size"), OsStr::new("1"), folder.as_os_str()]);
    ok(&one);
    assert_eq!(jsonl(&one).len(), files.len());
    for bs in ["2", "8"] {
        let o = s.run(&[OsStr::new("--batch-size"), OsStr::new(bs), folder.as_os_str()]);
        ok(&o);
        // Documents of a batch share forward passes: the same entities, scores to 1e-5.
        same_up_to_scores(&jsonl(&o), &jsonl(&one), &format!("--batch-size {bs}"));
    }
    // JSON: one valid array with the same documents.
    let o = s.run(&[OsStr::new("--output-format"), OsStr::new("json"), folder.as_os_str()]);
    ok(&o);
    let arr: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    same_up_to_scores(&arr, &jsonl(&one), "json");
    fails_with(&s.run(&[OsStr::new("--batch-size"), OsStr::new("0"), folder.as_os_str()]), &["--batch-size"]);
}

#[test]
fn keep_going_skips_bad_files_and_names_them() {
    let s = Setup::new();
    s.file("d/a.txt", "w5 w6 w7");
    s.file("d/b.txt", b"w5 \xff");
    s.file("d/c.bin", b"\0\0\0");
    s.file("d/d.txt", "w8 w9");
    let d = s.dir.join("d");
    // Without --keep-going the first bad file stops the run.
    let o = s.run(&[&d]);
    fails_with(&o, &["b.txt", "not valid UTF-8"]);
    // With it, the good files are extracted and the bad ones listed; the exit status says so.
    let o = s.run(&[OsStr::new("--keep-going"), d.as_os_str()]);
    fails_with(&o, &["b.txt", "c.bin", "looks binary", "2 of 4 document(s) skipped"]);
    let v = jsonl(&o);
    assert_eq!(v.len(), 2);
    assert!(v[0]["source"].as_str().unwrap().ends_with("a.txt") && v[1]["source"].as_str().unwrap().ends_with("d.txt"));
}

/// `sener extract … | head -c 10`: a reader that goes away is not an error (nor a panic).
#[test]
fn closed_standard_output_ends_quietly() {
    use std::io::Read;
    let s = Setup::new();
    let files: Vec<PathBuf> = (0..6).map(|k| s.file(&format!("d/{k}.txt"), words(3000, k).join(" "))).collect();
    let mut child = s.cmd(&files).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // Our end of the pipe is closed here; the next write of sener fails with EPIPE.
    let out = child.wait_with_output().unwrap();
    assert_eq!(&first[..2], b"{\"");
    ok(&out);
}
