//! Command-line flags, validated once into the plain configs the commands run with.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use sener::encoder::ArrowConfig;

#[derive(Parser, Debug)]
#[command(name = "sener", version, about = "Long-document named-entity extraction with SeNER (arrow attention, banded spans)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level of the messages on stderr: error, warn, info, debug or trace (`RUST_LOG`, when
    /// set, takes precedence and may name modules, e.g. `sener::serve::request=warn`).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log lines as text or as JSON objects (one per line; `sener serve`'s request log with its
    /// fields).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Encode one text with an encoder checkpoint and write its last hidden states
    /// (contextual embeddings of a whole long document).
    Encode(EncodeArgs),
    /// Micro / macro / per-type / per-length P/R/F1 of a model (or of a predictions file, word or
    /// character spans) against gold data in any reader format, with the official metric.
    Eval(crate::eval::EvalArgs),
    /// Extract entities (exact character offsets) from texts of any length.
    Extract(ExtractArgs),
    /// Train a SeNER model (LoRA on the encoder + the span side) on annotated documents:
    /// `--recipe sener` (default, tuned for small data and CPU budgets) or `--recipe paper`.
    Train(crate::train::TrainArgs),
    /// Turn a released SeNER checkpoint (.pth, official key layout) into a sener model folder.
    ImportOfficial(ImportOfficialArgs),
    /// Band logits (and decoded spans) of SeNER JSON-lines documents, computed as the official
    /// code does: each word tokenized alone, [CLS] + ids + [SEP], one document per batch.
    Score(ScoreArgs),
    /// Convert annotated documents between formats (sener, scirex, conll[-bioes], gliner, brat,
    /// text, jsonl → jsonl[-bytes], conll[-bioes], brat, sener).
    Convert(crate::data_cmds::ConvertArgs),
    /// Corpus statistics: documents, words, subwords, entities per type, entity lengths, entities
    /// the span window cannot hold or that cross a segment boundary.
    Stats(crate::data_cmds::StatsArgs),
    /// Benchmarks: time, tokens/s and peak RSS.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// HTTP/JSON server: entities from texts posted to /v1/extract (see docs/api.md).
    Serve(crate::serve::ServeArgs),
}

/// Arrow-attention flags shared by every command that runs an encoder.
#[derive(Args, Debug, Clone)]
pub struct ArrowArgs {
    /// One-sided attention window in subword tokens (w). A window ≥ the input length with
    /// --no-logn is exactly the stock full attention.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Switch off LogN scaling of the [CLS] query row.
    #[arg(long)]
    pub no_logn: bool,
    /// Plain sliding-window attention: [CLS] is not global (ablation).
    #[arg(long)]
    pub no_global_cls: bool,
}

impl ArrowArgs {
    pub fn to_config(&self) -> Result<ArrowConfig> {
        if self.window == 0 {
            bail!("--window must be at least 1");
        }
        Ok(ArrowConfig { window: self.window, logn: !self.no_logn, global_cls: !self.no_global_cls, ..ArrowConfig::default() })
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "file", "ids"])))]
pub struct EncodeArgs {
    /// Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin).
    #[arg(long)]
    pub model: PathBuf,
    /// Text to encode (tokenized with the folder's tokenizer.json, [CLS]/[SEP] added).
    #[arg(long)]
    pub text: Option<String>,
    /// UTF-8 file to encode as one document ('-' reads standard input).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Exact token ids, comma-separated, special tokens included; needs no tokenizer.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    #[command(flatten)]
    pub arrow: ArrowArgs,
    /// LoRA adapter: a PEFT folder or a .safetensors file with PEFT key names.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Output .safetensors: `hidden` [tokens, hidden] (f32) and `ids` [tokens] (i64).
    #[arg(long)]
    pub output: PathBuf,
    /// Device: cpu or cuda[:N] (cuda needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// sener model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Inputs: files; folders (every file inside, recursively, sorted; hidden entries and links
    /// to folders skipped); glob patterns such as 'docs/*.txt' or 'docs/**/*.txt' (quoted, so the
    /// shell leaves them alone); '-' for standard input. No input reads standard input.
    pub inputs: Vec<PathBuf>,
    /// Input format: text (each file is one UTF-8 document; a leading byte-order mark is dropped)
    /// or any reader format (each file may hold many documents).
    #[arg(long, default_value = "text", value_parser = crate::extract::input_format_parser())]
    pub format: String,
    /// Output, on standard output: jsonl (one line per document), json (one pretty array), table
    /// (for people), brat (the .ann of each document: needs --output-dir unless there is a single
    /// document), conll / conll-bioes (token-per-line tags; nested entities cannot be written:
    /// how many were dropped is reported on standard error).
    #[arg(long, default_value = "jsonl", value_parser = crate::extract::output_format_parser())]
    pub output_format: String,
    /// Folder for --output-format brat: <name>.txt and <name>.ann per document (created if needed).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Documents per Extractor::extract_batch call (read, extracted and written together).
    /// Batches run one after the other: the model's forward pass already uses every core.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Largest input read, per file or from standard input, in bytes (bigger ones are refused
    /// before they fill memory; standard input and pipes are read in chunks up to it).
    #[arg(long, default_value_t = crate::input::DEFAULT_MAX_INPUT_BYTES)]
    pub max_input_bytes: u64,
    /// Skip documents that cannot be read or extracted (each named on standard error) instead of
    /// stopping at the first; the command still fails at the end, listing them.
    #[arg(long)]
    pub keep_going: bool,
    /// Decision threshold on the symmetrised probability (default: the model's calibrated
    /// per-type thresholds, or 0.5).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Flat output (no nested entities).
    #[arg(long)]
    pub flat: bool,
    /// Segment length in tokens (default: the model's).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Subwords shared by consecutive segments.
    #[arg(long, default_value_t = 0)]
    pub overlap: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("label_set").required(true).args(["task", "labels"])))]
