//! Label selectors in Kubernetes syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
//! joined by commas (AND), with any whitespace between tokens.
//!
//! The parser validates every key and value with the label rules of [`crate::labels`] and reports the byte
//! offset of the offending token. Parsing normalizes: `==` becomes `=`, and the values of `in`/`notin` are
//! sorted and deduplicated; requirements keep the order in which they were written. `Display` prints that
//! normal form, so `parse(display(s)) == s` for every selector the parser (or [`Selector::from_labels`])
//! produces. Not supported (rejected with a position): the `>`/`<` operators and empty `in ()` lists.

use crate::labels::Labels;
use std::fmt;

/// One term of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    /// Sorted and deduplicated for `In`/`NotIn`; one value for `Equals`/`NotEquals`; empty otherwise.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A conjunction of requirements. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// A parse error, with the byte offset in the input where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at position {position}: {message}")]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.op {
            Operator::Equals | Operator::In => v.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotEquals | Operator::NotIn => !v.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    /// An equality selector from a map (a Kubernetes `Service.spec.selector` / `matchLabels`).
    pub fn from_labels(labels: &Labels) -> Self {
        let requirements = labels
            .iter()
            .map(|(k, v)| Requirement { key: k.clone(), op: Operator::Equals, values: vec![v.clone()] })
            .collect();
        Self { requirements }
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parse the Kubernetes string form.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        crate::selector::parser::parse(input)
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            // A hand-built requirement may lack its value; print it as the empty value rather than panic.
            Operator::Equals => write!(f, "{}={}", self.key, self.values.first().map_or("", String::as_str)),
            Operator::NotEquals => write!(f, "{}!={}", self.key, self.values.first().map_or("", String::as_str)),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Selector::parse(&s).map_err(serde::de::Error::custom)
    }
}

mod parser {
    use super::*;
    use crate::labels::{validate_key, validate_value, LabelError};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Tok<'a> {
        /// A run of characters that are neither whitespace nor punctuation: a key, a value or `in`/`notin`.
        Word(&'a str),
        Bang,
        Eq,
        DoubleEq,
        NotEq,
        Open,
        Close,
        Comma,
        /// A character the grammar never accepts (`<`, `>`), kept so the error can name it.
        Unsupported(char),
        End,
    }

