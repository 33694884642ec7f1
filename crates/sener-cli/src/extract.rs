//! `sener extract`: entities from files, folders, glob patterns or standard input.
//!
//! Inputs are expanded up front (a missing path or a pattern matching nothing is an error before
//! the model loads); documents are then read lazily, one batch of `--batch-size` at a time, run
//! through [`Extractor::extract_batch`] and written as soon as the batch is done. Batches run one
//! after the other: the model's forward pass already uses every core (rayon / gemm), so running
//! several documents at once would only add memory.

use clap::Args;
use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::builder::{PossibleValue, PossibleValuesParser};
use indicatif::{ProgressBar, ProgressStyle};
use sener::decode::{DecodeOptions, Threshold};
use sener::extract::{Entity, ExtractOptions, Extraction, Extractor};
use sener_data::readers::{self, Format, TagScheme};
use sener_data::segment::SegmentConfig;
use sener_data::writers::{brat, conll};
use sener_data::{Document, Issue, Report};


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
    #[command(flatten)]
    pub dtype: crate::common::DtypeArgs,
}

/// The values of `--output-format`.
pub const OUTPUT_FORMATS: &[&str] = &["jsonl", "json", "table", "brat", "conll", "conll-bioes"];

/// `--format`: every reader format (plus the hidden aliases `plain` and `utcie`).
pub fn input_format_parser() -> PossibleValuesParser {
    let mut v: Vec<PossibleValue> = Format::NAMES.iter().map(|n| PossibleValue::new(*n)).collect();
    v.push(PossibleValue::new("plain").hide(true));
    v.push(PossibleValue::new("utcie").hide(true));
    PossibleValuesParser::new(v)
}

/// `--output-format`.
pub fn output_format_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(OUTPUT_FORMATS.iter().map(|n| PossibleValue::new(*n)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutFormat {
    Jsonl,
    Json,
    Table,
    Brat,
    Conll(TagScheme),
}

impl OutFormat {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "jsonl" => OutFormat::Jsonl,
            "json" => OutFormat::Json,
            "table" => OutFormat::Table,
            "brat" => OutFormat::Brat,
            "conll" => OutFormat::Conll(TagScheme::Bio),
            "conll-bioes" => OutFormat::Conll(TagScheme::Bioes),
            other => bail!("--output-format {other:?}: expected one of {}", OUTPUT_FORMATS.join(", ")),
        })
    }
}

/// Where a document comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    File(PathBuf),
    Stdin,
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Stdin => "<stdin>".to_string(),
        }
    }
}

/// One document to extract from: either still to be read (plain text) or already read.
enum Pending {
    Text(Source),
    Loaded { name: String, id: String, text: String },
}

impl Pending {
    fn name(&self) -> String {
        match self {
            Pending::Text(s) => s.name(),
            Pending::Loaded { name, .. } => name.clone(),
        }
    }

    /// Bytes of text, where known before reading (a file's size; standard input: unknown).
    fn size_hint(&self) -> Option<u64> {
        match self {
            Pending::Text(Source::File(p)) => std::fs::metadata(p).ok().map(|m| m.len()),
            Pending::Text(Source::Stdin) => None,
            Pending::Loaded { text, .. } => Some(text.len() as u64),
        }
    }
}

