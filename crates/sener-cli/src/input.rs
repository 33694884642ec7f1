//! Reading input with a bound: files, standard input and non-regular files (`/dev/zero`, pipes,
//! FIFOs) are read in chunks and refused past `--max-input-bytes`, and text that holds a NUL byte
//! is refused as binary as soon as the chunk that holds it arrives, not after the whole read.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The default `--max-input-bytes`: 1 GiB, far above any document (a 100,000-word text is
/// under 1 MB) and well below this machine's memory.
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 1 << 30;

const CHUNK: usize = 1 << 16;

/// Reads everything from `r` (named `name` in errors), at most `limit` bytes; with `text`,
/// refuses a NUL byte (naming its offset) as soon as it is read.
pub fn read_bounded(mut r: impl Read, name: &str, limit: u64, text: bool) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {name}")),
        };
        if text {
            if let Some(i) = buf[..n].iter().position(|&b| b == 0) {
                bail!("{name}: looks binary (NUL byte at offset {}); sener reads UTF-8 text", out.len() + i);
            }
        }
        if out.len() as u64 + n as u64 > limit {
            bail!("{name}: more than {limit} bytes (--max-input-bytes); split the input, or raise the limit if this really is one document");
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// A file's bytes, bounded as [`read_bounded`]; a regular file larger than the limit is refused
/// before anything is read.
pub fn read_file(path: &Path, limit: u64, text: bool) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).with_context(|| format!("reading {name}"))?;
    let meta = f.metadata().with_context(|| format!("reading {name}"))?;
    if meta.is_dir() {
        bail!("{name} is a folder");
    }
    if meta.is_file() && meta.len() > limit {
        bail!("{name}: {} bytes, more than {limit} (--max-input-bytes); split the input, or raise the limit if this really is one document", meta.len());
    }
    read_bounded(f, &name, limit, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded_and_nul_is_found_early() {
        assert_eq!(read_bounded(&b"abc"[..], "x", 3, true).unwrap(), b"abc");
        let err = read_bounded(&b"abcd"[..], "x", 3, true).unwrap_err().to_string();
        assert!(err.contains("more than 3 bytes"), "{err}");
        // An endless source stops at the limit.
        let err = read_bounded(std::io::repeat(b'a'), "endless", 1 << 20, true).unwrap_err().to_string();
        assert!(err.contains("endless: more than 1048576 bytes"), "{err}");
        // /dev/zero is refused at its first chunk, not after gigabytes.
        let err = read_bounded(std::io::repeat(0), "zeros", u64::MAX, true).unwrap_err().to_string();
        assert!(err.contains("NUL byte at offset 0"), "{err}");
        let mut data = vec![b'a'; 100_000];
        data[70_000] = 0;
        let err = read_bounded(&data[..], "x", u64::MAX, true).unwrap_err().to_string();
        assert!(err.contains("offset 70000"), "{err}");
        assert_eq!(read_bounded(&data[..], "x", u64::MAX, false).unwrap().len(), 100_000);
    }
}
