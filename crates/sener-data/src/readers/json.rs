//! Helpers to walk a `serde_json::Value` with errors that name the field and line.

use serde_json::{Map, Value};

use crate::document::Document;
use crate::error::{DataError, Result};
use crate::report::{Issue, Report};

/// Where a JSON value came from.
#[derive(Clone, Copy)]
pub(crate) struct Loc<'a> {
    pub source: &'a str,
    pub line: usize,
}

impl Loc<'_> {
    pub fn err(&self, field: impl Into<String>, message: impl Into<String>) -> DataError {
        DataError::field(self.source, self.line, field, message)
    }

    /// Parses one JSON value from `text`.
    pub fn parse(&self, text: &str) -> Result<Value> {
        serde_json::from_str(text).map_err(|e| DataError::Json {
            path: self.source.to_string(),
            line: self.line + e.line().saturating_sub(1),
            message: e.to_string(),
        })
    }

    pub fn object<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Map<String, Value>> {
        v.as_object().ok_or_else(|| self.err(field, format!("expected an object, found {}", kind(v))))
    }

    pub fn get<'v>(&self, obj: &'v Map<String, Value>, key: &str) -> Result<&'v Value> {
        obj.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    pub fn array<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Vec<Value>> {
        v.as_array().ok_or_else(|| self.err(field, format!("expected an array, found {}", kind(v))))
    }

    pub fn str<'v>(&self, v: &'v Value, field: &str) -> Result<&'v str> {
        v.as_str().ok_or_else(|| self.err(field, format!("expected a string, found {}", kind(v))))
    }

    pub fn usize(&self, v: &Value, field: &str) -> Result<usize> {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.err(field, format!("expected a non-negative integer, found {}", short(v))))
    }

    pub fn f32(&self, v: &Value, field: &str) -> Result<f32> {
        match v.as_f64() {
            Some(x) if x.is_finite() => Ok(x as f32),
            _ => Err(self.err(field, format!("expected a number, found {}", short(v)))),
        }
    }

    /// An array of strings.
    pub fn strings<'v>(&self, v: &'v Value, field: &str) -> Result<Vec<&'v str>> {
        self.array(v, field)?
            .iter()
            .enumerate()
            .map(|(i, w)| self.str(w, &format!("{field}[{i}]")))
            .collect()
    }

    /// A pair of non-negative integers `[a, b]`.
    pub fn pair(&self, v: &Value, field: &str) -> Result<(usize, usize)> {
        let a = self.array(v, field)?;
        if a.len() != 2 {
            return Err(self.err(field, format!("expected [start, end], found {} elements", a.len())));
        }
        Ok((self.usize(&a[0], &format!("{field}[0]"))?, self.usize(&a[1], &format!("{field}[1]"))?))
    }

    /// Adds the word entity `[s, t)` (field `f`) to `doc`, after the caller's range checks: an
    /// empty label is an error at `label_field`; an entity covering no characters is reported
    /// and dropped, never silently lost.
    pub fn add_word_entity(&self, doc: &mut Document, report: &mut Report, f: &str, (s, t): (usize, usize), label: &str, label_field: &str) -> Result<()> {
        if label.is_empty() {
            return Err(self.err(label_field, "empty label"));
        }
        if doc.word_range_chars(s, t).is_none_or(|sp| sp.is_empty()) {
            report.note(Issue::EmptyEntityDropped, || format!("{}:{} {f}", self.source, self.line));
            return Ok(());
        }
        doc.push_word_entity(s, t, label, None)
    }

    /// An optional document id (string or number); `None` when absent or null.
    pub fn id(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(v) => Err(self.err(key, format!("expected a string or number, found {}", kind(v)))),
        }
    }
}

/// The JSON type name of a value.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of a value for messages.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        let t: String = s.chars().take(40).collect();
        format!("{t}…")
    } else {
        s
    }
}

/// Non-blank lines of `text` with their 1-based numbers.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}
