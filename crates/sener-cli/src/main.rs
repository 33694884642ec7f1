//! `sener`: long-document named-entity extraction with SeNER.

mod bench;
mod bench_collective;
mod bench_dtype;
mod bench_matmul;
mod bench_model;
mod bench_soak;
mod bench_throughput;
mod cli;
mod common;
mod data_cmds;
mod encode;
mod eval;
mod input;
mod extract;
mod plot;
mod score;
mod serve;
mod train;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, told never to return freed pages to the kernel (see [`keep_freed_pages`]).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// From the statically linked mimalloc (libmimalloc-sys).
    fn mi_option_set(option: i32, value: std::os::raw::c_long);
    fn mi_reserve_os_memory(size: usize, commit: bool, allow_large: bool) -> std::os::raw::c_int;
}

/// A training step or a long-document forward allocates gigabytes of band-sized temporaries and
/// frees them again; returned to the kernel, every page is faulted in and zeroed again on the next
/// use (`perf`: over 40% of a training step in `clear_page_erms`). Purging off keeps them.
/// Measured on 3 training steps (2 × 512 tokens, MiniLM): system allocator 94 s, mimalloc with
/// these options 20 s together with the fused kernels (sys time 70 s → 7 s).
fn keep_freed_pages() {
    // mimalloc v3 option indices (`mi_option_e` in mimalloc.h).
    const ARENA_EAGER_COMMIT: i32 = 4;
    const PURGE_DECOMMITS: i32 = 5;
    const PURGE_DELAY: i32 = 15;
    const ARENA_RESERVE: i32 = 23; // KiB; address space only, committed on use
    // An option named in the environment (`MIMALLOC_PURGE_DELAY=…`, mimalloc reads those itself)
    // is left as the user set it.
    let set = |option: i32, env: &str, value: std::os::raw::c_long| {
        if std::env::var_os(env).is_none() {
            // SAFETY: a plain option setter of the allocator this binary links, before any
            // thread starts.
            unsafe { mi_option_set(option, value) };
        }
    };
    set(PURGE_DELAY, "MIMALLOC_PURGE_DELAY", -1);
    set(PURGE_DECOMMITS, "MIMALLOC_PURGE_DECOMMITS", 0);
    // Arenas are mapped read-write at once (Linux commits a page on first touch anyway):
    // committing on demand cost ~0.5 s of system time per long forward.
    set(ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 1);
    // Later arenas of 8 GiB. mimalloc v3 refuses arenas above 16 GiB (its bitmap limit,
    // meta-data included), and an allocation no arena can hold goes to a fresh OS mapping that
    // is unmapped on free: faulted in and zeroed again on every forward (`sener bench model`
    // saw ~3,400 2-MiB page faults, ~6 GiB zeroed, per 5,120-token DeBERTa forward with the
    // 32 GiB reservation this replaced, which mimalloc silently refused).
    set(ARENA_RESERVE, "MIMALLOC_ARENA_RESERVE", 8 << 20);
    if std::env::var_os("MIMALLOC_RESERVE_OS_MEMORY").is_none() {
        // SAFETY: reserves address space for one arena (pages are committed on first use).
        unsafe {
            if mi_reserve_os_memory(15 << 30, false, true) != 0 {
                let _ = mi_reserve_os_memory(4 << 30, false, true);
            }
        }
    }
}

/// Logs to stderr through `tracing`: `RUST_LOG` when set, else `--log-level`; text or JSON lines.
fn init_logging(level: &str, json: bool) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG={v:?}: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?,
    };
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    if json {
        fmt.json().flatten_event(true).init();
    } else {
        fmt.init();
    }
    Ok(())
}

fn main() -> ExitCode {
    keep_freed_pages();
    let args = cli::Cli::parse();
    if let Err(e) = init_logging(&args.log_level, args.log_format == "json") {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
