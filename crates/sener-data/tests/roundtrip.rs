//! Round trips on hand-made fixtures: reader → own JSON lines → reader gives the same documents,
//! and reader → writer reproduces the fixture byte for byte where a writer exists.

mod common;

use sener_data::readers::{self, brat, conll, gliner, plain, sener, PlainMode, TagScheme};
use sener_data::writers::{self, jsonl::OffsetUnit};
use sener_data::{Document, Entity, Format, Issue, ReadResult};

fn via_own_format(r: &ReadResult) {
    for unit in [OffsetUnit::Char, OffsetUnit::Byte] {
        let s = writers::jsonl::to_string(&r.documents, unit).unwrap();
        let back = readers::read_bytes(Format::Jsonl, "mem.jsonl", s.as_bytes()).unwrap();
        assert_eq!(back.documents, r.documents, "{unit:?}");
        assert!(back.report.is_empty());
    }
}

fn texts(d: &Document) -> Vec<(&str, &str)> {
    d.entities.iter().map(|e| (d.entity_text(e).unwrap(), e.label.as_str())).collect()
}

#[test]
fn conll_bio_round_trip_is_identical() {
    let p = common::fixture("bio.conll");
    let r = conll::read(&p, TagScheme::Bio).unwrap();
    assert!(r.report.is_empty(), "{}", r.report);
    assert_eq!(r.documents.len(), 2);
    assert_eq!(texts(&r.documents[0]), vec![("EU", "ORG"), ("German", "MISC"), ("Peter Blackburn", "PER")]);
    assert_eq!(texts(&r.documents[1]), vec![("São Paulo", "LOC"), ("日本", "LOC")]);
    assert_eq!(r.documents[0].sentences.as_ref().unwrap().len(), 2);
    via_own_format(&r);
    let (s, rep) = writers::conll::to_string(&r.documents, TagScheme::Bio).unwrap();
    assert!(rep.is_empty());
    assert_eq!(s, std::fs::read_to_string(&p).unwrap());
}

#[test]
fn conll_bioes_round_trip_is_identical() {
    let p = common::fixture("bioes.conll");
    let r = conll::read(&p, TagScheme::Bioes).unwrap();
    assert!(r.report.is_empty(), "{}", r.report);
    assert_eq!(texts(&r.documents[0]), vec![("New York City", "LOC"), ("Paris", "LOC"), ("Dr. Who", "PER")]);
    via_own_format(&r);
    let (s, _) = writers::conll::to_string(&r.documents, TagScheme::Bioes).unwrap();
    assert_eq!(s, std::fs::read_to_string(&p).unwrap());
    // The same file is not valid BIO.
    let e = conll::read(&p, TagScheme::Bio).unwrap_err().to_string();
    assert!(e.contains("bioes.conll:5: field `tag`"), "{e}");
}

#[test]
fn conll_iob1_and_repairs_are_reported() {
    let r = conll::read(&common::fixture("iob1.conll"), TagScheme::Bio).unwrap();
    // No -DOCSTART-: each sentence is a document.
    assert_eq!(r.documents.len(), 2);
    assert_eq!(texts(&r.documents[0]), vec![("EU", "ORG"), ("German British", "MISC"), ("I-lamb", "MISC")]);
    assert_eq!(texts(&r.documents[1]), vec![("x", "PER"), ("y", "LOC")]);
    assert_eq!(r.report.count(Issue::InsideTagWithoutBegin), 4);
    let bad = conll::parse("mem", "-DOCSTART- O\n\nx B-A\n-DOCSTART- O\n-DOCSTART- O\n\n", TagScheme::Bioes).unwrap();
    assert_eq!(bad.report.count(Issue::UnclosedBioesEntity), 1);
    assert_eq!(bad.report.count(Issue::EmptyDocumentSkipped), 2);
    let r = conll::parse("mem", "a B-X\nb I-Y\nc E-Y\nd E-Z\ne I-Z\n", TagScheme::Bioes).unwrap();
    let t: Vec<_> = texts(&r.documents[0]).into_iter().map(|(a, b)| format!("{a}/{b}")).collect();
    assert_eq!(t, vec!["a/X", "b c/Y", "d/Z", "e/Z"]);
    assert_eq!(r.report.count(Issue::InsideTagWithoutBegin), 3);
    assert_eq!(r.report.count(Issue::UnclosedBioesEntity), 2); // X (closed by I-Y), e (ends at file end)
}

