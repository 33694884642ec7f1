//! `sener bench soak`: a long load test of `sener serve` on loopback. It starts the server as a
//! child process (`--addr 127.0.0.1:0`), runs `--clients` concurrent clients for `--minutes`,
//! each posting paragraphs of 40–94 words cut from a text, samples the server's RSS every
//! `--sample-secs`, and checks every answer: status 200, and for each paragraph the same entities
//! every time it is sent, however it was batched (the first answer is the reference; scores
//! equal to 1e-4). It then stops the server with
//! SIGTERM and prints throughput, latency percentiles, the RSS over time and every fault.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

/// `sener bench soak`'s flags.
#[derive(Args, Debug)]
pub struct BenchSoakArgs {
    /// Model folder the server loads.
    #[arg(long, default_value = "models/sener-minilm-scholarxl")]
    pub model: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Duration of the load, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seconds between two RSS samples of the server.
    #[arg(long, default_value_t = 10.0)]
    pub sample_secs: f64,
    /// Text to cut the paragraphs from. [examples/scholar-homepage.txt]
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One answered request.
struct Sample {
    at: f64,
    seconds: f64,
    status: u16,
    words: usize,
}

/// Posts `body` to `path` on loopback `port` (HTTP/1.1, `Connection: close`); returns the status
/// and the body.
fn post(port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    write!(s, "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

/// VmRSS of a process, bytes.
fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// The same spans and labels, scores equal to 1e-4 (a text batched with others may get scores
/// that differ in the last bits from those it gets alone).
fn same_entities(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_array(), b.as_array()) else { return false };
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x["start"] == y["start"]
                && x["end"] == y["end"]
                && x["label"] == y["label"]
                && x["score"].as_f64().zip(y["score"].as_f64()).is_some_and(|(p, q)| (p - q).abs() < 1e-4)
        })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(a: BenchSoakArgs) -> Result<()> {
    if !(1..=256).contains(&a.clients) {
        bail!("--clients {} must be in 1..=256", a.clients);
    }
    if !(a.minutes > 0.0 && a.minutes <= 24.0 * 60.0) {
        bail!("--minutes {} must be in (0, 1440]", a.minutes);
    }
    if !(a.sample_secs >= 0.1 && a.sample_secs <= 3600.0) {
        bail!("--sample-secs {} must be in [0.1, 3600]", a.sample_secs);
    }
    let text = match &a.text {
        Some(p) => String::from_utf8(crate::input::read_file(p, 64 << 20, true)?).with_context(|| format!("{}: not UTF-8", p.display()))?,
        None => include_str!("../../../examples/scholar-homepage.txt").to_string(),
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 100 {
        bail!("the text has {} words; the soak needs at least 100", words.len());
    }
    // Paragraphs of 40–94 words, a fixed draw.
    let mut paragraphs = Vec::new();
    let (mut at, mut x) = (0usize, 7u64);
    while paragraphs.len() < 64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let n = 40 + (x >> 33) as usize % 55;
        paragraphs.push((0..n).map(|i| words[(at + i) % words.len()]).collect::<Vec<_>>().join(" "));
        at += n;
    }

    let exe = std::env::current_exe().context("locating the sener binary")?;
    let mut child = Command::new(exe)
        .args(["--log-level", "warn", "serve", "--addr", "127.0.0.1:0", "--queue"])
        .arg((2 * a.clients).to_string())
        .arg("--model")
        .arg(&a.model)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting sener serve")?;
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("the server's stdout")?).read_line(&mut line).context("reading the server's address")?;
    let Some(port) = line.trim().strip_prefix("listening on http://").and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse::<u16>().ok()) else {
        let _ = child.kill();
        bail!("the server did not start: {line:?}");
    };
    eprintln!("soak: server pid {pid} on port {port}; {} clients for {} min", a.clients, a.minutes);

    // References: every paragraph once, before the load.
    let mut reference: Vec<Value> = Vec::new();
    for p in &paragraphs {
        let (status, body) = post(port, "/v1/extract", &json!({ "text": p }).to_string())?;
        if status != 200 {
            let _ = child.kill();
            bail!("reference request answered {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body)?;
        reference.push(v["entities"].clone());
    }
    let reference = Arc::new(reference);
    let paragraphs = Arc::new(paragraphs);

    let t0 = Instant::now();
    let deadline = Duration::from_secs_f64(a.minutes * 60.0);
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let faults = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut rss: Vec<(f64, u64)> = rss_of(pid).map(|r| vec![(0.0, r)]).unwrap_or_default();
    let clients: Vec<_> = (0..a.clients)
        .map(|c| {
            let (samples, faults, paragraphs, reference) = (samples.clone(), faults.clone(), paragraphs.clone(), reference.clone());
            std::thread::spawn(move || {
                let mut k = c;
                while t0.elapsed() < deadline {
                    let i = k % paragraphs.len();
                    k += 7;
                    let start = Instant::now();
                    let r = post(port, "/v1/extract", &json!({ "text": paragraphs[i] }).to_string());
                    let seconds = start.elapsed().as_secs_f64();
                    let (status, words) = match r {
                        Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
                            Ok(v) if same_entities(&v["entities"], &reference[i]) => (200, v["words"].as_u64().unwrap_or(0) as usize),
                            Ok(_) => {
                                faults.lock().map(|mut f| f.push(format!("paragraph {i}: entities differ from its first answer"))).ok();
                                (200, 0)
                            }
                            Err(e) => {
                                faults.lock().map(|mut f| f.push(format!("paragraph {i}: not JSON: {e}"))).ok();
                                (200, 0)
                            }
                        },
                        Ok((status, body)) => {
                            faults.lock().map(|mut f| f.push(format!("paragraph {i}: status {status}: {body}"))).ok();
                            (status, 0)
                        }
                        Err(e) => {
                            faults.lock().map(|mut f| f.push(format!("paragraph {i}: {e}"))).ok();
                            (0, 0)
                        }
                    };
                    samples.lock().map(|mut s| s.push(Sample { at: t0.elapsed().as_secs_f64(), seconds, status, words })).ok();
                }
            })
        })
        .collect();
    let sampler = {
        let done = done.clone();
        let every = Duration::from_secs_f64(a.sample_secs);
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut next = every;
            while !done.load(Ordering::Relaxed) {
                if t0.elapsed() >= next {
                    if let Some(r) = rss_of(pid) {
                        out.push((t0.elapsed().as_secs_f64(), r));
                    }
                    next += every;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            out
        })
    };
    for c in clients {
        let _ = c.join();
    }
    done.store(true, Ordering::Relaxed);
    rss.extend(sampler.join().unwrap_or_default());
    let wall = t0.elapsed().as_secs_f64();
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().context("waiting for the server")?;

    let samples = samples.lock().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    let faults = faults.lock().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.status == 200).collect();
    let mut lat: Vec<f64> = ok.iter().map(|s| s.seconds).collect();
    lat.sort_by(f64::total_cmp);
    let words: usize = ok.iter().map(|s| s.words).sum();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("soak: {} for {:.1} min, {} clients, paragraphs of 40–94 words\n", a.model.display(), wall / 60.0, a.clients);
    println!("| requests | answered 200 | faults | requests/s | words/s | p50 s | p90 s | p99 s | max s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        samples.len(),
        ok.len(),
        faults.len(),
        ok.len() as f64 / wall,
        words as f64 / wall,
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!("| t (s) | server RSS (MiB) | requests answered by then |");
    println!("|---:|---:|---:|");
    for (t, r) in &rss {
        println!("| {t:.0} | {:.1} | {} |", mib(*r), ok.iter().filter(|s| s.at <= *t).count());
    }
    // RSS growth after the first minute (the model and allocator pools warm up before that).
    let after_1m: Vec<u64> = rss.iter().filter(|(t, _)| *t >= 60.0).map(|&(_, r)| r).collect();
    let growth = match (after_1m.first(), after_1m.last()) {
        (Some(&a), Some(&b)) => Some(mib(b) - mib(a)),
        _ => None,
    };
    if let Some(g) = growth {
        println!("\nRSS from the first minute to the end: {g:+.1} MiB");
    }
    println!("server exit: {status}");
    for f in faults.iter().take(20) {
        println!("fault: {f}");
    }
    if let Some(p) = &a.json {
        let v = json!({
            "model": a.model, "clients": a.clients, "minutes": wall / 60.0, "requests": samples.len(), "ok": ok.len(),
            "faults": *faults, "requests_per_s": ok.len() as f64 / wall, "words_per_s": words as f64 / wall,
            "p50_s": percentile(&lat, 0.5), "p90_s": percentile(&lat, 0.9), "p99_s": percentile(&lat, 0.99),
            "rss_mib": rss.iter().map(|&(t, r)| json!([t, mib(r)])).collect::<Vec<_>>(), "rss_growth_after_1min_mib": growth,
            "server_exit_ok": status.success(),
        });
        std::fs::write(p, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if !faults.is_empty() || !status.success() {
        bail!("{} faults; server exit {status}", faults.len());
    }
    Ok(())
}