pub struct ImportOfficialArgs {
    /// The checkpoint (`torch.save` of the official model's state dict).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Hugging Face folder of the encoder it was trained from (config.json, tokenizer).
    #[arg(long)]
    pub base: PathBuf,
    /// Label preset: scholar-xl, scirex, profiling-07.
    #[arg(long)]
    pub task: Option<String>,
    /// Labels in logit order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    #[arg(long, default_value_t = 128)]
    pub chunks_size: usize,
    #[arg(long, default_value_t = 100)]
    pub biaffine_size: usize,
    #[arg(long, default_value_t = 32)]
    pub cnn_dim: usize,
    #[arg(long, default_value_t = 2)]
    pub cnn_depth: usize,
    /// LoRA alpha of the checkpoint (the official recipe: 16).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Word splitter of the checkpoint's training data, for raw text (default: the --task's,
    /// else whitespace): whitespace, treebank, punct or infix.
    #[arg(long)]
    pub splitter: Option<sener_data::split::Splitter>,
    /// Output model folder.
    #[arg(long)]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// sener model folder (sener.json, span.safetensors, adapter/).
    #[arg(long)]
    pub model: PathBuf,
    /// SeNER JSON lines (`text` word list, `entity`).
    #[arg(long)]
    pub input: PathBuf,
    /// Output .safetensors: `logits.<line>` [words, 2w+1, labels] per document (`logits.<line>.<k>`
    /// for its k-th further segment when it is longer than the maximum length).
    #[arg(long)]
    pub output: PathBuf,
    /// Also write decoded entities per document as `[start, end_exclusive, label]` word spans.
    #[arg(long)]
    pub decoded: Option<PathBuf>,
    /// Segment length in tokens (default: the model's, 5120).
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Encoder forward for several lengths, arrow vs full attention, MiniLM and a random
    /// DeBERTa-v3-base-shaped model; each measurement in its own process for a clean peak RSS.
    Encoder(BenchEncoderArgs),
    /// What BERT's block-wise repeated positions cost: hidden states of a long pass against
    /// 510-token windows with natural positions, per block of the document.
    Positions(BenchPositionsArgs),
    /// Span side (biaffine + BiSPA + head) for n words at w′ = 128, banded against the full
    /// L×L span tensor (window ≥ n), each in its own process.
    Span(BenchSpanArgs),
    /// One span measurement (used by `bench span`).
    #[command(hide = true)]
    SpanOne(BenchSpanOneArgs),
    /// One measurement (used by `bench encoder`; prints one JSON line).
    #[command(hide = true)]
    EncoderOne(BenchOneArgs),
    /// One training step (forward, backward, AdamW) of the full model with the real MiniLM
    /// encoder per segment length: time and peak RSS.
    TrainStep(BenchTrainStepArgs),
    #[command(hide = true)]
    TrainStepOne(BenchTrainStepOneArgs),
    /// The whole model (encoder + span side) per length, SeNER vs full attention + L×L span
    /// tensor: time, tokens/s, peak memory (RSS, or GPU memory on CUDA), GFLOP/s; JSON and SVG.
    Model(BenchModelArgs),
    /// One whole-model measurement (used by `bench model`; prints one JSON line).
    #[command(hide = true)]
    ModelOne(BenchModelOneArgs),
    /// Extraction words/s on many short documents (one call each, and `extract_batch`) against
    /// one long document, side by side with one model.
    Throughput(crate::bench_throughput::BenchThroughputArgs),
    /// A long load test of `sener serve` on loopback: concurrent clients for some minutes,
    /// throughput, latency percentiles, the server's RSS over time, every wrong answer.
    Soak(crate::bench_soak::BenchSoakArgs),
    /// GFLOP/s of the encoder's matrix products (DeBERTa-v3-base shapes) in f32, bf16 and f16
    /// through candle's CPU matmul.
    Matmul(crate::bench_matmul::BenchMatmulArgs),
}

