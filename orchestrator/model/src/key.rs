//! Store keys: what identifies a stored object ([`Key`]) and a set of them ([`Prefix`]). The store, the API and
//! every controller address objects by these.

use std::fmt;

/// Identifies one stored object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The plural resource name, e.g. `deployments`.
    pub kind: String,
    /// Empty for cluster-scoped kinds (nodes).
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { kind: kind.into(), namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A set of keys: one kind, optionally one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub kind: String,
    /// `None` means every namespace.
    pub namespace: Option<String>,
}

impl Prefix {
    pub fn contains(&self, key: &Key) -> bool {
        key.kind == self.kind && self.namespace.as_ref().is_none_or(|ns| *ns == key.namespace)
    }
}
