//! Entities with exact character offsets from raw text, documents of any length.
//!
//! ```no_run
//! # fn main() -> sener::Result<()> {
//! let mut ex = sener::extract::Extractor::load(std::path::Path::new("models/sener-minilm-scholarxl"))?;
//! let out = ex.extract("Jie Tang is a professor at Tsinghua University. His interests include data mining.")?;
//! for e in &out.entities {
//!     println!("{} [{}..{}) {:?} {:.2}", e.label, e.start, e.end, e.text, e.score);
//! }
//! # Ok(()) }
//! ```
//!
//! The text is split into words with the model's splitter (the convention of its training words,
//! `sener.json` `splitter`; each word keeps its character span), each word is
//! tokenized alone as the official code does, the document is cut into segments of at most the
//! model's maximum length (optionally overlapping), every segment runs through the model, spans
//! are decoded per segment and merged across segments, and word spans are mapped back to the
//! characters of the original text. Nothing is cut silently: the result says how many segments
//! were used.

use std::path::Path;
use std::sync::Mutex;

use candle_core::Device;
use sener_data::align::{align, SpecialTokens, WordTokenizer};
use sener_data::segment::{segment, Segment, SegmentConfig};
use sener_data::Document;

use crate::decode::{merge_segments, DecodeOptions, Threshold};
use crate::model::Sener;
use crate::{Error, Result};

/// One extracted entity.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Entity {
    pub label: String,
    /// Start, in Unicode code points of the input text.
    pub start: usize,
    /// End (exclusive), in code points.
    pub end: usize,
    /// Start and end in UTF-8 bytes.
    pub byte_start: usize,
    pub byte_end: usize,
    /// `text[start..end]` (code points).
    pub text: String,
    /// Symmetrised probability of the span and type.
    pub score: f32,
}

/// The result for one text.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Extraction {
    pub entities: Vec<Entity>,
    /// Words in the text, as the model's splitter cut them.
    pub words: usize,
    /// Model segments the text needed.
    pub segments: usize,
}

/// Options beside the model's own settings.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    pub decode: DecodeOptions,
    /// Segment length in tokens (default: the model's, 5120).
    pub max_len: Option<usize>,
    /// Subwords shared by consecutive segments (0: consecutive, as the official code).
    pub overlap: usize,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self { decode: DecodeOptions::default(), max_len: None, overlap: 0 }
    }
}

impl ExtractOptions {
    /// These options with a caller's per-request choices: `threshold` (one for every type)
    /// replaces the decoding threshold when given, and `flat` drops nested entities.
    pub fn overridden(&self, threshold: Option<f32>, flat: bool) -> Self {
        let mut o = self.clone();
        if let Some(t) = threshold {
            o.decode.threshold = Threshold::Global(t);
        }
        o.decode.allow_nested = !flat;
        o
    }
}

/// A loaded model plus its tokenizer, ready to extract. Extraction takes `&self`: several
/// threads may extract with one `Extractor` at once (the tokenizer's word cache is locked only
/// while a text is tokenized; the model runs unlocked).
pub struct Extractor {
    pub model: Sener,
    tokenizer: Mutex<WordTokenizer>,
    special: SpecialTokens,
    pub options: ExtractOptions,
}

