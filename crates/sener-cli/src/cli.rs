//! The command line: the commands and their dispatch. Each command's flags live beside it (its
//! module), validated there into the plain values it runs with; flags several commands share are
//! in `common`.

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Encode(crate::encode::EncodeArgs),
    /// Micro / macro / per-type / per-length P/R/F1 of a model (or of a predictions file, word or
    /// character spans) against gold data in any reader format, with the official metric.
    Eval(crate::eval::EvalArgs),
    /// Extract entities (exact character offsets) from texts of any length.
    Extract(crate::extract::ExtractArgs),
    /// Train a SeNER model (LoRA on the encoder + the span side) on annotated documents:
    /// `--recipe sener` (default, tuned for small data and CPU budgets) or `--recipe paper`.
    Train(crate::train::TrainArgs),
    /// Turn a released SeNER checkpoint (.pth, official key layout) into a sener model folder.
    ImportOfficial(crate::score::ImportOfficialArgs),
    /// Band logits (and decoded spans) of SeNER JSON-lines documents, computed as the official
    /// code does: each word tokenized alone, [CLS] + ids + [SEP], one document per batch.
    Score(crate::score::ScoreArgs),
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

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Encoder forward for several lengths, arrow vs full attention, MiniLM and a random
    /// DeBERTa-v3-base-shaped model; each measurement in its own process for a clean peak RSS.
    Encoder(crate::bench::BenchEncoderArgs),
    /// What BERT's block-wise repeated positions cost: hidden states of a long pass against
    /// 510-token windows with natural positions, per block of the document.
    Positions(crate::bench::BenchPositionsArgs),
    /// Span side (biaffine + BiSPA + head) for n words at w′ = 128, banded against the full
    /// L×L span tensor (window ≥ n), each in its own process.
    Span(crate::bench::BenchSpanArgs),
    /// One span measurement (used by `bench span`).
    #[command(hide = true)]
    SpanOne(crate::bench::BenchSpanOneArgs),
    /// One measurement (used by `bench encoder`; prints one JSON line).
    #[command(hide = true)]
    EncoderOne(crate::bench::BenchOneArgs),
    /// One training step (forward, backward, AdamW) of the full model with the real MiniLM
    /// encoder per segment length: time and peak RSS.
    TrainStep(crate::bench::BenchTrainStepArgs),
    #[command(hide = true)]
    TrainStepOne(crate::bench::BenchTrainStepOneArgs),
    /// The whole model (encoder + span side) per length, SeNER vs full attention + L×L span
    /// tensor: time, tokens/s, peak memory (RSS, or GPU memory on CUDA), GFLOP/s; JSON and SVG.
    Model(crate::bench_model::BenchModelArgs),
    /// One whole-model measurement (used by `bench model`; prints one JSON line).
    #[command(hide = true)]
    ModelOne(crate::bench_model::BenchModelOneArgs),
    /// Extraction words/s on many short documents (one call each, and `extract_batch`) against
    /// one long document, side by side with one model.
    Throughput(crate::bench_throughput::BenchThroughputArgs),
    /// A long load test of `sener serve` on loopback: concurrent clients for some minutes,
    /// throughput, latency percentiles, the server's RSS over time, every wrong answer.
    Soak(crate::bench_soak::BenchSoakArgs),
    /// GFLOP/s of the encoder's matrix products (DeBERTa-v3-base shapes) in f32, bf16 and f16
    /// through candle's CPU matmul.
    Matmul(crate::bench_matmul::BenchMatmulArgs),
    /// A real model's band logits in f32 and in bf16 on real documents: largest difference,
    /// flipped decisions, time of each pass.
    Dtype(crate::bench_dtype::BenchDtypeArgs),
    /// The collective operations of data-parallel training (MPI on the CPU, NCCL on GPUs),
    /// checked and timed on the ranks of `mpirun -np N sener bench collective`.
    Collective(crate::bench_collective::BenchCollectiveArgs),
    /// Writes a model folder with random weights in a published shape (deberta-v3-base, …),
    /// for `bench model --models FOLDER`: the model then loads from a file as `sener extract` does.
    RandomModel(crate::bench::BenchRandomModelArgs),
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
        Command::Bench(BenchCommand::Dtype(a)) => crate::bench_dtype::run(a),
        Command::Bench(BenchCommand::Collective(a)) => crate::bench_collective::run(a),
        Command::Bench(BenchCommand::RandomModel(a)) => crate::bench::run_random_model(a),
        Command::Serve(a) => crate::serve::run(a),
    }
}
