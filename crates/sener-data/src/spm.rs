//! SentencePiece `spm.model` files, as DeBERTa-v3 checkpoints ship them.
//!
//! [`SpmModel::parse`] decodes the `ModelProto` protobuf (pieces with scores and types, the
//! trainer's model type and unk id, the normalizer's precompiled character map) with a small
//! protobuf reader; [`deberta_v3_tokenizer`] builds the same `tokenizers` pipeline that
//! transformers' `DebertaV2Converter` builds for `DebertaV2TokenizerFast` (the tokenizer the
//! official SeNER code loads):
//!
//! - model: Unigram over the pieces and scores, unk = the trainer's `unk_id`;
//! - normalizer: (Lowercase if `do_lower_case`), Strip both sides, the precompiled charsmap
//!   (when present), then runs of 2+ spaces → one space;
//! - pre-tokenizer: (Punctuation isolated if `split_by_punct`), Metaspace `▁` prepended always;
//! - decoder: Metaspace;
//! - added tokens: CONTROL and USER_DEFINED pieces, then the special tokens `[CLS]`, `[SEP]`,
//!   `[UNK]`, `[PAD]`, `[MASK]` (`[MASK]` is new and gets the next id: 128000 for DeBERTa-v3).
//!
//! A corrupt precompiled charsmap makes the `spm_precompiled` crate panic while normalizing;
//! [`deberta_v3_tokenizer`] probes the built tokenizer once and [`crate::align::WordTokenizer`]
//! turns such panics into errors.
//!
//! Known difference with the `sentencepiece` library itself (kept, since the fast tokenizer is
//! what the official code runs): a text that normalizes to nothing, such as a lone U+200B, gives
//! `[▁]` here and in transformers but no piece in `sentencepiece`.

use std::path::Path;

use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Lowercase, Precompiled, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::error::{DataError, Result};

/// The type of a SentencePiece piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece.
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol (`[CLS]`, `[SEP]`, `[PAD]`...).
    Control,
    /// A user-defined symbol.
    UserDefined,
    /// Unused.
    Unused,
    /// A byte-fallback piece.
    Byte,
}

/// One piece of the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmPiece {
    /// The piece text (with `▁` for spaces).
    pub piece: String,
    /// Its log-probability.
    pub score: f32,
    /// Its type.
    pub kind: PieceType,
}

/// The parts of a SentencePiece `ModelProto` that tokenization needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// The vocabulary, in id order.
    pub pieces: Vec<SpmPiece>,
    /// 1 = Unigram, 2 = BPE, 3 = word, 4 = char.
    pub model_type: u64,
    /// Id of the unknown piece.
    pub unk_id: usize,
    /// Whether unknown characters fall back to byte pieces.
    pub byte_fallback: bool,
    /// The normalizer's name (e.g. `nmt_nfkc`).
    pub normalizer_name: String,
    /// The normalizer's precompiled character map (may be empty).
    pub precompiled_charsmap: Vec<u8>,
    /// Whether a `▁` is prepended.
    pub add_dummy_prefix: bool,
}

/// A minimal protobuf reader over one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    name: &'a str,
}

enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Other,
}

impl<'a> Reader<'a> {
    fn err(&self, m: impl Into<String>) -> DataError {
        DataError::Tokenizer { path: self.name.to_string(), message: format!("invalid spm.model at byte {}: {}", self.pos, m.into()) }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or_else(|| self.err("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| self.err("truncated field"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        let v = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| self.err("length too large"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(self.err(format!("unsupported wire type {w}"))),
        };
        Ok(Some((field, v)))
    }
}

fn text(name: &str, b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| DataError::Tokenizer { path: name.to_string(), message: "invalid spm.model: a string is not UTF-8".into() })
}

