//! The one image every container of the cluster runs: a root fs holding the `berth` binary under test and
//! Debian's `/usr/bin/etcd`, with the shared libraries and the loader `ldd` names for each, imported with
//! `docker import` (no registry, nothing pulled). Its tag is derived from the binaries' sizes and mtimes, so a
//! rebuilt `berth` gets a new image and an unchanged one is reused.

use super::docker::{docker, must};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const REPO: &str = "berth-cluster";
pub const ETCD: &str = "/usr/bin/etcd";

/// The image's tag, building it the first time in this process (later calls reuse it).
pub fn image(berth: &Path) -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| build(berth)).clone()
}

/// Bump when the image's layout changes.
const LAYOUT: u64 = 2;

fn fingerprint(paths: &[&Path]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ LAYOUT;
    for p in paths {
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        for v in [m.size(), m.mtime() as u64, m.mtime_nsec() as u64, m.ino()] {
            for b in v.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{h:016x}")
}

fn build(berth: &Path) -> String {
    let tag = format!("{REPO}:{}", fingerprint(&[berth, Path::new(ETCD)]));
    if docker(&["image", "inspect", &tag]).is_ok() {
        return tag;
    }
    // Older images of this harness are of no use once the binary changed.
    if let Ok(old) = docker(&["images", REPO, "--format", "{{.Repository}}:{{.Tag}}"]) {
        for t in old.lines() {
            let _ = docker(&["rmi", t]);
        }
    }
    let root = tempfile::tempdir().expect("temp dir for the root fs");
    let r = root.path();
    for dir in ["usr/local/bin", "usr/bin", "tmp", "etc", "var/lib/berth", "data"] {
        std::fs::create_dir_all(r.join(dir)).expect("root fs dir");
    }
    copy(berth, &r.join("usr/local/bin/berth"));
    copy(Path::new(ETCD), &r.join("usr/bin/etcd"));
    let mut libs = BTreeSet::new();
    libs.extend(shared_libraries(berth));
    libs.extend(shared_libraries(Path::new(ETCD)));
    for lib in libs {
        copy(&lib, &r.join(lib.strip_prefix("/").unwrap_or(&lib)));
    }
    // reqwest (rustls with the platform's roots) refuses to build a client without any system CA, and Berth
    // builds some (the agent's HTTP probes, the API's agent client) with the defaults.
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.exists() {
        copy(bundle, &r.join("etc/ssl/certs/ca-certificates.crt"));
    }
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("etc/passwd");
    std::fs::write(r.join("etc/group"), "root:x:0:\n").expect("etc/group");
    std::fs::set_permissions(r.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).expect("chmod /tmp");
    let mut tar = Command::new("tar")
        .args(["-C"])
        .arg(r)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tar (to make the image's root fs)");
    let import = Command::new("docker")
        .args(["import", "-c", "ENV PATH=/usr/local/bin:/usr/bin HOME=/tmp TMPDIR=/tmp", "-c", "WORKDIR /", "-", &tag])
        .stdin(tar.stdout.take().expect("tar stdout"))
        .output()
        .expect("run docker import");
    let _ = tar.wait();
    assert!(import.status.success(), "docker import: {}", String::from_utf8_lossy(&import.stderr));
    // Prove the image runs both binaries before a cluster depends on it.
    must(&["run", "--rm", "--label", super::docker::LABEL, &tag, "/usr/bin/etcd", "--version"]);
    let version = must(&["run", "--rm", "--label", super::docker::LABEL, &tag, "/usr/local/bin/berth", "--version"]);
    let _ = std::io::stderr().write_all(format!("cluster image {tag}: {version}\n").as_bytes());
    tag
}

fn copy(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).expect("root fs dir");
    }
    // Follows symlinks (the loader is one on merged-/usr Debian): the image gets the file itself.
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} into the root fs: {e}", from.display()));
}

/// The shared objects `binary` loads (libraries and the loader) as `ldd` lists them; none for a static binary.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line.split_once("=>").map_or(line, |(_, p)| p.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Whether `berth` was built with the etcd store (the binary otherwise carries the refusal message).
pub fn has_etcd(berth: &Path) -> bool {
    let needle = b"this binary was built without etcd support";
    match std::fs::read(berth) {
        Ok(bytes) => !bytes.windows(needle.len()).any(|w| w == needle),
        Err(_) => false,
    }
}