#[derive(Args, Debug)]
pub struct BenchModelArgs {
    /// Models: deberta-v3-base, deberta-v3-large, minilm-shape (random weights in those shapes), or
    /// minilm (the real all-MiniLM-L6-v2 from --minilm / $SENER_MINILM_DIR).
    #[arg(long, value_delimiter = ',', default_value = "deberta-v3-base,minilm-shape")]
    pub models: Vec<String>,
    /// Token lengths.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096,5120,8192,16384,32768")]
    pub lengths: Vec<usize>,
    /// sener (arrow attention + span band) and/or full (full attention + full L×L span tensor).
    #[arg(long, value_delimiter = ',', default_value = "sener,full")]
    pub modes: Vec<String>,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// Timed forwards per measurement (after a short warm-up); the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Skip a run whose estimated peak memory exceeds this many GiB.
    #[arg(long, default_value_t = 16.0)]
    pub budget_gib: f64,
    /// Skip a run whose estimated span-side arithmetic exceeds this many TFLOP (a time budget).
    #[arg(long, default_value_t = 20.0)]
    pub max_tflop: f64,
    /// Kill a measurement after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_s: u64,
    /// Entity types of the head.
    #[arg(long, default_value_t = 12)]
    pub labels: usize,
    /// Write all runs and the log-log fits as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a log-log plot (time and peak memory against tokens) as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchModelOneArgs {
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub mode: String,
    #[arg(long)]
    pub length: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[arg(long, default_value_t = 12)]
    pub labels: usize,
}