/// A document ready for the model.
struct Doc {
    /// Shown in outputs and errors (file path, `path#id` for reader formats, `<stdin>`).
    name: String,
    /// File stem for brat output.
    id: String,
    text: String,
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Every file under `dir`, sorted by path, recursively. Hidden entries (name starting with '.')
/// and symbolic links to folders are skipped (no cycles); links to files are followed. With
/// `only_txt`, only `.txt` files (brat folders: each `.txt` is read with its `.ann`).
fn walk(dir: &Path, only_txt: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .with_context(|| format!("reading folder {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading folder {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        let ft = e.file_type().with_context(|| format!("reading {}", path.display()))?;
        let is_file = if ft.is_dir() {
            walk(&path, only_txt, out)?;
            false
        } else if ft.is_symlink() {
            // A broken link is named; a link to a folder is skipped.
            let m = std::fs::metadata(&path).with_context(|| format!("following the link {}", path.display()))?;
            m.is_file()
        } else {
            ft.is_file()
        };
        if is_file && (!only_txt || path.extension().is_some_and(|x| x == "txt")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Expands the command-line inputs into sources: files, folders (recursively), glob patterns,
/// `-` for standard input; no input at all reads standard input.
fn expand_inputs(inputs: &[PathBuf], format: Option<Format>) -> Result<Vec<Source>> {
    let only_txt = format == Some(Format::Brat);
    let mut out = Vec::new();
    let mut stdin_seen = false;
    for p in inputs {
        if p.as_os_str() == "-" {
            if stdin_seen {
                bail!("'-' (standard input) is given more than once");
            }
            stdin_seen = true;
            out.push(Source::Stdin);
            continue;
        }
        if p.is_dir() {
            let mut files = Vec::new();
            walk(p, only_txt, &mut files)?;
            if files.is_empty() {
                bail!("{}: folder has no {}files", p.display(), if only_txt { ".txt " } else { "" });
            }
            out.extend(files.into_iter().map(Source::File));
            continue;
        }
        if p.exists() {
            out.push(Source::File(p.clone()));
            continue;
        }
        let s = p.to_string_lossy();
        if !has_glob_chars(&s) {
            // Name the path; `metadata` gives the reason (no such file, permission denied, ...).
            let why = std::fs::metadata(p).err().map(|e| e.to_string()).unwrap_or_else(|| "not a file or folder".into());
            bail!("{}: {why}", p.display());
        }
        let opts = glob::MatchOptions { require_literal_leading_dot: true, ..Default::default() };
        let paths = glob::glob_with(&s, opts).map_err(|e| anyhow!("glob pattern {s:?}: {e}"))?;
        let mut n = 0usize;
        for m in paths {
            let m = m.map_err(|e| anyhow!("glob pattern {s:?}: {e}"))?;
            if m.is_dir() {
                let mut files = Vec::new();
                walk(&m, only_txt, &mut files)?;
                n += files.len();
                out.extend(files.into_iter().map(Source::File));
            } else if m.is_file() && (!only_txt || m.extension().is_some_and(|x| x == "txt")) {
                n += 1;
                out.push(Source::File(m));
            }
        }
        if n == 0 {
            bail!("no file matches the pattern {s:?}");
        }
    }
    if inputs.is_empty() {
        out.push(Source::Stdin);
    }
    Ok(out)
}

/// The bytes of a source, at most `limit` of them, refused at the first NUL byte (see
/// [`crate::input`]). Reading standard input from a terminal says so first.
fn read_source(s: &Source, limit: u64) -> Result<Vec<u8>> {
    match s {
        Source::File(p) => crate::input::read_file(p, limit, true),
        Source::Stdin => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the text from standard input (end it with Ctrl-D)");
            }
            crate::input::read_bounded(std::io::stdin().lock(), "<stdin>", limit, true)
        }
    }
}

/// UTF-8 text of `bytes` (a leading byte-order mark dropped: offsets count from after it). NUL
/// bytes were refused while reading ([`read_source`]).
fn decode_text(name: &str, bytes: Vec<u8>) -> Result<String> {
    match String::from_utf8(bytes) {
        Ok(mut s) => {
            if s.starts_with('\u{feff}') {
                s.drain(..'\u{feff}'.len_utf8());
            }
            Ok(s)
        }
        Err(e) => {
            let b = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let line = 1 + bytes[..b].iter().filter(|&&c| c == b'\n').count();
            bail!("{name}: not valid UTF-8 (line {line}, byte {b}); sener extract reads UTF-8 text")
        }
    }
}

/// A brat file stem for `id`: letters, digits, '-', '_' and '.' kept, anything else '_', unique.
fn brat_stem(id: &str, used: &mut HashSet<String>) -> String {
    let mut s: String = id.chars().take(100).map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert_str(0, "doc");
    }
    let mut stem = s.clone();
    let mut k = 2;
    while used.contains(&stem) {
        stem = format!("{s}-{k}");
        k += 1;
    }
    used.insert(stem.clone());
    stem
}

/// The file stem of a path, as a document id.
fn file_id(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "doc".into())
}

/// Turns `pending` into a document (reads plain-text files).
fn load(p: Pending, limit: u64) -> Result<Doc> {
    match p {
        Pending::Loaded { name, id, text } => Ok(Doc { name, id, text }),
        Pending::Text(src) => {
            let name = src.name();
            let bytes = read_source(&src, limit)?;
            let text = decode_text(&name, bytes)?;
            let id = match &src {
                Source::File(f) => file_id(f),
                Source::Stdin => "stdin".into(),
            };
            Ok(Doc { name, id, text })
        }
    }
}

/// Reads every source in a reader format (everything up front: the documents of one file are
/// only known once it is parsed).
fn read_formatted(format: Format, sources: &[Source], limit: u64) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    for s in sources {
        let name = s.name();
        let read = match (format, s) {
            (Format::Brat, Source::File(p)) => readers::read_path(format, p).with_context(|| format!("reading {name}"))?,
            _ => {
                let bytes = read_source(s, limit)?;
                readers::read_bytes(format, &name, &bytes).with_context(|| format!("reading {name} as {format:?}"))?
            }
        };
        crate::data_cmds::print_report(&name, &read.report);
        let base = match s {
            Source::File(p) => file_id(p),
            Source::Stdin => "stdin".into(),
        };
        let single = read.documents.len() == 1;
        for d in read.documents {
            // brat stems: the document id (or file stem for one-document files in text-like formats).
            let id = if single && matches!(format, Format::Plain(_)) { base.clone() } else { d.id.clone() };
            out.push(Pending::Loaded { name: format!("{name}#{}", d.id), id, text: d.text });
        }
    }
    Ok(out)
}

