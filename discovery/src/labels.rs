//! Label maps and their validation (Kubernetes rules).

use std::collections::BTreeMap;

/// A set of labels. Ordered so that display and hashing are deterministic.
pub type Labels = BTreeMap<String, String>;

/// Why a label key or value is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("invalid label key {key:?}: {reason}")]
    Key { key: String, reason: &'static str },
    #[error("invalid label value {value:?}: {reason}")]
    Value { value: String, reason: &'static str },
}

/// Validate a key: optional DNS-subdomain prefix (<= 253) and `/`, then a name of <= 63 characters of
/// `[A-Za-z0-9-_.]`, starting and ending alphanumeric.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let err = |reason| Err(LabelError::Key { key: key.to_string(), reason });
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return err("prefix must be 1 to 253 characters");
        }
        for part in p.split('.') {
            if part.is_empty()
                || !part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                || part.starts_with('-')
                || part.ends_with('-')
            {
                return err("prefix must be a lowercase DNS subdomain");
            }
        }
    }
    if name.is_empty() {
        return err("name part must not be empty");
    }
    if let Err(reason) = check_name(name) {
        return err(reason);
    }
    Ok(())
}

/// Validate a value: empty, or <= 63 characters of `[A-Za-z0-9-_.]` starting and ending alphanumeric.
pub fn validate_value(value: &str) -> Result<(), LabelError> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|reason| LabelError::Value { value: value.to_string(), reason })
}

fn check_name(s: &str) -> Result<(), &'static str> {
    if s.len() > 63 {
        return Err("must be at most 63 characters");
    }
    let b = s.as_bytes();
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err("must start and end with an alphanumeric character");
    }
    if !b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
        return Err("may contain only alphanumerics, '-', '_' and '.'");
    }
    Ok(())
}

/// Validate every key and value of a label map.
pub fn validate(labels: &Labels) -> Result<(), LabelError> {
    for (k, v) in labels {
        validate_key(k)?;
        validate_value(v)?;
    }
    Ok(())
}
