//! Process memory readings for benchmarks (Linux `/proc`; `None` elsewhere).

/// Peak resident set size (VmHWM) in bytes.
pub fn peak_rss() -> Option<u64> {
    read_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size (VmRSS) in bytes.
pub fn current_rss() -> Option<u64> {
    read_status_kb("VmRSS:").map(|kb| kb * 1024)
}

/// Resets the peak (VmHWM) to the current RSS (`echo 5 > /proc/self/clear_refs`), so that one
/// process can measure several runs. Returns false where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn read_status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Blocks of [`warm_heap`]: each is served from the allocator's arena (mimalloc, as the `sener`
/// binary links it, hands a single allocation above about 1 GiB to the OS directly, which
/// unmaps it on free; touching 2 GiB in one block took 3.5 s and warmed nothing).
const WARM_BLOCK: usize = 128 << 20;

/// Touches `bytes` of fresh heap, in blocks all held at once and then freed, and returns the
/// time it took. Under an allocator that keeps freed pages (the `sener` binary's mimalloc, purge
/// off) a later forward pass reuses that memory instead of faulting in and zeroing fresh pages
/// while it computes: the first 5,120-token forward of a fresh process (DeBERTa-v3-base shape,
/// bf16) took 6.33 s cold and 5.51 s after touching 1 GiB in 0.34 s, against 5.12 s steady.
/// The CLI does it on a thread while the model loads. Under an allocator that returns freed
/// blocks to the kernel it only costs time.
pub fn warm_heap(bytes: usize) -> std::time::Duration {
    let t = std::time::Instant::now();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(WARM_BLOCK);
        let mut v: Vec<u8> = Vec::with_capacity(n);
        // one write per 4 KiB page, through the spare capacity (no read of uninitialised bytes)
        for page in v.spare_capacity_mut().chunks_mut(4096) {
            page[0].write(1);
        }
        held.push(v);
        left -= n;
    }
    drop(held);
    t.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The touched memory is really faulted in: the peak RSS grows by about the amount asked for
    /// (Linux; elsewhere there is nothing to read).
    #[test]
    fn warm_heap_faults_in_what_it_is_asked_for() {
        let Some(before) = current_rss() else { return };
        if !reset_peak_rss() {
            return;
        }
        let bytes = 3 * WARM_BLOCK / 2; // one whole block and a partial one
        warm_heap(bytes);
        let peak = peak_rss().unwrap_or(0);
        assert!(peak >= before + (bytes as u64) * 9 / 10, "peak RSS {peak} after warming {bytes} bytes from {before}");
    }
}
