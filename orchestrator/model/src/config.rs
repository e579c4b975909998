//! The [`ConfigMap`] and [`Secret`] kinds: data a pod reads as environment or files.

use super::meta::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Base64-encoded values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

pub(crate) fn check_data_key(path: &str, key: &str) -> CheckResult {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && !key.starts_with("..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(field_err(path, format!("invalid key {key:?} (use alphanumerics, '-', '_' or '.')")))
    }
}

/// Line-wrapped base64 (as `base64` prints it) is accepted, as Kubernetes accepts it.
fn strip_whitespace(value: &str) -> String {
    value.chars().filter(|c| !c.is_ascii_whitespace()).collect()
}

fn check_base64(path: &str, value: &str) -> CheckResult {
    use base64::Engine;
    // The message never includes the value: it may be a secret.
    base64::engine::general_purpose::STANDARD
        .decode(strip_whitespace(value))
        .map(|_| ())
        .map_err(|_| field_err(path, "value is not valid base64"))
}

impl ConfigMap {
    pub(crate) fn check(&self, _cx: &mut Check) -> CheckResult {
        for k in self.data.keys() {
            check_data_key(&format!("data.{k}"), k)?;
        }
        for (k, v) in &self.binary_data {
            let p = format!("binaryData.{k}");
            check_data_key(&p, k)?;
            check_base64(&p, v)?;
            if self.data.contains_key(k) {
                return Err(field_err(p, "key also present in data"));
            }
        }
        Ok(())
    }
}

fn default_secret_type() -> String {
    "Opaque".into()
}

/// A Secret. `stringData` is folded into `data` (base64) when the object is normalized, so a stored Secret
/// only has `data`. `Debug` never prints values.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(rename = "type", default = "default_secret_type")]
    pub type_: String,
    /// Base64-encoded values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("keys", &self.data.keys().chain(self.string_data.keys()).collect::<Vec<_>>())
            .finish()
    }
}

impl Secret {
    /// The decoded value of a key (after normalization every key is in `data`).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        if let Some(v) = self.string_data.get(key) {
            return Some(v.as_bytes().to_vec());
        }
        base64::engine::general_purpose::STANDARD.decode(strip_whitespace(self.data.get(key)?)).ok()
    }

    pub(crate) fn normalize(&mut self) {
        use base64::Engine;
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, base64::engine::general_purpose::STANDARD.encode(v.as_bytes()));
        }
    }

    pub(crate) fn check(&self, _cx: &mut Check) -> CheckResult {
        for (k, v) in &self.data {
            let p = format!("data.{k}");
            check_data_key(&p, k)?;
            check_base64(&p, v)?;
        }
        for k in self.string_data.keys() {
            check_data_key(&format!("stringData.{k}"), k)?;
        }
        if self.type_.is_empty() {
            return Err(field_err("type", "must not be empty"));
        }
        if self.type_ == "kubernetes.io/tls" {
            for key in ["tls.crt", "tls.key"] {
                if !self.data.contains_key(key) && !self.string_data.contains_key(key) {
                    return Err(field_err(format!("data.{key}"), "required for type kubernetes.io/tls"));
                }
            }
        }
        Ok(())
    }
}
