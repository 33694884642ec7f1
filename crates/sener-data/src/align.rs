//! Subword alignment: subword → word → character, exact on any Unicode text.
//!
//! As in the official SeNER code, every word is tokenized **alone**, without special tokens and
//! without a prefix space ([`WordTokenizer::encode_word`], cached per word string). The subwords
//! of the words are concatenated; subword `k` belongs to word `word_index[k]` and covers the
//! document characters `char_spans[k]` (code points), computed from the tokenizer's offsets inside
//! the word plus the word's own span. A word may produce no subwords (e.g. a zero-width character
//! that the normalizer removes); such words are counted as [`Issue::WordWithoutSubwords`] and, as
//! in the official code, simply have no subwords.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::Tokenizer;

use crate::document::{Document, Span};
use crate::error::{DataError, Result};
use crate::report::{Issue, Report};

/// One subword of a word: its id and its character span inside the word (code points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Token id.
    pub id: u32,
    /// First character inside the word.
    pub start: usize,
    /// One past the last character inside the word.
    pub end: usize,
}

/// Ids of the special tokens used to build model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Sequence start (`[CLS]`; DeBERTa's bos).
    pub cls: u32,
    /// Sequence end (`[SEP]`; DeBERTa's eos).
    pub sep: u32,
    /// Padding.
    pub pad: u32,
    /// `[MASK]`, for whole-word masking.
    pub mask: Option<u32>,
    /// Unknown token.
    pub unk: Option<u32>,
}

/// A `tokenizer.json` tokenizer that encodes single words, caching the result per word string.
pub struct WordTokenizer {
    tokenizer: Tokenizer,
    special: SpecialTokens,
    cache: HashMap<String, Vec<Piece>>,
    name: String,
}

impl std::fmt::Debug for WordTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordTokenizer").field("name", &self.name).field("special", &self.special).field("cached_words", &self.cache.len()).finish()
    }
}

impl WordTokenizer {
    /// Loads a `tokenizer.json` file. Truncation and padding configured in the file are switched
    /// off (they would cut long words). Special tokens are looked up by name: `[CLS]`/`<s>`,
    /// `[SEP]`/`</s>`, `[PAD]`/`<pad>`, `[MASK]`/`<mask>`, `[UNK]`/`<unk>`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let tok = Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer { path: name.clone(), message: e.to_string() })?;
        Self::from_tokenizer(tok, &name)
    }

    /// Loads a SentencePiece `spm.model` as DeBERTa-v3's fast tokenizer does (see [`crate::spm`]).
    pub fn from_spm(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let model = crate::spm::SpmModel::from_file(path)?;
        let tok = crate::spm::deberta_v3_tokenizer(&model, &crate::spm::DebertaSpmOptions::default(), &name)?;
        Self::from_tokenizer(tok, &name)
    }

    /// A model folder's tokenizer (`tokenizer.json`, else `spm.model`), or a tokenizer file itself
    /// (`*.json` as tokenizer.json, anything else as spm.model).
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_file() {
            return if path.extension().is_some_and(|e| e == "json") { Self::from_file(path) } else { Self::from_spm(path) };
        }
        let json = path.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json);
        }
        let spm = path.join("spm.model");
        if spm.is_file() {
            return Self::from_spm(&spm);
        }
        Err(DataError::Tokenizer { path: path.display().to_string(), message: "no tokenizer.json or spm.model here".into() })
    }

    /// Wraps an already loaded tokenizer (`name` is used in errors).
    pub fn from_tokenizer(mut tokenizer: Tokenizer, name: &str) -> Result<Self> {
        tokenizer
            .with_truncation(None)
            .map_err(|e| DataError::Tokenizer { path: name.to_string(), message: e.to_string() })?;
        tokenizer.with_padding(None);
        let find = |names: &[&str]| names.iter().find_map(|n| tokenizer.token_to_id(n));
        let need = |names: &[&str], what: &str| {
            find(names).ok_or_else(|| DataError::Tokenizer { path: name.to_string(), message: format!("no {what} token (looked for {names:?})") })
        };
        let special = SpecialTokens {
            cls: need(&["[CLS]", "<s>"], "CLS")?,
            sep: need(&["[SEP]", "</s>"], "SEP")?,
            pad: need(&["[PAD]", "<pad>"], "PAD")?,
            mask: find(&["[MASK]", "<mask>"]),
            unk: find(&["[UNK]", "<unk>"]),
        };
        Ok(WordTokenizer { tokenizer, special, cache: HashMap::new(), name: name.to_string() })
    }

    /// Replaces the special-token ids.
    pub fn with_special(mut self, special: SpecialTokens) -> Self {
        self.special = special;
        self
    }

    /// The special-token ids.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Vocabulary size including added tokens (Python's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The wrapped tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes one word alone (no special tokens); the pieces' spans are code points inside the
    /// word, clamped to it and non-decreasing.
    pub fn encode_word(&mut self, word: &str) -> Result<&[Piece]> {
        if !self.cache.contains_key(word) {
            let pieces = self.encode_uncached(word)?;
            self.cache.insert(word.to_string(), pieces);
        }
        Ok(self.cache.get(word).map(Vec::as_slice).unwrap_or(&[]))
    }

    fn encode_uncached(&self, word: &str) -> Result<Vec<Piece>> {
        let enc = encode_guarded(&self.tokenizer, word)
            .map_err(|e| DataError::Tokenizer { path: self.name.clone(), message: format!("encoding {word:?}: {e}") })?;
        let n = word.chars().count();
        let mut prev = 0usize;
        let mut out = Vec::with_capacity(enc.get_ids().len());
        for (&id, &(s, e)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            let s = s.clamp(prev, n);
            let e = e.clamp(s, n);
            prev = s;
            out.push(Piece { id, start: s, end: e });
        }
        Ok(out)
    }
}