/// A document of the extraction result, for the sener-data writers.
fn to_document(id: &str, text: &str, entities: &[Entity]) -> Document {
    let mut d = Document::new(id, text);
    d.entities = entities
        .iter()
        .map(|e| sener_data::Entity { start: e.start, end: e.end, label: e.label.clone(), score: Some(e.score) })
        .collect();
    d
}

#[derive(serde::Serialize)]
struct JsonDoc<'a> {
    /// The document id (file stem for text files, the document's id for reader formats):
    /// what `sener eval --pred` matches to gold documents.
    id: &'a str,
    source: &'a str,
    words: usize,
    segments: usize,
    entities: &'a [Entity],
}

/// Writes each document's result in the chosen format; keeps what must be reported at the end.
struct Writer<'a> {
    format: OutFormat,
    out: std::io::BufWriter<std::io::StdoutLock<'a>>,
    output_dir: Option<PathBuf>,
    stems: HashSet<String>,
    written: usize,
    conll_report: Report,
    conll_entities: usize,
}

impl Writer<'_> {
    fn start(&mut self) -> Result<()> {
        if self.format == OutFormat::Json {
            write!(self.out, "[")?;
        }
        if let Some(d) = &self.output_dir {
            std::fs::create_dir_all(d).with_context(|| format!("creating the output folder {}", d.display()))?;
        }
        Ok(())
    }

    fn write(&mut self, doc: &Doc, r: &Extraction) -> Result<()> {
        let j = JsonDoc { id: &doc.id, source: &doc.name, words: r.words, segments: r.segments, entities: &r.entities };
        match self.format {
            OutFormat::Jsonl => {
                serde_json::to_writer(&mut self.out, &j)?;
                writeln!(self.out)?;
            }
            OutFormat::Json => {
                if self.written > 0 {
                    write!(self.out, ",")?;
                }
                writeln!(self.out)?;
                serde_json::to_writer_pretty(&mut self.out, &j)?;
            }
            OutFormat::Table => {
                writeln!(self.out, "{}: {} words, {} segment(s), {} entities", doc.name, r.words, r.segments, r.entities.len())?;
                for e in &r.entities {
                    writeln!(self.out, "  {:<20} {:>7} {:>7}  {:.3}  {}", e.label, e.start, e.end, e.score, e.text.replace(['\n', '\r', '\t'], " "))?;
                }
            }
            OutFormat::Brat => {
                let d = to_document(&doc.id, &doc.text, &r.entities);
                let (txt, ann) = brat::render(&d).with_context(|| format!("brat output of {}", doc.name))?;
                match &self.output_dir {
                    Some(dir) => {
                        let stem = brat_stem(&doc.id, &mut self.stems);
                        for (ext, content) in [("txt", &txt), ("ann", &ann)] {
                            let p = dir.join(format!("{stem}.{ext}"));
                            std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
                        }
                    }
                    None => write!(self.out, "{ann}")?,
                }
            }
            OutFormat::Conll(scheme) => {
                let d = to_document(&doc.id, &doc.text, &r.entities);
                let (s, report) = conll::to_string(std::slice::from_ref(&d), scheme).with_context(|| format!("CoNLL output of {}", doc.name))?;
                self.conll_entities += r.entities.len();
                self.conll_report.merge(report);
                write!(self.out, "{s}")?;
            }
        }
        self.written += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.format == OutFormat::Json {
            writeln!(self.out, "{}]", if self.written == 0 { "" } else { "\n" })?;
        }
        self.out.flush()?;
        if let OutFormat::Conll(_) = self.format {
            let dropped = self.conll_report.count(Issue::NestedEntityDropped);
            eprintln!(
                "conll: {} of {} entities written; {dropped} nested or overlapping entities dropped (CoNLL holds flat entities only; --flat decodes flat spans)",
                self.conll_entities - dropped.min(self.conll_entities),
                self.conll_entities
            );
            for (issue, n) in self.conll_report.counts() {
                if *issue != Issue::NestedEntityDropped {
                    eprintln!("conll: {n} × {}", issue.describe());
                }
            }
        }
        if let (OutFormat::Brat, Some(dir)) = (self.format, &self.output_dir) {
            eprintln!("brat: {} document(s) -> {} (<name>.txt + <name>.ann)", self.written, dir.display());
        }
        Ok(())
    }
}

