//! The SeNER data layer.
//!
//! - [`document`]: the [`Document`] type (raw text, entities as code-point character spans,
//!   optional words and sentences) and offset conversions.
//! - [`readers`]: SeNER/UTC-IE JSON lines, SciREX, CoNLL (BIO/IOB2/BIOES), GLiNER, brat, plain
//!   text and this crate's own JSON lines ([`readers::jsonl`] documents its schema).
//! - [`writers`]: own JSON lines, CoNLL (flat), brat.
//! - [`report`]: what readers and writers dropped or adjusted; nothing is lost silently.
//! - [`align`]: per-word subword tokenization and subword → word → character alignment.
//! - [`spm`]: SentencePiece `spm.model` files turned into DeBERTa-v3's fast tokenizer.
//! - [`segment`]: long-document segmentation as the official SeNER code does it.
//! - [`batch`]: length-bucketed batches, padding, and seeded whole-word masking.
//! - [`stats`]: corpus statistics.
//!
//! ```
//! use sener_data::readers::{self, Format};
//! use sener_data::align::{align_with, Piece, SpecialTokens};
//! use sener_data::segment::{segment, SegmentConfig};
//!
//! let line = r#"{"doc_id": "d1", "text": ["Ada", "Lovelace", "wrote", "日本"], "entity": [[0, 2, ["Ada", "Lovelace"], "person"]]}"#;
//! let read = readers::read_bytes(Format::Sener, "example", line.as_bytes()).unwrap();
//! assert!(read.report.is_empty());
//! let doc = &read.documents[0];
//! assert_eq!(doc.text, "Ada Lovelace wrote 日本");
//! assert_eq!(doc.entity_text(&doc.entities[0]), Some("Ada Lovelace"));
//!
//! // Any per-word encoder works; `align::WordTokenizer` wraps a tokenizer.json or spm.model.
//! let chars = |w: &str| Ok(w.chars().enumerate().map(|(i, _)| Piece { id: 5, start: i, end: i + 1 }).collect());
//! let al = align_with(doc, chars).unwrap();
//! let (word_entities, _) = doc.word_entities().unwrap();
//! let special = SpecialTokens { cls: 1, sep: 2, pad: 0, mask: None, unk: None };
//! let segs = segment(doc, &al, &word_entities, &special, &SegmentConfig::new(12)).unwrap();
//! assert_eq!(segs.segments.len(), 2); // 18 subwords in pieces of 10
//! assert_eq!(segs.segments[0].entities.len(), 1);
//! ```

pub mod align;
pub mod batch;
pub mod detok;
pub mod document;
pub mod error;
pub mod holdout;
pub mod readers;
pub mod report;
pub mod segment;
pub mod split;
pub mod spm;
pub mod stats;
pub mod writers;

pub use document::{Document, Entity, OffsetMap, Span, WordEntity, WORD_SEPARATOR};
pub use error::{DataError, Result};
pub use readers::{Format, ReadResult};
pub use report::{Issue, Report};
