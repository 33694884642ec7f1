//! # sener
//!
//! A Rust implementation of SeNER ("Small Language Model Makes an Effective Long Text Extractor",
//! arXiv 2502.07286): long-document named-entity extraction with an arrow-attention encoder and a
//! banded span model, in memory linear in the document length.
//!
//! One document's path, module by module: [`data`] reads it and tokenizes each word
//! (exact character offsets), [`encoder`] runs the arrow-attention encoder over each segment,
//! [`span::pooling`] max-pools subwords into words, [`span::biaffine`] scores the span band
//! ([`span::band`]), [`span::bispa`] refines it, [`span::SpanModel`] applies the head, and
//! [`decode`] turns band logits into entities; [`model::Sener`] holds the whole model and
//! [`metric`] scores predictions. [`official`] imports the authors' released checkpoints.
//!
//! ```no_run
//! use sener::encoder::{Encoder, EncoderOptions};
//! use sener::nn::ForwardCtx;
//! # fn main() -> sener::Result<()> {
//! let enc = Encoder::load(std::path::Path::new("models/all-MiniLM-L6-v2"), &EncoderOptions::default())?;
//! let ids = candle_core::Tensor::new(&[[101u32, 7592, 2088, 102]], &candle_core::Device::Cpu)?;
//! let mask = ids.ones_like()?;
//! let hidden = enc.forward(&ids, &mask, &mut ForwardCtx::eval())?; // [1, 4, 384]
//! # Ok(()) }
//! ```

/// The data layer (documents, readers/writers, tokenizer alignment, segmentation), re-exported.
pub use sener_data as data;

pub mod decode;
pub mod encoder;
pub mod extract;
pub mod gemm_bf16;
#[cfg(feature = "hub")]
pub mod hub;
pub mod error;
pub mod mem;
pub mod metric;
pub mod model;
pub mod nn;
pub mod official;
pub mod span;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
