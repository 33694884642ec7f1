//! Raw text as users have it: the model's word splitter, natural text rebuilt from word lists
//! (`convert --detokenize`), and `eval` on character-offset predictions (what `extract` writes),
//! checked against hand-worked examples and against each other.

use std::path::{Path, PathBuf};

mod common;
use common::{data, sener, tiny_model};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sener-raw-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn set_splitter(model: &Path, splitter: &str) {
    let p = model.join("sener.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["splitter"] = serde_json::Value::String(splitter.into());
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

fn extract_json(model: &Path, file: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["extract", "--model", model.to_str().unwrap(), file.to_str().unwrap()];
    args.extend(extra);
    let o = sener(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The splitter recorded in `sener.json` is the one extraction uses: the same text gives the
/// Treebank words (punctuation and clitics apart) or whitespace words; a folder without the
/// field splits at whitespace.
#[test]
fn extraction_uses_the_models_recorded_splitter() {
    let dir = tmp("splitter");
    let model = tiny_model(&dir);
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("sener.json")).unwrap()).unwrap();
    assert_eq!(cfg["splitter"], "whitespace", "import-official without --task records whitespace");
    let doc = dir.join("doc.txt");
    std::fs::write(&doc, "Dr. Mayor's lab (NCBS), Bangalore.").unwrap();
    assert_eq!(extract_json(&model, &doc, &[])["words"], 5);
    set_splitter(&model, "treebank");
    // Dr. | Mayor | 's | lab | ( | NCBS | ) | , | Bangalore | .
    assert_eq!(extract_json(&model, &doc, &[])["words"], 10);
    set_splitter(&model, "punct");
    // Dr | . | Mayor | ' | s | lab | ( | NCBS | ) | , | Bangalore | .
    assert_eq!(extract_json(&model, &doc, &[])["words"], 12);
    set_splitter(&model, "spaces");
    let o = sener(&["extract", "--model", model.to_str().unwrap(), doc.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown variant `spaces`"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(dir).ok();
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn eval_json(args: &[&str]) -> (std::process::Output, Option<serde_json::Value>) {
    let json = std::env::temp_dir().join(format!("sener-raw-eval-{}-{}.json", std::process::id(), args.len()));
    let mut a: Vec<&str> = args.to_vec();
    let js = json.display().to_string();
    a.extend(["--json", &js]);
    let o = sener(&a);
    let v = std::fs::read_to_string(&json).ok().map(|t| serde_json::from_str(&t).unwrap());
    std::fs::remove_file(&json).ok();
    (o, v)
}

/// `eval --pred` on character spans, worked by hand: exact matches only (a span one character
/// off is wrong), duplicates counted once, labels the gold lacks reported, lengths bucketed in
/// words, macro = mean over gold types.
#[test]
fn eval_scores_character_predictions_by_hand() {
    let dir = tmp("chars");
    // doc a: "Ada Lovelace, born in London." gold: person 0..12, place 22..28
    // doc b: "Tsinghua University (Beijing)" gold: org 0..19, place 21..28
    let gold = write(
        &dir,
        "gold.jsonl",
        "{\"id\": \"a\", \"text\": \"Ada Lovelace, born in London.\", \"entities\": [{\"start\": 0, \"end\": 12, \"label\": \"person\"}, {\"start\": 22, \"end\": 28, \"label\": \"place\"}]}\n\
         {\"id\": \"b\", \"text\": \"Tsinghua University (Beijing)\", \"entities\": [{\"start\": 0, \"end\": 19, \"label\": \"org\"}, {\"start\": 21, \"end\": 28, \"label\": \"place\"}]}\n",
    );
    let pred = write(
        &dir,
        "pred.jsonl",
        "{\"id\": \"b\", \"entities\": [{\"start\": 0, \"end\": 19, \"label\": \"org\", \"text\": \"Tsinghua University\"}, {\"start\": 20, \"end\": 29, \"label\": \"place\"}]}\n\
         {\"id\": \"a\", \"entities\": [{\"start\": 0, \"end\": 12, \"label\": \"person\"}, {\"start\": 0, \"end\": 12, \"label\": \"person\"}, {\"start\": 22, \"end\": 28, \"label\": \"city\"}]}\n",
    );
    let (o, r) = eval_json(&["eval", "--format", "jsonl", "--data", gold.to_str().unwrap(), "--pred", pred.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = r.unwrap();
    assert_eq!(r["unit"], "char");
    // gold 4; pred {a: person, city; b: org, place(20..29)} = 4; correct: person, org = 2
    let m = &r["micro"];
    assert_eq!((m["gold"].as_u64(), m["pred"].as_u64(), m["tp"].as_u64()), (Some(4), Some(4), Some(2)));
    assert!((m["f1"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    // macro over gold types person (1.0), org (1.0), place (0.0)
    assert!((r["macro"]["f1"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12, "{}", r["macro"]);
    assert_eq!(r["unknown_labels"]["city"], 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("label `city`, which the gold data does not have"));
    // lengths in words: "Ada Lovelace," is 2 whitespace words, "Tsinghua University" 2, places 1
    let bucket = |name: &str| r["by_length"].as_array().unwrap().iter().find(|b| b["bucket"] == name).unwrap()["prf"].clone();
    assert_eq!((bucket("1")["gold"].as_u64(), bucket("2-3")["gold"].as_u64()), (Some(2), Some(2)));

    // Errors name the file, the line and the field.
    let cases = [
        ("{\"id\": \"a\", \"entities\": [{\"start\": 20, \"end\": 40, \"label\": \"x\"}]}\n", "pred.jsonl:1: field `entities[0]`: span 20..40 is past the end of document a (29 characters)"),
        ("{\"id\": \"a\", \"entities\": [{\"start\": 0, \"end\": 3, \"label\": \"person\", \"text\": \"Bob\"}]}\n", "field `entities[0].text` is \"Bob\" but the gold document a has \"Ada\""),
        ("{\"id\": \"zzz\", \"entities\": []}\n{\"id\": \"a\", \"entities\": []}\n{\"id\": \"b\", \"entities\": []}\n", "predictions for 1 document(s) not in"),
        ("{\"id\": \"a\", \"entities\": []}\n{\"id\": \"a\", \"entities\": []}\n", "pred.jsonl:2: field `id`: document a appears twice"),
        ("{\"id\": \"a\", \"entities\": []}\n{\"doc_id\": \"b\", \"entity\": []}\n", "pred.jsonl:2: mixes word-span lines"),
        ("{\"id\": \"a\", \"entities\": []}\n", "no predictions for 1 of the 2 gold documents (e.g. b); give --allow-missing"),
    ];
    for (text, want) in cases {
        write(&dir, "pred.jsonl", text);
        let o = sener(&["eval", "--format", "jsonl", "--data", gold.to_str().unwrap(), "--pred", pred.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{text}: {err}");
    }
    // --allow-missing scores the missing document as predicting nothing, and says so.
    let (o, r) = eval_json(&["eval", "--format", "jsonl", "--data", gold.to_str().unwrap(), "--pred", pred.to_str().unwrap(), "--allow-missing"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = r.unwrap();
    assert_eq!(r["missing_documents"], serde_json::json!(["b"]));
    assert_eq!((r["micro"]["gold"].as_u64(), r["micro"]["pred"].as_u64()), (Some(4), Some(0)));
    std::fs::remove_dir_all(dir).ok();
}

/// What `extract` writes is what `eval --pred` reads: extraction from the gold texts scored
/// through the file equals `eval --model --raw` on the same data (two code paths, one result),
/// and every predicted span is counted.
#[test]
fn extract_output_scores_like_eval_on_raw_text() {
    let dir = tmp("roundtrip");
    let model = tiny_model(&dir);
    set_splitter(&model, "treebank");
    // A SeNER word list, turned into natural text with the same words.
    let words = ["Ada", "Lovelace", "(", "1815", ")", ",", "Mayor", "'s", "lab", "in", "Bangalore", ".", "Dr.", "Ng", "says", "so", "."];
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    let gold = write(
        &dir,
        "gold.jsonl",
        &format!("{{\"doc_id\": \"d1\", \"text\": [{}], \"entity\": [[0, 2, [\"Ada\", \"Lovelace\"], \"a\"], [6, 9, [\"Mayor\", \"'s\", \"lab\"], \"b\"], [10, 11, [\"Bangalore\"], \"c\"]]}}\n", quoted.join(", ")),
    );
    let natural = dir.join("natural.jsonl");
    let o = sener(&["convert", "--from", "sener", "--to", "jsonl", "--detokenize", gold.to_str().unwrap(), natural.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&natural).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(doc["text"], "Ada Lovelace (1815), Mayor's lab in Bangalore. Dr. Ng says so.");
    let text: Vec<char> = doc["text"].as_str().unwrap().chars().collect();
    let ents: Vec<String> = doc["entities"].as_array().unwrap().iter().map(|e| text[e["start"].as_u64().unwrap() as usize..e["end"].as_u64().unwrap() as usize].iter().collect()).collect();
    assert_eq!(ents, ["Ada Lovelace", "Mayor's lab", "Bangalore"]);

    // Extract at a low threshold so the random tiny model predicts many spans.
    let o = sener(&["extract", "--model", model.to_str().unwrap(), "--format", "jsonl", "--threshold", "0.3", natural.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = write(&dir, "extracted.jsonl", &String::from_utf8_lossy(&o.stdout));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["id"], "d1");
    assert_eq!(line["words"], words.len(), "the treebank splitter finds the corpus's own words in the natural text");
    let n_pred = line["entities"].as_array().unwrap().len() as u64;
    assert!(n_pred > 0);
    let nat = natural.to_str().unwrap();
    let (o1, via_file) = eval_json(&["eval", "--format", "jsonl", "--data", nat, "--pred", out.to_str().unwrap()]);
    assert!(o1.status.success(), "{}", String::from_utf8_lossy(&o1.stderr));
    let (o2, direct) = eval_json(&["eval", "--format", "jsonl", "--data", nat, "--model", model.to_str().unwrap(), "--threshold", "0.3"]);
    assert!(o2.status.success(), "{}", String::from_utf8_lossy(&o2.stderr));
    let (via_file, direct) = (via_file.unwrap(), direct.unwrap());
    assert_eq!(via_file["micro"]["pred"].as_u64(), Some(n_pred));
    assert_eq!(via_file["micro"], direct["micro"]);
    assert_eq!(via_file["per_type"], direct["per_type"]);
    // On the word list itself (`--raw` off), the model runs on the given words: with the splitter
    // reproducing them, the same spans come out.
    let (o3, words_r) = eval_json(&["eval", "--data", gold.to_str().unwrap(), "--model", model.to_str().unwrap(), "--threshold", "0.3"]);
    assert!(o3.status.success(), "{}", String::from_utf8_lossy(&o3.stderr));
    let words_r = words_r.unwrap();
    assert_eq!(words_r["unit"], "word");
    assert_eq!((words_r["micro"]["pred"].clone(), words_r["micro"]["tp"].clone()), (direct["micro"]["pred"].clone(), direct["micro"]["tp"].clone()));
    std::fs::remove_dir_all(dir).ok();
}

/// On the released data, the splitter that `sener train --splitter auto` would pick reproduces
/// each corpus's words on its natural text: treebank for Scholar-XL, punct for Profiling-07.
#[test]
fn splitter_agreement_on_the_shared_data() {
    for (file, format, best, max_per_1000) in [("scholar-xl/test.jsonl", "sener", "treebank", 10.0), ("profiling-07/dev.jsonl", "sener", "punct", 0.5)] {
        let Some(path) = data(file) else { return };
        let o = sener(&["stats", "--format", format, "--splitters", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = String::from_utf8_lossy(&o.stdout);
        let row = out.lines().find(|l| l.contains("(best)")).unwrap_or_else(|| panic!("{out}"));
        assert!(row.starts_with(&format!("| {best} (best)")), "{file}: {row}");
        let per_1000: f64 = row.split('|').nth(5).unwrap().trim().parse().unwrap();
        assert!(per_1000 <= max_per_1000, "{file}: {row}");
    }
}
