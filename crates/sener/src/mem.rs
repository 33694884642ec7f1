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