/// Encodes `text` without special tokens, turning a panic inside the tokenizer (a corrupt
/// SentencePiece charsmap makes `spm_precompiled` index out of bounds) into an error.
pub(crate) fn encode_guarded(tok: &Tokenizer, text: &str) -> std::result::Result<tokenizers::Encoding, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tok.encode_char_offsets(text, false))) {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the tokenizer panicked (corrupt tokenizer file?)".to_string()),
    }
}

/// A document's subwords, each with its word and its character span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alignment {
    /// Subword ids of the whole document (no special tokens).
    pub ids: Vec<u32>,
    /// The 0-based word of each subword.
    pub word_index: Vec<usize>,
    /// The document character span (code points) of each subword.
    pub char_spans: Vec<Span>,
    /// The subword index range of each word (empty for a word without subwords).
    pub word_subwords: Vec<Span>,
    /// Words without subwords, counted.
    pub report: Report,
}

impl Alignment {
    /// Number of subwords.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no subwords.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The official `indexes` for the unsegmented document: subword of word m → m+1.
    pub fn indexes(&self) -> Vec<u32> {
        self.word_index.iter().map(|&m| (m + 1) as u32).collect()
    }

    /// The subwords' spans as UTF-8 byte offsets of the document text (`map` built from it);
    /// `None` if a span lies outside the text.
    pub fn byte_spans(&self, map: &crate::document::OffsetMap) -> Option<Vec<Span>> {
        self.char_spans.iter().map(|s| Some(Span::new(map.char_to_byte(s.start)?, map.char_to_byte(s.end)?))).collect()
    }

    /// The subword covering document character `c`, if any (first one when pieces share it).
    pub fn char_to_subword(&self, c: usize) -> Option<usize> {
        let k = self.char_spans.partition_point(|s| s.end <= c);
        (k < self.char_spans.len() && self.char_spans[k].start <= c).then_some(k)
    }
}

/// Aligns a document with a per-word encoder (`encode` returns the pieces of one word). Errors
/// when the document has no words or their spans are outside the text.
pub fn align_with(doc: &Document, mut encode: impl FnMut(&str) -> Result<Vec<Piece>>) -> Result<Alignment> {
    let spans = doc.words.as_ref().ok_or_else(|| DataError::document(&doc.id, "document has no words"))?;
    let words = doc.word_strs().ok_or_else(|| DataError::document(&doc.id, "word spans outside the text"))?;
    let mut a = Alignment { ids: Vec::new(), word_index: Vec::new(), char_spans: Vec::new(), word_subwords: Vec::with_capacity(words.len()), report: Report::new() };
    for (m, (w, span)) in words.iter().zip(spans).enumerate() {
        let pieces = encode(w)?;
        let first = a.ids.len();
        let n = span.len();
        for p in &pieces {
            a.ids.push(p.id);
            a.word_index.push(m);
            let s = p.start.min(n);
            let e = p.end.clamp(s, n);
            a.char_spans.push(Span::new(span.start + s, span.start + e));
        }
        if pieces.is_empty() {
            a.report.note(Issue::WordWithoutSubwords, || format!("{} word {m} ({w:?})", doc.id));
        }
        a.word_subwords.push(Span::new(first, a.ids.len()));
    }
    Ok(a)
}

/// Aligns a document with a [`WordTokenizer`].
pub fn align(doc: &Document, tok: &mut WordTokenizer) -> Result<Alignment> {
    align_with(doc, |w| tok.encode_word(w).map(<[Piece]>::to_vec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One piece per character.
    fn chars(w: &str) -> Result<Vec<Piece>> {
        Ok(w.chars().enumerate().map(|(i, c)| Piece { id: c as u32, start: i, end: i + 1 }).collect())
    }

    #[test]
    fn char_level_alignment_is_exact() {
        let d = Document::from_words("d", &["e\u{301}a", "", "日本", "👍🏽"]);
        let a = align_with(&d, chars).unwrap();
        assert_eq!(a.report.count(Issue::WordWithoutSubwords), 1);
        assert_eq!(a.word_subwords[1], Span::new(3, 3));
        for k in 0..a.len() {
            let s = a.char_spans[k];
            let c = d.slice_chars(s.start, s.end).unwrap().chars().next().unwrap();
            assert_eq!(c as u32, a.ids[k]);
            assert_eq!(a.char_to_subword(s.start), Some(k));
        }
        assert_eq!(a.indexes(), vec![1, 1, 1, 3, 3, 4, 4]);
        let bytes = a.byte_spans(&d.offsets()).unwrap();
        assert_eq!(&d.text[bytes[3].start..bytes[4].end], "日本");
    }
}