    impl fmt::Display for Tok<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Tok::Word(w) => write!(f, "{w:?}"),
                Tok::Bang => f.write_str("'!'"),
                Tok::Eq => f.write_str("'='"),
                Tok::DoubleEq => f.write_str("'=='"),
                Tok::NotEq => f.write_str("'!='"),
                Tok::Open => f.write_str("'('"),
                Tok::Close => f.write_str("')'"),
                Tok::Comma => f.write_str("','"),
                Tok::Unsupported(c) => write!(f, "unsupported character {c:?}"),
                Tok::End => f.write_str("end of input"),
            }
        }
    }

    fn is_punct(c: char) -> bool {
        matches!(c, '!' | '=' | ',' | '(' | ')' | '<' | '>')
    }

    struct Lexer<'a> {
        input: &'a str,
        pos: usize,
    }

    impl<'a> Lexer<'a> {
        /// The next token and the byte offset where it starts.
        fn next(&mut self) -> (usize, Tok<'a>) {
            let rest = &self.input[self.pos..];
            let trimmed = rest.trim_start();
            let start = self.pos + (rest.len() - trimmed.len());
            let mut chars = trimmed.chars();
            let (tok, len) = match chars.next() {
                None => (Tok::End, 0),
                Some('!') if chars.next() == Some('=') => (Tok::NotEq, 2),
                Some('!') => (Tok::Bang, 1),
                Some('=') if chars.next() == Some('=') => (Tok::DoubleEq, 2),
                Some('=') => (Tok::Eq, 1),
                Some('(') => (Tok::Open, 1),
                Some(')') => (Tok::Close, 1),
                Some(',') => (Tok::Comma, 1),
                Some(c @ ('<' | '>')) => (Tok::Unsupported(c), c.len_utf8()),
                Some(_) => {
                    let len = trimmed.find(|c: char| c.is_whitespace() || is_punct(c)).unwrap_or(trimmed.len());
                    (Tok::Word(&trimmed[..len]), len)
                }
            };
            self.pos = start + len;
            (start, tok)
        }

        fn peek(&self) -> (usize, Tok<'a>) {
            Lexer { input: self.input, pos: self.pos }.next()
        }
    }

    fn error(position: usize, message: impl Into<String>) -> SelectorError {
        SelectorError { position, message: message.into() }
    }

    fn label_error(position: usize, e: LabelError) -> SelectorError {
        error(position, e.to_string())
    }

    pub(super) fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut lx = Lexer { input, pos: 0 };
        let mut requirements = Vec::new();
        if lx.peek().1 == Tok::End {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(requirement(&mut lx)?);
            match lx.next() {
                (_, Tok::End) => break,
                (_, Tok::Comma) => {}
                (p, t) => return Err(error(p, format!("expected ',' or end of selector, found {t}"))),
            }
        }
        Ok(Selector { requirements })
    }

    fn key<'a>(pos: usize, tok: Tok<'a>, what: &str) -> Result<&'a str, SelectorError> {
        match tok {
            Tok::Word(k) => {
                validate_key(k).map_err(|e| label_error(pos, e))?;
                Ok(k)
            }
            t => Err(error(pos, format!("expected {what}, found {t}"))),
        }
    }

    fn requirement(lx: &mut Lexer<'_>) -> Result<Requirement, SelectorError> {
        let (pos, tok) = lx.next();
        if tok == Tok::Bang {
            let (kpos, ktok) = lx.next();
            let k = key(kpos, ktok, "a label key after '!'")?;
            return Ok(Requirement { key: k.to_string(), op: Operator::DoesNotExist, values: Vec::new() });
        }
        let k = key(pos, tok, "a label key or '!'")?.to_string();
        let (op_pos, op_tok) = lx.peek();
        let op = match op_tok {
            Tok::End | Tok::Comma => return Ok(Requirement { key: k, op: Operator::Exists, values: Vec::new() }),
            Tok::Eq | Tok::DoubleEq => Operator::Equals,
            Tok::NotEq => Operator::NotEquals,
            Tok::Word("in") => Operator::In,
            Tok::Word("notin") => Operator::NotIn,
            t => {
                return Err(error(
                    op_pos,
                    format!("expected '=', '==', '!=', 'in', 'notin', ',' or end of selector after key, found {t}"),
                ))
            }
        };
        lx.next();
        let values = match op {
            Operator::In | Operator::NotIn => value_list(lx, op)?,
            _ => vec![single_value(lx)?],
        };
        Ok(Requirement { key: k, op, values })
    }

    /// The value after `=`, `==` or `!=`; absent means the empty value (`a=` selects `a: ""`).
    fn single_value(lx: &mut Lexer<'_>) -> Result<String, SelectorError> {
        match lx.peek() {
            (_, Tok::End | Tok::Comma) => Ok(String::new()),
            (p, Tok::Word(v)) => {
                lx.next();
                validate_value(v).map_err(|e| label_error(p, e))?;
                Ok(v.to_string())
            }
            (p, t) => Err(error(p, format!("expected a label value, found {t}"))),
        }
    }

    fn value_list(lx: &mut Lexer<'_>, op: Operator) -> Result<Vec<String>, SelectorError> {
        let name = if op == Operator::In { "in" } else { "notin" };
        match lx.next() {
            (_, Tok::Open) => {}
            (p, t) => return Err(error(p, format!("expected '(' after '{name}', found {t}"))),
        }
        let mut values = Vec::new();
        loop {
            match lx.next() {
                (p, Tok::Word(v)) => {
                    validate_value(v).map_err(|e| label_error(p, e))?;
                    values.push(v.to_string());
                }
                (p, Tok::Close) if values.is_empty() => {
                    return Err(error(p, format!("'{name}' needs at least one value")))
                }
                (p, t) => return Err(error(p, format!("expected a label value, found {t}"))),
            }
            match lx.next() {
                (_, Tok::Comma) => {}
                (_, Tok::Close) => break,
                (p, t) => return Err(error(p, format!("expected ',' or ')', found {t}"))),
            }
        }
        values.sort();
        values.dedup();
        Ok(values)
    }
}