impl SpmModel {
    /// Reads an `spm.model` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::parse(&path.display().to_string(), &bytes)
    }

    /// Parses `ModelProto` bytes (`name` is used in errors).
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Self> {
        let mut m = SpmModel {
            pieces: Vec::new(),
            model_type: 1,
            unk_id: 0,
            byte_fallback: false,
            normalizer_name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
        };
        let mut r = Reader { buf: bytes, pos: 0, name };
        while let Some((field, v)) = r.next()? {
            match (field, v) {
                (1, Value::Bytes(b)) => {
                    let mut p = Reader { buf: b, pos: 0, name };
                    let mut piece = SpmPiece { piece: String::new(), score: 0.0, kind: PieceType::Normal };
                    while let Some((f, v)) = p.next()? {
                        match (f, v) {
                            (1, Value::Bytes(s)) => piece.piece = text(name, s)?,
                            (2, Value::Fixed32(x)) => piece.score = f32::from_bits(x),
                            (3, Value::Varint(t)) => {
                                piece.kind = match t {
                                    2 => PieceType::Unknown,
                                    3 => PieceType::Control,
                                    4 => PieceType::UserDefined,
                                    5 => PieceType::Unused,
                                    6 => PieceType::Byte,
                                    _ => PieceType::Normal,
                                }
                            }
                            _ => {}
                        }
                    }
                    m.pieces.push(piece);
                }
                (2, Value::Bytes(b)) => {
                    let mut t = Reader { buf: b, pos: 0, name };
                    while let Some((f, v)) = t.next()? {
                        match (f, v) {
                            (3, Value::Varint(x)) => m.model_type = x,
                            (35, Value::Varint(x)) => m.byte_fallback = x != 0,
                            (40, Value::Varint(x)) => m.unk_id = x as usize,
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(b)) => {
                    let mut n = Reader { buf: b, pos: 0, name };
                    while let Some((f, v)) = n.next()? {
                        match (f, v) {
                            (1, Value::Bytes(s)) => m.normalizer_name = text(name, s)?,
                            (2, Value::Bytes(s)) => m.precompiled_charsmap = s.to_vec(),
                            (3, Value::Varint(x)) => m.add_dummy_prefix = x != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err(DataError::Tokenizer { path: name.to_string(), message: "invalid spm.model: no pieces".into() });
        }
        if m.unk_id >= m.pieces.len() {
            return Err(DataError::Tokenizer { path: name.to_string(), message: format!("invalid spm.model: unk_id {} outside the {} pieces", m.unk_id, m.pieces.len()) });
        }
        Ok(m)
    }
}

/// Options of `DebertaV2Tokenizer` that change the pipeline (DeBERTa-v3: all default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebertaSpmOptions {
    /// Lowercase first (default false).
    pub do_lower_case: bool,
    /// Split punctuation off before Metaspace (default false).
    pub split_by_punct: bool,
    /// Prepend `▁` (default true).
    pub add_prefix_space: bool,
}

impl Default for DebertaSpmOptions {
    fn default() -> Self {
        DebertaSpmOptions { do_lower_case: false, split_by_punct: false, add_prefix_space: true }
    }
}

/// Builds the `DebertaV2TokenizerFast` equivalent of an `spm.model` (see the module docs).
pub fn deberta_v3_tokenizer(model: &SpmModel, opts: &DebertaSpmOptions, name: &str) -> Result<Tokenizer> {
    let terr = |e: Box<dyn std::error::Error + Send + Sync>| DataError::Tokenizer { path: name.to_string(), message: e.to_string() };
    if model.model_type != 1 {
        return Err(DataError::Tokenizer { path: name.to_string(), message: format!("model type {} is not Unigram (1)", model.model_type) });
    }
    let vocab: Vec<(String, f64)> = model.pieces.iter().map(|p| (p.piece.clone(), f64::from(p.score))).collect();
    let unigram = Unigram::from(vocab, Some(model.unk_id), model.byte_fallback).map_err(terr)?;
    let mut tok = Tokenizer::new(unigram);
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if opts.do_lower_case {
        norms.push(Lowercase.into());
    }
    norms.push(Strip::new(true, true).into());
    if !model.precompiled_charsmap.is_empty() {
        let p = Precompiled::from(&model.precompiled_charsmap)
            .map_err(|e| DataError::Tokenizer { path: name.to_string(), message: format!("precompiled charsmap: {e}") })?;
        norms.push(p.into());
    }
    norms.push(Replace::new(ReplacePattern::Regex(" {2,}".into()), " ").map_err(terr)?.into());
    tok.with_normalizer(Some(Sequence::new(norms))).map_err(terr)?;
    let scheme = if opts.add_prefix_space { PrependScheme::Always } else { PrependScheme::Never };
    let mut pres: Vec<PreTokenizerWrapper> = Vec::new();
    if opts.split_by_punct {
        pres.push(Punctuation::new(SplitDelimiterBehavior::Isolated).into());
    }
    pres.push(Metaspace::new('▁', scheme, true).into());
    tok.with_pre_tokenizer(Some(PreSequence::new(pres)));
    tok.with_decoder(Some(MetaspaceDecoder::new('▁', scheme, true)));
    let added: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceType::Control | PieceType::UserDefined))
        .map(|p| AddedToken::from(p.piece.clone(), p.kind == PieceType::Control).normalized(false))
        .collect();
    tok.add_tokens(added).map_err(terr)?;
    let specials = ["[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]"].map(|s| AddedToken::from(s, true).normalized(false));
    tok.add_special_tokens(specials).map_err(terr)?;
    // A corrupt charsmap is only found while normalizing: probe it once (encoding stays guarded
    // in `WordTokenizer`).
    crate::align::encode_guarded(&tok, "Probe ÀÉ ﬁ ＡＢＣ 日本語 👍🏽 \u{200b}x\t1").map_err(|m| DataError::Tokenizer {
        path: name.to_string(),
        message: format!("the tokenizer built from the model fails on a probe text: {m}"),
    })?;
    Ok(tok)
}
