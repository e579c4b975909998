//! Lookup keys for names: the wire form of a name (length-prefixed labels, no root byte) with ASCII
//! letters lowercased, built on the stack so the query path does not allocate.
//!
//! DNS compares names ASCII-case-insensitively; lowering once into a key lets the answer tables be
//! plain hash maps. This is not a parser: names come from hickory-proto's decoder.

use hickory_proto::rr::{Label, Name};

/// The longest wire name is 255 bytes including the root byte, so at most 127 labels.
const MAX_KEY: usize = 255;
const MAX_LABELS: usize = 128;

/// A lowercased wire-form name with the offsets where each label starts.
pub(crate) struct NameKey {
    buf: [u8; MAX_KEY],
    len: usize,
    starts: [u8; MAX_LABELS],
    labels: usize,
}

impl NameKey {
    /// The key of `name`, or `None` if it is longer than a wire name may be (a decoded name never is).
    pub(crate) fn of(name: &Name) -> Option<Self> {
        let mut key = Self { buf: [0; MAX_KEY], len: 0, starts: [0; MAX_LABELS], labels: 0 };
        for label in name.iter() {
            if !key.push(label) {
                return None;
            }
        }
        Some(key)
    }

    /// The key of a name given as raw labels (leftmost first).
    pub(crate) fn from_labels<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Option<Self> {
        let mut key = Self { buf: [0; MAX_KEY], len: 0, starts: [0; MAX_LABELS], labels: 0 };
        for label in labels {
            if !key.push(label) {
                return None;
            }
        }
        Some(key)
    }

    fn push(&mut self, label: &[u8]) -> bool {
        // One length byte, the label, and room for the root byte that the wire form adds.
        if label.is_empty() || label.len() > 63 || self.len + 1 + label.len() + 1 > MAX_KEY || self.labels == MAX_LABELS
        {
            return false;
        }
        self.starts[self.labels] = self.len as u8;
        self.labels += 1;
        self.buf[self.len] = label.len() as u8;
        for (dst, src) in self.buf[self.len + 1..self.len + 1 + label.len()].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        self.len += 1 + label.len();
        true
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn num_labels(&self) -> usize {
        self.labels
    }

    /// Length of the uncompressed wire encoding (with the root byte).
    pub(crate) fn wire_len(&self) -> usize {
        self.len + 1
    }

    /// The key of the name made of labels `from..` (a suffix of this name).
    pub(crate) fn suffix(&self, from: usize) -> &[u8] {
        if from >= self.labels {
            return &[];
        }
        &self.buf[self.starts[from] as usize..self.len]
    }

    /// The lowercased bytes of label `i` (leftmost is 0).
    pub(crate) fn label(&self, i: usize) -> &[u8] {
        let start = self.starts[i] as usize;
        let len = self.buf[start] as usize;
        &self.buf[start + 1..start + 1 + len]
    }

    /// The hickory name for this key (lowercase). Only used when building tables.
    pub(crate) fn to_name(&self) -> Option<Name> {
        let labels: Result<Vec<Label>, _> = (0..self.labels).map(|i| Label::from_raw_bytes(self.label(i))).collect();
        let mut name = Name::from_labels(labels.ok()?).ok()?;
        name.set_fqdn(true);
        Some(name)
    }
}

/// Iterate the proper ancestors of a key, from the parent upwards, as suffix slices.
pub(crate) fn ancestors(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = key;
    std::iter::from_fn(move || {
        let first = *rest.first()? as usize;
        rest = rest.get(1 + first..)?;
        if rest.is_empty() {
            None
        } else {
            Some(rest)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn keys_are_lowercase_wire_form() {
        let name = Name::from_str("Web.Default.svc.Cluster.Local.").unwrap();
        let key = NameKey::of(&name).unwrap();
        assert_eq!(key.as_bytes(), b"\x03web\x07default\x03svc\x07cluster\x05local");
        assert_eq!(key.num_labels(), 5);
        assert_eq!(key.suffix(3), b"\x07cluster\x05local");
        assert_eq!(key.label(1), b"default");
        assert_eq!(key.wire_len(), name.len() + 1);
        let back = key.to_name().unwrap();
        assert_eq!(back, name);
    }

    #[test]
    fn ancestors_walk_to_the_last_label() {
        let got: Vec<&[u8]> = ancestors(b"\x01a\x01b\x01c").collect();
        assert_eq!(got, vec![&b"\x01b\x01c"[..], &b"\x01c"[..]]);
        assert_eq!(ancestors(b"").count(), 0);
    }

    #[test]
    fn labels_with_dots_stay_one_label() {
        let key = NameKey::from_labels([&b"app.kubernetes.io/name"[..], b"x"]).unwrap();
        assert_eq!(key.num_labels(), 2);
        assert_eq!(key.label(0), b"app.kubernetes.io/name");
        assert!(NameKey::from_labels([&[b'a'; 64][..]]).is_none());
        assert!(NameKey::from_labels([&b""[..]]).is_none());
    }
}
