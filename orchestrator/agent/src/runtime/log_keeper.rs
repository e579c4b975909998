//! The log keeper: one small process per container of the process runtime that reads the container's
//! stdout/stderr pipe and writes it to size-rotated files.
//!
//! Why a process of its own: the workload must never depend on the agent being alive (an agent restarted
//! after `kill -9` must find its pods still running and still logging), and a file the workload writes
//! itself can only be rotated by copy-and-truncate, which loses whatever is written between the copy and
//! the truncation. The keeper is the only writer of its files, so it rotates by rename, between two writes,
//! and loses nothing (as conmon and containerd-shim do for their runtimes). It runs in a process group of
//! its own, so a stop aimed at the workload's group leaves it to drain the pipe; it exits when every writer
//! has closed it.
//!
//! Started as `<berth> log-keeper --max-bytes N --files K PATH` with the pipe as stdin.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The subcommand name the runtime starts the keeper with.
pub const SUBCOMMAND: &str = "log-keeper";

/// Arguments after [`SUBCOMMAND`] for a keeper of `path`.
pub(crate) fn args(path: &Path, max_bytes: u64, files: usize) -> Vec<std::ffi::OsString> {
    vec![
        SUBCOMMAND.into(),
        "--max-bytes".into(),
        max_bytes.to_string().into(),
        "--files".into(),
        files.to_string().into(),
        path.into(),
    ]
}

/// `PATH.n`: the n-th rotated file (1 is the newest).
pub(crate) fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Entry point of `berth log-keeper ARGS` (ARGS without the subcommand name): keeps stdin's bytes and
/// returns the process exit code. Both `berth` and `berth-echo` call it, as either may be the runtime's
/// own executable.
pub fn main(args: &[String]) -> i32 {
    let (path, max_bytes, files) = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth log-keeper: {e}");
            return 2;
        }
    };
    keep(std::io::stdin().lock(), &path, max_bytes, files);
    0
}

fn parse(args: &[String]) -> Result<(PathBuf, u64, usize), String> {
    let (mut path, mut max_bytes, mut files) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--max-bytes" => max_bytes = Some(positive(a, it.next())?),
            "--files" => files = Some(positive(a, it.next())?),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag:?}")),
            p if path.is_none() => path = Some(PathBuf::from(p)),
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    Ok((path.ok_or("missing the log file path")?, max_bytes.unwrap_or(10 << 20), files.unwrap_or(3)))
}

fn positive<T: std::str::FromStr + Default + PartialOrd>(flag: &str, value: Option<&String>) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().ok().filter(|n| *n > T::default()).ok_or_else(|| format!("{flag}: {v:?} is not a positive number"))
}

/// Copy `input` to `path` until end of input, keeping each file at most `max_bytes` long and `files` files
/// in all. A file is rotated before the write that would overflow it, at the last line end that fits, so
/// lines stay whole unless one alone is longer than a file. Write errors (a full disk) drop the bytes
/// concerned and retry on the next read: the workload must never block on its log.
pub(crate) fn keep(mut input: impl Read, path: &Path, max_bytes: u64, files: usize) {
    let mut out = Output { path, max_bytes, files, file: None, size: 0 };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        out.write(&buf[..n]);
    }
}

struct Output<'a> {
    path: &'a Path,
    max_bytes: u64,
    files: usize,
    file: Option<File>,
    size: u64,
}