/// True when the error chain holds a broken pipe (e.g. `sener extract … | head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().is_some_and(|j| j.io_error_kind() == Some(BrokenPipe))
    })
}

pub fn run(a: ExtractArgs) -> Result<()> {
    match run_inner(a) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        r => r,
    }
}

fn run_inner(a: ExtractArgs) -> Result<()> {
    if let Some(t) = a.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
        bail!("--threshold {t} is not a probability");
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let out_format = OutFormat::parse(&a.output_format)?;
    if a.output_dir.is_some() && out_format != OutFormat::Brat {
        bail!("--output-dir is for --output-format brat; the other formats write to standard output");
    }
    let format: Option<Format> = match a.format.as_str() {
        "text" | "plain" => None,
        f => Some(f.parse().map_err(|e| anyhow!("--format: {e}"))?),
    };
    let sources = expand_inputs(&a.inputs, format)?;
    let pending: Vec<Pending> = match format {
        None => sources.into_iter().map(Pending::Text).collect(),
        Some(f) => read_formatted(f, &sources, a.max_input_bytes)?,
    };
    if out_format == OutFormat::Brat && a.output_dir.is_none() && pending.len() > 1 {
        bail!("brat output of {} documents needs --output-dir (one .ann per document); a single document is printed to standard output", pending.len());
    }

    let device = crate::common::parse_device(&a.device)?;
    let model_dir = crate::common::model_dir(&a.model)?;
    // The first forward's fresh pages are faulted in on a thread while the model loads, sized
    // for the longest input (about 4 bytes of text a subword; standard input is not known yet).
    let longest = pending.iter().filter_map(Pending::size_hint).max().unwrap_or(0);
    let warm = crate::common::warm_for_first_forward(&model_dir, (longest / 4) as usize, &device);
    let mut ex = Extractor::load_on(&model_dir, &device).with_context(|| format!("loading model {}", a.model.display()))?;
    if let Some(h) = warm {
        h.join().map_err(|_| anyhow!("the allocator warm-up thread panicked"))?;
    }
    a.dtype.apply(&mut ex.model)?;
    let max_len = a.max_len.unwrap_or(ex.model.config.max_len);
    SegmentConfig { max_len, overlap: a.overlap }.validate().context("--max-len / --overlap")?;
    ex.options = ExtractOptions {
        decode: DecodeOptions {
            threshold: a.threshold.map_or_else(|| ex.model.config.threshold(), Threshold::Global),
            allow_nested: !a.flat,
            ..DecodeOptions::default()
        },
        max_len: a.max_len,
        overlap: a.overlap,
    };

    let total = pending.len();
    let bar = if total > 1 { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} documents  {elapsed} ETA {eta}  {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut progress = ProgressLog::new(total);
    let stdout = std::io::stdout();
    let mut w = Writer {
        format: out_format,
        out: std::io::BufWriter::new(stdout.lock()),
        output_dir: a.output_dir.clone(),
        stems: HashSet::new(),
        written: 0,
        conll_report: Report::new(),
        conll_entities: 0,
    };
    w.start()?;
    let mut skipped: Vec<String> = Vec::new();
    let mut pending = pending.into_iter().peekable();
    while pending.peek().is_some() {
        let mut batch: Vec<Doc> = Vec::with_capacity(a.batch_size);
        let mut taken = 0u64;
        while batch.len() < a.batch_size {
            let Some(p) = pending.next() else { break };
            taken += 1;
            let name = p.name();
            match load(p, a.max_input_bytes) {
                Ok(d) => batch.push(d),
                Err(e) if a.keep_going => {
                    bar.suspend(|| eprintln!("skipped: {e:#}"));
                    skipped.push(name);
                }
                Err(e) => {
                    bar.finish_and_clear();
                    w.out.flush().ok();
                    return Err(e);
                }
            }
        }
        match batch.as_slice() {
            [] => {}
            [d] => bar.set_message(d.name.clone()),
            [d, rest @ ..] => bar.set_message(format!("{} (+{} more)", d.name, rest.len())),
        }
        let texts: Vec<&str> = batch.iter().map(|d| d.text.as_str()).collect();
        let results = match ex.extract_batch(&texts) {
            Ok(r) => r.into_iter().map(Ok).collect::<Vec<_>>(),
            // Find which document failed: run them one by one.
            Err(_) => texts.iter().map(|t| ex.extract(t)).collect(),
        };
        for (d, r) in batch.iter().zip(results) {
            match r {
                Ok(r) => w.write(d, &r)?,
                Err(e) if a.keep_going => {
                    bar.suspend(|| eprintln!("skipped: extracting from {}: {e}", d.name));
                    skipped.push(d.name.clone());
                }
                Err(e) => {
                    bar.finish_and_clear();
                    w.out.flush().ok();
                    return Err(anyhow::Error::new(e).context(format!("extracting from {}", d.name)));
                }
            }
        }
        w.out.flush()?;
        bar.inc(taken);
        progress.tick(bar.position(), batch.iter().map(|d| d.text.len()).sum());
    }
    progress.done(bar.position());
    bar.finish_and_clear();
    w.finish()?;
    if !skipped.is_empty() {
        bail!("{} of {total} document(s) skipped (named above): {}", skipped.len(), skipped.join(", "));
    }
    Ok(())
}

/// Progress for logs: when stderr is not a terminal (a job log, a pipe) the bar is not drawn, so
/// a line is logged every 10 seconds instead (documents done, bytes read, elapsed, ETA).
struct ProgressLog {
    on: bool,
    total: usize,
    start: std::time::Instant,
    last: std::time::Instant,
    bytes: usize,
}

impl ProgressLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn new(total: usize) -> Self {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        Self { on: total > 1 && !std::io::stderr().is_terminal(), total, start: now, last: now, bytes: 0 }
    }

    fn tick(&mut self, done: u64, bytes: usize) {
        self.bytes += bytes;
        if self.on && self.last.elapsed() >= Self::EVERY {
            self.last = std::time::Instant::now();
            self.log(done);
        }
    }

    fn done(&self, done: u64) {
        if self.on {
            self.log(done);
        }
    }

    fn log(&self, done: u64) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = if done > 0 { elapsed / done as f64 * (self.total as f64 - done as f64) } else { f64::NAN };
        tracing::info!(documents = done, of = self.total, bytes = self.bytes, elapsed_s = elapsed.round(), eta_s = eta.round(), "extract progress");
    }
}
