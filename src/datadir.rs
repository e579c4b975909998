//! The data dir: the API token (mode 0600), the recorded API address, and the embedded store file.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const TOKEN_FILE: &str = "token";
pub const ADDRESS_FILE: &str = "api-address";

/// `$XDG_DATA_HOME/berth`, else `~/.local/share/berth`.
pub fn default_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("berth");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/berth")
}

pub fn ensure(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data dir {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Read the token file, creating it with a fresh random token (mode 0600) when it does not exist.
pub fn load_or_create_token(path: &Path) -> Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        anyhow::ensure!(!t.is_empty(), "token file {} is empty", path.display());
        return Ok(t);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("cannot generate a token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).with_context(|| format!("cannot create token file {}", path.display()))?;
    writeln!(f, "{token}").with_context(|| format!("cannot write token file {}", path.display()))?;
    Ok(token)
}

pub fn read_token(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

pub fn record_address(dir: &Path, url: &str) -> Result<()> {
    let path = dir.join(ADDRESS_FILE);
    std::fs::write(&path, format!("{url}\n")).with_context(|| format!("cannot write {}", path.display()))
}

pub fn recorded_address(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(ADDRESS_FILE)).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