#[test]
fn sener_round_trip_and_flat_conll() {
    let r = sener::read(&common::fixture("sener.jsonl")).unwrap();
    assert_eq!(texts(&r.documents[0]), vec![("He", "gender"), ("MIT in Boston", "work_for"), ("Boston", "birth_place")]);
    via_own_format(&r);
    let (s, rep) = writers::sener::to_string(&r.documents).unwrap();
    assert!(rep.is_empty());
    assert_eq!(s, std::fs::read_to_string(common::fixture("sener.jsonl")).unwrap().replace(", ", ",").replace(": ", ":"));
    // Doc a2 has a word made of U+2060 WORD JOINER, which is not whitespace: it is a valid token.
    let (s, rep) = writers::conll::to_string(&r.documents, TagScheme::Bio).unwrap();
    assert_eq!(rep.count(Issue::NestedEntityDropped), 1);
    let back = conll::parse("mem", &s, TagScheme::Bio).unwrap();
    assert_eq!(back.documents.len(), 2);
    assert_eq!(back.documents[0].text, r.documents[0].text);
    assert_eq!(texts(&back.documents[0]), vec![("He", "gender"), ("MIT in Boston", "work_for")]);
    // A word with a space cannot be written to CoNLL.
    let d = Document::from_words("w", &["a b", "c"]);
    let e = writers::conll::to_string(&[d], TagScheme::Bio).unwrap_err().to_string();
    assert!(e.contains("document `w`") && e.contains("word 0"), "{e}");
}

#[test]
fn gliner_inclusive_ends_and_round_trip() {
    let r = gliner::read(&common::fixture("gliner.json")).unwrap();
    assert_eq!(texts(&r.documents[0]), vec![("Barack Obama", "person"), ("Paris", "location")]);
    assert_eq!(texts(&r.documents[1]), vec![("Ünïcode 日本 👩‍🔬", "thing"), ("日本", "place")]);
    assert_eq!(r.documents[1].entities[1], Entity::new(8, 10, "place"));
    via_own_format(&r);
    // JSON lines work too.
    let lines = "{\"tokenized_text\": [\"a\"], \"ner\": [[0, 0, \"x\"]]}\n{\"tokenized_text\": [], \"ner\": []}\n";
    assert_eq!(gliner::parse("mem", lines).unwrap().documents.len(), 2);
}

#[test]
fn brat_round_trip_is_identical() {
    let dir = common::fixture("brat");
    let r = brat::read(&dir).unwrap();
    assert!(r.report.is_empty(), "{}", r.report);
    let d = &r.documents[0];
    assert_eq!(d.id, "ada");
    assert_eq!(texts(d), vec![("Ada Lovelace", "Person"), ("the first\nprogram", "Thing"), ("1843", "Date"), ("日本", "Place")]);
    assert_eq!(d.entities[2].score, Some(0.75));
    let (we, rep) = d.word_entities().unwrap();
    assert!(rep.is_empty());
    assert_eq!(we.len(), 4);
    via_own_format(&r);
    let (txt, ann) = writers::brat::render(d).unwrap();
    assert_eq!(txt, std::fs::read_to_string(dir.join("ada.txt")).unwrap());
    assert_eq!(ann, std::fs::read_to_string(dir.join("ada.ann")).unwrap());
    // Written to a folder and read back.
    let out = std::env::temp_dir().join(format!("sener-data-brat-{}", std::process::id()));
    let stems = writers::brat::write_dir(&out, &r.documents).unwrap();
    assert_eq!(stems, vec!["ada"]);
    let back = brat::read(&out.join("ada.ann")).unwrap();
    assert_eq!(back.documents, r.documents);
    let _ = std::fs::remove_dir_all(&out);
}

