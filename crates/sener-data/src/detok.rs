//! Pre-split words → natural text, keeping every word and entity exact.
//!
//! NER corpora give their documents as word lists (`His major is Ceramics , Glass ( 1985 ) .`);
//! users feed raw text (`His major is Ceramics, Glass (1985).`). [`detokenize`] rebuilds a
//! natural-looking text from the words with the common detokenizer rules (those of the Moses
//! and Treebank detokenizers, for English): no space before closing punctuation
//! (`, . ; : ! ? % ) ] }`, closing quotes, `...`) and clitics (`'s`, `n't`, …), none after opening
//! brackets and quotes, straight double quotes paired open/close, and `' s` after a word joined
//! into `'s`. Words keep their characters; hyphens, slashes and dashes keep their spaces (whether
//! the source had `multi-scale` or `multi - scale` cannot be known). The result has the same
//! words with their new character spans, and the entities on the same words.
//!
//! It serves to measure what raw text does to a model: extraction from the natural text against
//! extraction from the space-joined words, and how well each [`crate::split::Splitter`]
//! reproduces a corpus's words ([`crate::split::agreement`]).

use crate::document::{Document, Entity, Span};
use crate::error::{DataError, Result};

/// How a word attaches to its neighbours.
fn no_space_before(w: &str) -> bool {
    matches!(w, "," | "." | ";" | ":" | "!" | "?" | "%" | ")" | "]" | "}" | "''" | "”" | "’" | "..." | ".." | "»")
        || is_clitic(w)
}

fn no_space_after(w: &str) -> bool {
    matches!(w, "(" | "[" | "{" | "``" | "“" | "‘" | "«")
}

fn is_clitic(w: &str) -> bool {
    let lower = w.to_lowercase();
    let rest = lower.strip_prefix('\'').or_else(|| lower.strip_prefix('’'));
    matches!(rest, Some("s" | "m" | "d" | "ll" | "re" | "ve")) || lower == "n't" || lower == "n’t"
}

/// The natural text of a document that has words (see the module docs). Entities must be
/// word-aligned (they are when the document was read from a word-list format); the document id
/// is kept, sentences are dropped.
pub fn detokenize(doc: &Document) -> Result<Document> {
    let words = doc.word_strs().ok_or_else(|| DataError::document(&doc.id, "document has no words to detokenize"))?;
    let (word_entities, report) = doc.word_entities()?;
    if !report.is_empty() {
        return Err(DataError::document(&doc.id, "an entity does not start and end on word boundaries; it cannot be carried to the detokenized text"));
    }
    let mut text = String::with_capacity(doc.text.len());
    let mut spans = Vec::with_capacity(words.len());
    let mut pos = 0usize;
    let mut open_double_quote = false;
    let mut glue_next = true; // no space before the first word
    for (i, w) in words.iter().enumerate() {
        let mut space = !glue_next && !no_space_before(w);
        let mut glue_after = no_space_after(w);
        if *w == "\"" {
            if open_double_quote {
                space = false;
            } else {
                glue_after = true;
            }
            open_double_quote = !open_double_quote;
        }
        // `Zhang ' s` → `Zhang's`: a lone apostrophe between a word and a clitic letter.
        if (*w == "'" || *w == "’") && i > 0 && words.get(i + 1).is_some_and(|n| matches!(*n, "s" | "S" | "t" | "m" | "d" | "ll" | "re" | "ve")) && words[i - 1].chars().last().is_some_and(|c| c.is_alphanumeric()) {
            space = false;
            glue_after = true;
        }
        if w.is_empty() {
            space = false;
        }
        if space {
            text.push(' ');
            pos += 1;
        }
        let n = w.chars().count();
        text.push_str(w);
        spans.push(Span::new(pos, pos + n));
        pos += n;
        glue_next = glue_after;
    }
    let mut out = Document { id: doc.id.clone(), text, entities: Vec::with_capacity(doc.entities.len()), words: Some(spans), sentences: None };
    for e in &word_entities {
        let span = out.word_range_chars(e.start, e.end).ok_or_else(|| DataError::document(&doc.id, format!("entity on words {}..{} is outside the words", e.start, e.end)))?;
        out.entities.push(Entity { start: span.start, end: span.end, label: e.label.clone(), score: e.score });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_text_keeps_words_and_entities() {
        let words = ["Jitu", "Mayor", "'s", "lab", "(", "NCBS", ")", ",", "``", "Bangalore", "''", "said", "\"", "x", "y", "\"", ".", "Zhang", "'", "s", "done", "do", "n't", "-", "z"];
        let mut d = Document::from_words("d", &words);
        d.push_word_entity(0, 2, "name", None).unwrap();
        d.push_word_entity(4, 7, "org", None).unwrap();
        d.push_word_entity(17, 20, "who", None).unwrap();
        let n = detokenize(&d).unwrap();
        assert_eq!(n.text, "Jitu Mayor's lab (NCBS), ``Bangalore'' said \"x y\". Zhang's done don't - z");
        assert_eq!(n.word_strs().unwrap(), words.to_vec());
        let texts: Vec<&str> = n.entities.iter().map(|e| n.entity_text(e).unwrap()).collect();
        assert_eq!(texts, ["Jitu Mayor", "(NCBS)", "Zhang's"]);
        n.validate().unwrap();
    }
}
