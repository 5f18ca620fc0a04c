//! The printer: every byte the CLI shows goes through here.
//!
//! Data goes to stdout in the chosen format (JSON indented like Micro's, with tabs; compact `raw` lines; YAML; or
//! a table); messages and errors go to stderr.

use crate::settings::Output;
use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;
use std::io::Write;

/// Prints data and messages.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    format: Output,
}

pub use micro_client::dynamic::message_to_json;

impl Printer {
    /// A printer for `format`, or `default` when none was chosen.
    pub fn new(format: Option<Output>, default: Output) -> Self {
        Self { format: format.unwrap_or(default) }
    }

    /// The format in use.
    pub fn format(&self) -> Output {
        self.format
    }

    /// A message for the person at the terminal (stderr).
    pub fn message(&self, text: impl std::fmt::Display) {
        eprintln!("{text}");
    }

    /// One line of data.
    pub fn line(&self, text: impl std::fmt::Display) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }

    /// A JSON document in the chosen format (a table format prints indented JSON).
    pub fn json(&self, value: &Value) -> std::io::Result<()> {
        let text = match self.format {
            Output::Raw => serde_json::to_string(value).map_err(std::io::Error::other)?,
            Output::Yaml => to_yaml(value),
            Output::Json | Output::Table => indent_json(value)?,
        };
        let mut out = std::io::stdout().lock();
        if self.format == Output::Yaml {
            write!(out, "{text}")?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()
    }

    /// A table with a header row. In `json`/`raw`/`yaml` formats, prints `json` instead.
    pub fn table(&self, header: &[&str], rows: &[Vec<String>], json: impl FnOnce() -> Value) -> std::io::Result<()> {
        if self.format != Output::Table {
            return self.json(&json());
        }
        let mut table = Table::new();
        table.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
        table.set_header(header.iter().copied());
        for row in rows {
            table.add_row(row.iter().map(String::as_str));
        }
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        let text = table.to_string();
        let mut out = std::io::stdout().lock();
        for line in text.lines() {
            writeln!(out, "{}", line.trim_end())?;
        }
        out.flush()
    }
}

/// JSON indented with tabs, as Micro prints call results.
pub fn indent_json(value: &Value) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    serde::Serialize::serialize(value, &mut ser).map_err(std::io::Error::other)?;
    String::from_utf8(buf).map_err(std::io::Error::other)
}

/// A small YAML emitter for JSON values (block style, strings quoted when they could be misread).
pub fn to_yaml(value: &Value) -> String {
    fn scalar(v: &Value) -> String {
        match v {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => {
                let plain = !s.is_empty()
                    && s.chars().all(|c| c.is_alphanumeric() || " _-./@".contains(c))
                    && !s.starts_with([' ', '-', '@'])
                    && !s.ends_with(' ')
                    && !["true", "false", "null", "yes", "no", "~"].contains(&s.to_ascii_lowercase().as_str())
                    && s.parse::<f64>().is_err();
                if plain { s.clone() } else { serde_json::to_string(s).unwrap_or_default() }
            }
            Value::Array(a) if a.is_empty() => "[]".into(),
            Value::Object(o) if o.is_empty() => "{}".into(),
            _ => String::new(),
        }
    }
    fn is_block(v: &Value) -> bool {
        matches!(v, Value::Array(a) if !a.is_empty()) || matches!(v, Value::Object(o) if !o.is_empty())
    }
    fn emit(v: &Value, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent);
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, val) in map {
                    let key = scalar(&Value::String(k.clone()));
                    if is_block(val) {
                        out.push_str(&format!("{pad}{key}:\n"));
                        emit(val, indent + 1, out);
                    } else {
                        out.push_str(&format!("{pad}{key}: {}\n", scalar(val)));
                    }
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for item in items {
                    if is_block(item) {
                        let mut inner = String::new();
                        emit(item, indent + 1, &mut inner);
                        let inner = inner.trim_start();
                        out.push_str(&format!("{pad}- {inner}"));
                    } else {
                        out.push_str(&format!("{pad}- {}\n", scalar(item)));
                    }
                }
            }
            other => out.push_str(&format!("{pad}{}\n", scalar(other))),
        }
    }
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_tab_indented() {
        assert_eq!(indent_json(&json!({"msg": "Hello"})).unwrap(), "{\n\t\"msg\": \"Hello\"\n}");
    }

    #[test]
    fn yaml_of_nested_values() {
        let v = json!({"name": "a", "n": 1, "tags": ["x", "true"], "nested": {"k": ""}, "list": [{"a": 1, "b": 2}]});
        let y = to_yaml(&v);
        assert!(y.contains("name: a\n"), "{y}");
        assert!(y.contains("tags:\n  - x\n  - \"true\"\n"), "{y}");
        assert!(y.contains("nested:\n  k: \"\"\n"), "{y}");
        assert!(y.contains("list:\n  - a: 1\n    b: 2\n"), "{y}");
    }
}