/// An entity across a line break is written as brat writes one (fragments between the breaks, the
/// text column equal to the fragments' text), and read back as one entity; the older single-span
/// form with the break written as a space still reads, and a gap that is not a line break keeps
/// an entity discontinuous.
#[test]
fn brat_entities_across_line_breaks_keep_their_text() {
    let dir = std::env::temp_dir().join(format!("sener-data-brat-nl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = "Dr. Ada\r\nLovelace\n\nwrote x.";
    std::fs::write(dir.join("n.txt"), text).unwrap();
    let mut doc = sener_data::Document::new("n", text);
    doc.entities.push(sener_data::Entity::new(4, 17, "Person"));
    let (_, ann) = writers::brat::render(&doc).unwrap();
    assert_eq!(ann, "T1\tPerson 4 7;9 17\tAda Lovelace\n");
    std::fs::write(dir.join("n.ann"), &ann).unwrap();
    let back = brat::read(&dir.join("n.ann")).unwrap();
    assert!(back.report.is_empty(), "{}", back.report);
    assert_eq!((back.documents[0].entities[0].start, back.documents[0].entities[0].end), (4, 17));
    // the older form: one span over the break, the break as a space in the text column
    std::fs::write(dir.join("n.ann"), "T1\tPerson 4 17\tAda  Lovelace\n").unwrap();
    let old = brat::read(&dir.join("n.ann")).unwrap();
    assert!(old.report.is_empty(), "{}", old.report);
    assert_eq!((old.documents[0].entities[0].start, old.documents[0].entities[0].end), (4, 17));
    // fragments with words between them stay discontinuous
    std::fs::write(dir.join("n.ann"), "T1\tPerson 0 3;9 17\tDr. Lovelace\n").unwrap();
    let disc = brat::read(&dir.join("n.ann")).unwrap();
    assert_eq!(disc.report.count(Issue::DiscontinuousEntityDropped), 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn brat_discontinuous_and_other_lines_are_reported() {
    let r = brat::read(&common::fixture("brat_extra/x.txt")).unwrap();
    assert_eq!(r.report.count(Issue::DiscontinuousEntityDropped), 1);
    assert_eq!(r.report.count(Issue::NonTextBoundAnnotationIgnored), 3);
    assert_eq!(r.report.count(Issue::AnnotationTextMismatch), 1);
    assert_eq!(texts(&r.documents[0]), vec![("Ada Lovelace", "Person"), ("programs", "Thing")]);
    assert!(r.report.to_string().contains("x.ann:1 T1"), "{}", r.report);
}

#[test]
fn plain_text_keeps_the_text_exactly() {
    let p = common::fixture("plain.txt");
    let raw = std::fs::read_to_string(&p).unwrap();
    let r = plain::read(&p, PlainMode::Whole).unwrap();
    assert_eq!(r.documents[0].text, raw);
    assert_eq!(r.documents[0].word_strs().unwrap(), vec!["Plain", "text", "with", "tabs,", "newlines", "and", "日本語", "👍🏽."]);
    via_own_format(&r);
    let lines = plain::read_from("<stdin>", raw.as_bytes(), PlainMode::Lines).unwrap();
    let same = readers::read_from(Format::Plain(PlainMode::Lines), "<stdin>", raw.as_bytes()).unwrap();
    assert_eq!(same.documents, lines.documents);
    assert_eq!(lines.documents.len(), 2);
    assert_eq!(lines.documents[1].id, "2");
}

#[test]
fn errors_name_file_line_and_field() {
    let cases: Vec<(Format, &str, &str)> = vec![
        (Format::Sener, "{\"text\": [\"a\"], \"entity\": []}\n\n{\"text\": [\"a\"], \"entity\": [[0, 2, [\"a\"], \"X\"]]}", "f:3: field `entity[0][1]`"),
        (Format::Sener, "{\"text\": [\"a\", \"b\"], \"entity\": [[0, 1, [\"b\"], \"X\"]]}", "f:1: field `entity[0][2]`"),
        (Format::Sener, "{\"text\": [\"a\", 3]}", "f:1: field `text[1]`"),
        (Format::Sener, "{\"text\": [\"a\"]", "f:1: invalid JSON"),
        (Format::Scirex, "{\"words\": [\"a\"], \"ner\": [[0, -1, \"X\"]]}", "f:1: field `ner[0][1]`"),
        (Format::Scirex, "{\"words\": [\"a\"], \"sentences\": [[0, 5]], \"ner\": []}", "f:1: field `sentences[0]`"),
        (Format::Gliner, "[\n{\"tokenized_text\": [\"a\"], \"ner\": []},\n\n{\"tokenized_text\": [\"a\"],\n \"ner\": [[0, 1, \"X\"]]}]", "f:4: field `ner[0][1]`"),
        (Format::Conll(TagScheme::Bio), "a O\nb\n", "f:2: field `tag`"),
        (Format::Conll(TagScheme::Bio), "a O\nb Q-X\n", "f:2: field `tag`"),
        (Format::Jsonl, "{\"text\": \"é\", \"offset_unit\": \"byte\", \"entities\": [{\"start\": 0, \"end\": 1, \"label\": \"X\"}]}", "f:1: field `entities[0].end`"),
        (Format::Jsonl, "{\"text\": \"ab\", \"entities\": [{\"start\": 0, \"label\": \"X\"}]}", "f:1: field `entities[0].end`: missing"),
        (Format::Jsonl, "{\"text\": \"ab\", \"words\": [[0, 1], [0, 2]]}", "f:1: field `words[1]`"),
    ];
    for (fmt, input, want) in cases {
        let e = readers::read_bytes(fmt, "f", input.as_bytes()).unwrap_err().to_string();
        assert!(e.starts_with(want), "{fmt:?}: got {e:?}, want {want:?}");
    }
    let e = readers::read_bytes(Format::Sener, "f", b"{}\n\xff").unwrap_err().to_string();
    assert!(e.starts_with("f:2: invalid UTF-8"), "{e}");
    let e = brat::parse("x.ann", "abc", "T1\tX 0 9\tabc").unwrap_err().to_string();
    assert!(e.starts_with("x.ann:1: field `offsets`"), "{e}");
    let e = readers::read_path(Format::Sener, std::path::Path::new("/nonexistent/x.jsonl")).unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/x.jsonl: "), "{e}");
}

#[test]
fn format_names_parse_and_convert_any_to_any() {
    use sener_data::writers::OutputFormat;
    for n in Format::NAMES {
        n.parse::<Format>().unwrap();
    }
    for n in OutputFormat::NAMES {
        n.parse::<OutputFormat>().unwrap();
    }
    assert!("xml".parse::<Format>().unwrap_err().to_string().contains("known: sener"));
    // CoNLL → brat folder → brat reader: same text and entities.
    let r = readers::read_path("conll-bio".parse().unwrap(), &common::fixture("bio.conll")).unwrap();
    let out = std::env::temp_dir().join(format!("sener-data-conv-{}", std::process::id()));
    let rep = writers::write_path("brat".parse().unwrap(), &out, &r.documents).unwrap();
    assert!(rep.is_empty());
    let back = readers::read_path(Format::Brat, &out).unwrap();
    assert_eq!(back.documents.len(), 2);
    for (a, b) in r.documents.iter().zip(&back.documents) {
        assert_eq!((&a.text, &a.entities), (&b.text, &b.entities));
    }
    let _ = std::fs::remove_dir_all(&out);
}
