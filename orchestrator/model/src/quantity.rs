//! Kubernetes resource quantities (`500m`, `0.5`, `2`, `128Mi`, `1G`, `1e3`) parsed exactly, with integer
//! arithmetic, into thousandths of a unit: CPU comes out as millicores, memory as bytes.
//!
//! A [`Quantity`] keeps the text the user wrote (so a manifest reads back as written) next to its value.
//! It is not a general decimal type: negative quantities and values above about 3.4e35 units are rejected.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A parsed quantity: the original text and its value in thousandths of a unit, rounded up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    text: String,
    milli: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {text:?}: {reason}")]
pub struct QuantityError {
    pub text: String,
    pub reason: &'static str,
}

impl Quantity {
    /// Parse the Kubernetes quantity syntax: a non-negative decimal number, then an optional suffix: binary
    /// (`Ki Mi Gi Ti Pi Ei`), decimal (`n u m k M G T P E`) or an exponent (`e3`, `E-2`).
    pub fn parse(text: &str) -> Result<Quantity, QuantityError> {
        let err = |reason| QuantityError { text: text.to_string(), reason };
        let s = text.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > 64 {
            return Err(err("too long"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        if s.starts_with('-') {
            return Err(err("must not be negative"));
        }
        let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (number, suffix) = s.split_at(num_end);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err("missing number"));
        }
        if frac_part.contains('.') {
            return Err(err("more than one decimal point"));
        }
        // value = mantissa / 10^frac_digits * multiplier; everything kept as num/den to stay exact.
        let digits = format!("{int_part}{frac_part}");
        let mantissa: u128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| err("number too large"))? };
        let mut num = mantissa.checked_mul(1000).ok_or_else(|| err("number too large"))?;
        let mut den: u128 = 10u128.checked_pow(frac_part.len() as u32).ok_or_else(|| err("too many digits"))?;
        let pow = |base: u128, exp: u32| base.checked_pow(exp).ok_or_else(|| err("number too large"));
        match suffix {
            "" => {}
            "Ki" => num = num.checked_mul(pow(2, 10)?).ok_or_else(|| err("number too large"))?,
            "Mi" => num = num.checked_mul(pow(2, 20)?).ok_or_else(|| err("number too large"))?,
            "Gi" => num = num.checked_mul(pow(2, 30)?).ok_or_else(|| err("number too large"))?,
            "Ti" => num = num.checked_mul(pow(2, 40)?).ok_or_else(|| err("number too large"))?,
            "Pi" => num = num.checked_mul(pow(2, 50)?).ok_or_else(|| err("number too large"))?,
            "Ei" => num = num.checked_mul(pow(2, 60)?).ok_or_else(|| err("number too large"))?,
            "n" => den = den.checked_mul(pow(10, 9)?).ok_or_else(|| err("too many digits"))?,
            "u" => den = den.checked_mul(pow(10, 6)?).ok_or_else(|| err("too many digits"))?,
            "m" => den = den.checked_mul(pow(10, 3)?).ok_or_else(|| err("too many digits"))?,
            "k" => num = num.checked_mul(pow(10, 3)?).ok_or_else(|| err("number too large"))?,
            "M" => num = num.checked_mul(pow(10, 6)?).ok_or_else(|| err("number too large"))?,
            "G" => num = num.checked_mul(pow(10, 9)?).ok_or_else(|| err("number too large"))?,
            "T" => num = num.checked_mul(pow(10, 12)?).ok_or_else(|| err("number too large"))?,
            "P" => num = num.checked_mul(pow(10, 15)?).ok_or_else(|| err("number too large"))?,
            "E" => num = num.checked_mul(pow(10, 18)?).ok_or_else(|| err("number too large"))?,
            other => {
                let exp = other.strip_prefix('e').or_else(|| other.strip_prefix('E')).ok_or_else(|| {
                    err("unknown suffix (use Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or eN)")
                })?;
                let exp: i32 = exp.parse().map_err(|_| err("invalid exponent"))?;
                if exp.unsigned_abs() > 30 {
                    return Err(err("exponent out of range"));
                }
                if exp >= 0 {
                    num = num.checked_mul(pow(10, exp as u32)?).ok_or_else(|| err("number too large"))?;
                } else {
                    den = den.checked_mul(pow(10, exp.unsigned_abs())?).ok_or_else(|| err("too many digits"))?;
                }
            }
        }
        let milli = num.div_ceil(den);
        Ok(Quantity { text: text.to_string(), milli })
    }

    /// A CPU quantity from millicores (written as `NNNm`).
    pub fn from_millis(millis: u64) -> Quantity {
        Quantity { text: format!("{millis}m"), milli: u128::from(millis) }
    }

    /// A quantity of whole units (bytes, pods), written as a plain integer.
    pub fn from_units(units: u64) -> Quantity {
        Quantity { text: units.to_string(), milli: u128::from(units) * 1000 }
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Thousandths of a unit: millicores for CPU (saturating at `u64::MAX`).
    pub fn millis(&self) -> u64 {
        u64::try_from(self.milli).unwrap_or(u64::MAX)
    }

    /// Whole units, rounded up: bytes for memory, a count for `pods` (saturating at `u64::MAX`).
    pub fn units(&self) -> u64 {
        u64::try_from(self.milli.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// The value as a float (for metric targets).
    pub fn as_f64(&self) -> f64 {
        self.milli as f64 / 1000.0
    }

    pub fn is_zero(&self) -> bool {
        self.milli == 0
    }

    /// Compare by value (not by spelling).
    pub fn value_cmp(&self, other: &Quantity) -> std::cmp::Ordering {
        self.milli.cmp(&other.milli)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"500m\", \"1\" or \"128Mi\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).map_err(E::custom)
            }
            // YAML `cpu: 1` and `cpu: 0.5` arrive as numbers.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                if !v.is_finite() {
                    return Err(E::custom("quantity must be a finite number"));
                }
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        // (text, millis)
        let cases: &[(&str, u128)] = &[
            ("500m", 500),
            ("1", 1000),
            ("0.5", 500),
            (".5", 500),
            ("1.", 1000),
            ("2", 2000),
            ("100n", 1),
            ("1u", 1),
            ("128Mi", 128 * 1024 * 1024 * 1000),
            ("1Ki", 1024 * 1000),
            ("1G", 1_000_000_000 * 1000),
            ("1k", 1_000_000),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e-3", 1),
            ("1.5Gi", 1536 * 1024 * 1024 * 1000),
            ("134217728", 134_217_728_000),
            ("0", 0),
            ("+1", 1000),
            ("1Ei", (1u128 << 60) * 1000),
        ];
        for (text, milli) in cases {
            let q = Quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(q.milli, *milli, "{text}");
            assert_eq!(q.as_str(), *text);
        }
        assert_eq!(Quantity::parse("500m").unwrap().millis(), 500);
        assert_eq!(Quantity::parse("128Mi").unwrap().units(), 134_217_728);
        assert_eq!(Quantity::parse("0.5").unwrap().units(), 1);
    }

    #[test]
    fn reject_table() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("-1", "negative"),
            ("abc", "missing number"),
            ("1.2.3", "decimal point"),
            ("1Xi", "unknown suffix"),
            ("1mi", "unknown suffix"),
            ("1e", "invalid exponent"),
            ("1e99", "exponent out of range"),
            ("99999999999999999999999999999999999999999", "too large"),
            ("1 Gi", "unknown suffix"),
        ];
        for (text, want) in cases {
            let e = Quantity::parse(text).expect_err(text);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn serde_numbers_and_strings() {
        let q: Quantity = serde_json::from_str("1").unwrap();
        assert_eq!(q.millis(), 1000);
        let q: Quantity = serde_json::from_str("0.25").unwrap();
        assert_eq!(q.millis(), 250);
        let q: Quantity = serde_json::from_str("\"250m\"").unwrap();
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"250m\"");
        assert!(serde_json::from_str::<Quantity>("true").is_err());
    }

    proptest::proptest! {
        #[test]
        fn millis_round_trip(m in 0u64..1_000_000_000_000_000) {
            proptest::prop_assert_eq!(Quantity::parse(&format!("{m}m")).unwrap().millis(), m);
            proptest::prop_assert_eq!(Quantity::from_millis(m).millis(), m);
            proptest::prop_assert_eq!(Quantity::from_units(m / 1000).units(), m / 1000);
        }

        #[test]
        fn binary_suffix_is_exact(int in 0u64..100_000, frac in 0u32..1000) {
            // int.frac Mi in bytes, rounded up.
            let q = Quantity::parse(&format!("{int}.{frac:03}Mi")).unwrap();
            let num = (u128::from(int) * 1000 + u128::from(frac)) * (1 << 20);
            proptest::prop_assert_eq!(u128::from(q.units()), num.div_ceil(1000));
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = Quantity::parse(&s);
        }
    }
}