impl Output<'_> {
    fn write(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if !self.open() {
                return;
            }
            let room = usize::try_from(self.max_bytes.saturating_sub(self.size)).unwrap_or(usize::MAX);
            let cut = if chunk.len() <= room {
                chunk.len()
            } else {
                match chunk[..room].iter().rposition(|b| *b == b'\n') {
                    Some(i) => i + 1,
                    // No line end fits: start a new file, or split a line longer than a whole file.
                    None if self.size > 0 => 0,
                    None => room,
                }
            };
            if cut > 0 {
                let written = self.file.as_mut().is_some_and(|f| f.write_all(&chunk[..cut]).is_ok());
                if !written {
                    self.file = None;
                    return;
                }
                self.size += cut as u64;
                chunk = &chunk[cut..];
            }
            if !chunk.is_empty() && self.rotate().is_err() {
                self.file = None;
            }
        }
    }

    /// Opens the current file when it is not open; false when it cannot be.
    fn open(&mut self) -> bool {
        if self.file.is_none() {
            let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(self.path) else {
                return false;
            };
            self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(f);
        }
        true
    }

    /// `PATH.(k-1)` -> `PATH.k`, ..., `PATH` -> `PATH.1`; the next write creates `PATH` afresh.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.files - 1;
        if keep == 0 {
            self.file.as_ref().map(|f| f.set_len(0)).transpose()?;
            self.size = 0;
            return Ok(());
        }
        for n in (1..keep).rev() {
            match std::fs::rename(numbered(self.path, n), numbered(self.path, n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(self.path, numbered(self.path, 1))?;
        self.file = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Reads in pieces of `.1` bytes, or of `.1` whole lines when `.2`: a pipe delivers each of a writer's
    /// writes whole (up to PIPE_BUF), and most writers write whole lines.
    struct Pieces<'a>(&'a [u8], usize, bool);
    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let mut n = self.0.len().min(self.1);
            if self.2 {
                n = self
                    .0
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .nth(self.1 - 1)
                    .map_or(self.0.len(), |(i, _)| i + 1);
            }
            let n = n.min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn rotation_stays_within_the_size_and_loses_none_of_the_kept_bytes() {
        let text: String = (0..500).map(|i| format!("line {i}\n")).collect();
        for (piece, lines) in [(1, false), (7, false), (100, false), (64 * 1024, false), (1, true), (5, true)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("app-0.log");
            keep(Pieces(text.as_bytes(), piece, lines), &path, 256, 3);
            let (f2, f1, f0) = (read(&numbered(&path, 2)), read(&numbered(&path, 1)), read(&path));
            let at = format!("pieces of {piece} {}", if lines { "lines" } else { "bytes" });
            for f in [&f2, &f1, &f0] {
                assert!(f.len() <= 256, "{at}: a file of {} bytes", f.len());
                if lines || piece > 256 {
                    assert!(f.is_empty() || f.ends_with('\n'), "{at}: a line split across files");
                }
            }
            assert!(!numbered(&path, 3).exists(), "{at}: keeps 3 files in all");
            let kept = format!("{f2}{f1}{f0}");
            assert!(text.ends_with(&kept), "{at}: the kept bytes are the last ones, with no gap");
            assert!(kept.len() > 2 * 200, "{at}: rotated files are kept ({} bytes)", kept.len());
        }
    }

    #[test]
    fn a_line_longer_than_a_file_is_split_and_one_file_means_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.log");
        keep(&b"0123456789abcdef\nxy\n"[..], &path, 8, 2);
        assert_eq!(read(&numbered(&path, 1)), "89abcdef");
        assert_eq!(read(&path), "\nxy\n");

        let single = dir.path().join("single.log");
        keep(&b"aaaa\nbbbb\ncc\n"[..], &single, 6, 1);
        assert_eq!(read(&single), "cc\n");
        assert!(!numbered(&single, 1).exists());
    }

    #[test]
    fn bad_arguments_name_the_flag() {
        let a = |s: &[&str]| parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(a(&["--files", "2", "/x"]).unwrap(), (PathBuf::from("/x"), 10 << 20, 2));
        assert!(a(&["--max-bytes", "0", "/x"]).unwrap_err().contains("--max-bytes"));
        assert!(a(&["--files", "many", "/x"]).unwrap_err().contains("--files"));
        assert!(a(&["--files"]).unwrap_err().contains("needs a value"));
        assert!(a(&["--what", "/x"]).unwrap_err().contains("--what"));
        assert!(a(&[]).unwrap_err().contains("path"));
        assert!(a(&["/x", "/y"]).unwrap_err().contains("/y"));
    }
}