#[derive(Args, Debug)]
pub struct BenchEncoderArgs {
    /// all-MiniLM-L6-v2 folder (default: $SENER_MINILM_DIR); skipped when absent.
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// Token lengths.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096,8192,16384")]
    pub lengths: Vec<usize>,
    /// Models to run: minilm, deberta-v3-base (random weights), deberta-v3-large (random).
    #[arg(long, value_delimiter = ',', default_value = "minilm,deberta-v3-base")]
    pub models: Vec<String>,
    /// Timed forwards per measurement (after one warm-up).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Skip full attention where its estimated peak exceeds this many GiB.
    #[arg(long, default_value_t = 12.0)]
    pub full_budget_gib: f64,
    /// Arrow window.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchSpanArgs {
    /// Word counts.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096,8192,16384")]
    pub words: Vec<usize>,
    /// Span window w′.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Encoder hidden size of the word vectors (1024: DeBERTa-v3-large).
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    /// Entity types.
    #[arg(long, default_value_t = 12)]
    pub labels: usize,
    /// Skip a run whose estimated peak exceeds this many GiB.
    #[arg(long, default_value_t = 16.0)]
    pub budget_gib: f64,
    /// Skip a full-L×L run whose estimated arithmetic exceeds this many TFLOP (time budget).
    #[arg(long, default_value_t = 3.0)]
    pub max_tflop: f64,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchTrainStepArgs {
    /// MiniLM folder (default: $SENER_MINILM_DIR).
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// Encoder: minilm (the real weights), or random weights in the shape of deberta-v3-base,
    /// deberta-v3-large or minilm-shape.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// cpu or cuda[:N] (on CUDA the peak is the GPU memory the step added, from nvidia-smi).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Segment lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,5120")]
    pub lengths: Vec<usize>,
    /// Steps per length (the first one is reported separately: it allocates everything).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Recompute activations in the backward pass: auto, always or never (see `sener train`).
    #[arg(long, default_value = "auto")]
    pub recompute: sener::train::recompute::Recompute,
    /// What of the encoder trains: lora (the paper's recipe) or full (see `sener train`).
    #[arg(long, default_value = "lora")]
    pub finetune: sener::train::trainer::Finetune,
    /// Span window w′ in words (one side; the band has 2w′+1 columns).
    #[arg(long, default_value_t = 128)]
    pub span_window: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchTrainStepOneArgs {
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    #[arg(long, default_value = "minilm")]
    pub model: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub length: usize,
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    #[arg(long, default_value = "auto")]
    pub recompute: sener::train::recompute::Recompute,
    #[arg(long, default_value = "lora")]
    pub finetune: sener::train::trainer::Finetune,
    #[arg(long, default_value_t = 128)]
    pub span_window: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BenchSpanOneArgs {
    #[arg(long)]
    pub words: usize,
    /// banded or full
    #[arg(long)]
    pub mode: String,
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    #[arg(long, default_value_t = 12)]
    pub labels: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BenchOneArgs {
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    #[arg(long)]
    pub length: usize,
    /// arrow or full
    #[arg(long)]
    pub mode: String,
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[arg(long, default_value_t = 128)]
    pub window: usize,
}

#[derive(Args, Debug)]
pub struct BenchPositionsArgs {
    /// BERT-family model folder (default: $SENER_MINILM_DIR).
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// UTF-8 text file, longer than 512 tokens.
    #[arg(long)]
    pub file: PathBuf,
    #[command(flatten)]
    pub arrow: ArrowArgs,
}

/// A `--model` value: a local model folder, or (with the `hub` feature) a Hugging Face Hub id
/// `org/name[@revision]` whose model folder (and base encoder) is fetched into the Hub cache.
pub fn model_dir(spec: &std::path::Path) -> Result<PathBuf> {
    #[cfg(feature = "hub")]
    {
        Ok(sener::hub::resolve_model(spec)?)
    }
    #[cfg(not(feature = "hub"))]
    {
        if !spec.exists() {
            bail!("{}: no such model folder (this build has no Hugging Face Hub support: feature `hub`)", spec.display());
        }
        Ok(spec.to_path_buf())
    }
}

pub fn parse_device(s: &str) -> Result<candle_core::Device> {
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s.starts_with("cuda") => {
            let n = s.strip_prefix("cuda").and_then(|r| r.strip_prefix(':')).unwrap_or("0");
            let n: usize = n.parse().with_context(|| format!("--device {s}: bad ordinal"))?;
            candle_core::Device::new_cuda(n).with_context(|| format!("--device {s}"))
        }
        other => bail!("--device {other}: expected cpu or cuda[:N]"),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Encode(a) => crate::encode::run(crate::encode::EncodeConfig::from_args(a)?),
        Command::Eval(a) => crate::eval::run(a),
        Command::Extract(a) => crate::extract::run(a),
        Command::Train(a) => crate::train::run(a),
        Command::ImportOfficial(a) => crate::score::import_official(a),
        Command::Score(a) => crate::score::score(a),
        Command::Convert(a) => crate::data_cmds::convert(a),
        Command::Stats(a) => crate::data_cmds::stats(a),
        Command::Bench(BenchCommand::Encoder(a)) => crate::bench::run_encoder(a),
        Command::Bench(BenchCommand::EncoderOne(a)) => crate::bench::run_one(a),
        Command::Bench(BenchCommand::Positions(a)) => crate::bench::run_positions(a),
        Command::Bench(BenchCommand::Span(a)) => crate::bench::run_span(a),
        Command::Bench(BenchCommand::SpanOne(a)) => crate::bench::run_span_one(a),
        Command::Bench(BenchCommand::TrainStep(a)) => crate::bench::run_train_step(a),
        Command::Bench(BenchCommand::TrainStepOne(a)) => crate::bench::run_train_step_one(a),
        Command::Bench(BenchCommand::Model(a)) => crate::bench_model::run(a),
        Command::Bench(BenchCommand::ModelOne(a)) => crate::bench_model::run_one(a),
        Command::Bench(BenchCommand::Throughput(a)) => crate::bench_throughput::run(a),
        Command::Bench(BenchCommand::Soak(a)) => crate::bench_soak::run(a),
        Command::Bench(BenchCommand::Matmul(a)) => crate::bench_matmul::run(a),
        Command::Serve(a) => crate::serve::run(a),
    }
}