impl Extractor {
    /// Loads a model folder on the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, &Device::Cpu)
    }

    /// Loads a model folder on `device`.
    pub fn load_on(dir: &Path, device: &Device) -> Result<Self> {
        let model = Sener::load(dir, device)?;
        let base = model.config.base_dir(dir);
        let tok = WordTokenizer::from_path(&base).map_err(|e| Error::Tokenizer { path: base.clone(), message: e.to_string() })?;
        let special = *tok.special();
        let mut options = ExtractOptions::default();
        options.decode.threshold = model.config.threshold();
        Ok(Self { model, tokenizer: Mutex::new(tok), special, options })
    }

    /// Entities of one text (empty or whitespace-only text gives none), with [`Self::options`].
    pub fn extract(&self, text: &str) -> Result<Extraction> {
        self.extract_with(text, &self.options)
    }

    /// The word spans of `doc` (which has words) predicted by the model, merged across segments:
    /// `(start, end_inclusive, label index, score)` per span.
    pub fn predict_words(&self, doc: &Document, options: &ExtractOptions) -> Result<Vec<crate::decode::Span>> {
        let (spans, _) = self.predict_spans(doc, options, &|| false).map_err(|e| match e {
            Error::Input(m) => Error::Input(format!("document {}: {m}", doc.id)),
            e => e,
        })?;
        Ok(spans)
    }

    /// The tokenizer's padding id (what [`Sener::predict_segment`] pads batches with).
    pub fn pad_id(&self) -> u32 {
        self.special.pad
    }

    /// Tokenizes `doc` (which has words) and cuts it into model segments, as extraction does.
    pub fn segments_of(&self, doc: &Document, options: &ExtractOptions) -> Result<Vec<Segment>> {
        let al = {
            let mut tok = self.tokenizer.lock().map_err(|_| Error::Input("the tokenizer lock is poisoned".into()))?;
            align(doc, &mut tok).map_err(|e| Error::Input(e.to_string()))?
        };
        let max_len = options.max_len.unwrap_or(self.model.config.max_len);
        let cfg = SegmentConfig { max_len, overlap: options.overlap };
        Ok(segment(doc, &al, &[], &self.special, &cfg).map_err(|e| Error::Input(e.to_string()))?.segments)
    }

    /// Tokenizes and segments `doc` (which has words), runs the model on its segments (asking
    /// `cancelled` before every forward pass) and merges the segments' spans; returns them and
    /// the number of segments.
    fn predict_spans(&self, doc: &Document, options: &ExtractOptions, cancelled: &dyn Fn() -> bool) -> Result<(Vec<crate::decode::Span>, usize)> {
        let segments = self.segments_of(doc, options)?;
        let refs: Vec<&Segment> = segments.iter().collect();
        let spans = self.model.predict_batch(&refs, self.special.pad, &options.decode, cancelled)?;
        let per_segment: Vec<(usize, Vec<crate::decode::Span>)> = segments.iter().map(|s| s.word_offset).zip(spans).collect();
        Ok((merge_segments(&per_segment), segments.len()))
    }

    /// [`Self::extract`] with other options (threshold, flat output, segment length).
    pub fn extract_with(&self, text: &str, options: &ExtractOptions) -> Result<Extraction> {
        self.extract_until(text, options, &|| false)
    }

    /// `text` as a document cut into words with the model's splitter, as extraction does.
    pub fn document(&self, text: &str) -> Document {
        let mut doc = Document::new("input", text);
        doc.segment_words(self.model.config.splitter);
        doc
    }

    /// [`Self::extract_with`] that asks `cancelled` before the text is tokenized and before
    /// every forward pass, and stops with [`Error::Cancelled`] once it says yes: a server drops
    /// the work of a client that has gone or whose deadline has passed, instead of finishing it.
    pub fn extract_until(&self, text: &str, options: &ExtractOptions, cancelled: &dyn Fn() -> bool) -> Result<Extraction> {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let doc = self.document(text);
        if doc.word_count() == 0 {
            return Ok(Extraction { entities: Vec::new(), words: 0, segments: 0 });
        }
        let (spans, segments) = self.predict_spans(&doc, options, cancelled)?;
        self.extraction(text, &doc, spans, segments)
    }

    /// The entities of merged word spans, in characters of `text` (which `doc` was cut from),
    /// sorted by position.
    fn extraction(&self, text: &str, doc: &Document, spans: Vec<crate::decode::Span>, segments: usize) -> Result<Extraction> {
        let words = doc.word_count();
        let offsets = doc.offsets();
        let mut entities = Vec::new();
        for sp in spans {
            let span = doc
                .word_range_chars(sp.start, sp.end + 1)
                .ok_or_else(|| Error::Input(format!("span {}..{} outside the {words} words", sp.start, sp.end + 1)))?;
            let (start, end) = (span.start, span.end);
            let byte_start = offsets.char_to_byte(start).unwrap_or(text.len());
            let byte_end = offsets.char_to_byte(end).unwrap_or(text.len());
            entities.push(Entity {
                label: self.model.config.labels[sp.label].clone(),
                start,
                end,
                byte_start,
                byte_end,
                text: text[byte_start..byte_end].to_string(),
                score: sp.score,
            });
        }
        entities.sort_by(|a, b| (a.start, a.end, &a.label).cmp(&(b.start, b.end, &b.label)));
        Ok(Extraction { entities, words, segments })
    }

    /// Entities of several texts, in input order, with [`Self::options`].
    pub fn extract_batch(&self, texts: &[&str]) -> Result<Vec<Extraction>> {
        self.extract_batch_until(texts, &self.options, &|| false)
    }

    /// Entities of several texts, in input order: the segments of all of them are packed into
    /// shared forward passes ([`Sener::predict_batch`]), so many short texts cost about what one
    /// long text of the same words costs; each text gets exactly the entities it gets alone.
    /// `cancelled` is asked before every pass; once it says yes the whole call stops with
    /// [`Error::Cancelled`].
    pub fn extract_batch_until(&self, texts: &[&str], options: &ExtractOptions, cancelled: &dyn Fn() -> bool) -> Result<Vec<Extraction>> {
        let docs: Vec<Document> = texts.iter().map(|t| self.document(t)).collect();
        let mut segments: Vec<Vec<Segment>> = Vec::with_capacity(docs.len());
        for d in &docs {
            segments.push(if d.word_count() == 0 { Vec::new() } else { self.segments_of(d, options)? });
        }
        let refs: Vec<&Segment> = segments.iter().flatten().collect();
        let mut spans = self.model.predict_batch(&refs, self.special.pad, &options.decode, cancelled)?.into_iter();
        let mut out = Vec::with_capacity(texts.len());
        for ((text, doc), segs) in texts.iter().zip(&docs).zip(&segments) {
            let per_segment: Vec<(usize, Vec<crate::decode::Span>)> = segs.iter().map(|s| (s.word_offset, spans.next().unwrap_or_default())).collect();
            out.push(self.extraction(text, doc, merge_segments(&per_segment), segs.len())?);
        }
        Ok(out)
    }

    /// This model's predictions for annotated documents, one list per document, as
    /// `(start, end_inclusive, label)`: with `raw` (or when a document has no words) extracted
    /// from each document's text as raw text ([`Self::extract_with`], the model's splitter) in
    /// characters, otherwise from the documents' own words, in words. Returns whether characters
    /// are the unit (then for every document).
    pub fn predict_documents(&self, docs: &[Document], raw: bool, options: &ExtractOptions) -> Result<(Vec<crate::metric::Spans>, bool)> {
        let chars = raw || docs.iter().any(|d| d.words.is_none());
        let labels = &self.model.config.labels;
        let mut out = Vec::with_capacity(docs.len());
        for d in docs {
            out.push(if chars {
                self.extract_with(&d.text, options)?.entities.into_iter().map(|e| (e.start, e.end - 1, e.label)).collect()
            } else {
                self.predict_words(d, options)?.iter().map(|s| (s.start, s.end, labels[s.label].clone())).collect()
            });
        }
        Ok((out, chars))
    }

    /// The official metric of this model on annotated documents (spec §7), as `sener eval`
    /// computes it ([`Self::predict_documents`] scored by [`crate::metric::score_documents`]).
    /// Returns the metric and whether characters were the unit.
    pub fn evaluate(&self, docs: &[Document], raw: bool, options: &ExtractOptions) -> Result<(crate::metric::MetricResult, bool)> {
        let (preds, chars) = self.predict_documents(docs, raw, options)?;
        let m = crate::metric::score_documents(docs, &preds, chars, self.model.span.config.window).map_err(Error::Input)?;
        Ok((m, chars))
    }
}
