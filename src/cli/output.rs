//! The printer: every byte the CLI shows goes through here.
//!
//! Data goes to stdout in the chosen format (JSON indented like Micro's, with tabs; compact `raw` lines; YAML; or
//! a table); messages and errors go to stderr.
//!
//! `--jq EXPR` ([`set_jq`]) filters every JSON document a command prints through a jq program (jaq, a jq in pure
//! Rust), as `gh --jq` does: each result prints on its own, a string raw (as `jq -r`), anything else as JSON. It
//! implies JSON output, so it works on every command that prints data; `-o raw` keeps each result on one line.

use crate::exit::CliError;
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

    /// A JSON document in the chosen format (a table format prints indented JSON), or what `--jq` selects from it.
    pub fn json(&self, value: &Value) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        match jq::outputs(value)? {
            None => self.write_document(&mut out, value)?,
            Some(results) => {
                for result in results {
                    match result {
                        Value::String(text) => writeln!(out, "{text}")?,
                        other => self.write_document(&mut out, &other)?,
                    }
                }
            }
        }
        out.flush()
    }

    /// One JSON document on one line, for commands that stream documents (logs, subscriptions, consumers), or what
    /// `--jq` selects from it, one result a line. The caller flushes `out`.
    pub fn json_line(&self, out: &mut impl Write, value: &Value) -> std::io::Result<()> {
        match jq::outputs(value)? {
            None => {
                serde_json::to_writer(&mut *out, value)?;
                out.write_all(b"\n")
            }
            Some(results) => {
                for result in results {
                    match result {
                        Value::String(text) => writeln!(out, "{text}")?,
                        other => {
                            serde_json::to_writer(&mut *out, &other)?;
                            out.write_all(b"\n")?;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn write_document(&self, out: &mut impl Write, value: &Value) -> std::io::Result<()> {
        match self.format {
            Output::Raw => writeln!(out, "{}", serde_json::to_string(value).map_err(std::io::Error::other)?),
            Output::Yaml => write!(out, "{}", to_yaml(value)),
            Output::Json | Output::Table => writeln!(out, "{}", indent_json(value)?),
        }
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

/// Sets the `--jq` expression for every document this process prints; a bad expression is bad input (exit 128)
/// with jaq's message. Called once, before any command runs.
pub fn set_jq(expression: &str) -> Result<(), CliError> {
    jq::compile(expression).map_err(|e| CliError::input(format!("invalid --jq expression {expression:?}: {e}")))?;
    let _ = jq::EXPRESSION.set(expression.to_string());
    Ok(())
}

/// `--jq`: jaq's parser, compiler and interpreter over serde_json values.
mod jq {
    use crate::exit::CliError;
    use jaq_core::load::{Arena, File, Loader};
    use jaq_core::{Ctx, Vars, data};
    use jaq_json::Val;
    use serde_json::Value;
    use std::cell::RefCell;
    use std::sync::OnceLock;

    type Filter = jaq_core::Filter<data::JustLut<Val>>;

    /// The expression given with `--jq`, if any.
    pub(super) static EXPRESSION: OnceLock<String> = OnceLock::new();

    thread_local! {
        /// The compiled [`EXPRESSION`] (a filter holds `Rc`s, so each thread that prints compiles its own).
        static COMPILED: RefCell<Option<std::rc::Rc<Filter>>> = const { RefCell::new(None) };
    }

    /// Where in `code` the slice `at` starts, as what the user sees: the rest of the line, or the end.
    fn found(at: &str) -> String {
        let rest: String = at.chars().take_while(|c| *c != '\n').take(20).collect();
        if rest.trim().is_empty() { "the end of the expression".into() } else { format!("{:?}", rest.trim_end()) }
    }

    /// Compiles `code` with jq's core, standard and JSON definitions; the error is jaq's, as one line.
    pub(super) fn compile(code: &str) -> Result<Filter, String> {
        let defs = jaq_core::defs().chain(jaq_std::defs()).chain(jaq_json::defs());
        let funs = jaq_core::funs().chain(jaq_std::funs()).chain(jaq_json::funs());
        let arena = Arena::default();
        let modules = Loader::new(defs).load(&arena, File { code, path: () }).map_err(|errors| {
            let mut messages = Vec::new();
            for (_, error) in errors {
                match error {
                    jaq_core::load::Error::Io(items) => {
                        messages.extend(items.into_iter().map(|(path, e)| format!("cannot load {path}: {e}")))
                    }
                    jaq_core::load::Error::Lex(items) => messages.extend(
                        items
                            .into_iter()
                            .map(|(expect, at)| format!("expected {}, found {}", expect.as_str(), found(at))),
                    ),
                    jaq_core::load::Error::Parse(items) => messages.extend(
                        items
                            .into_iter()
                            .map(|(expect, at)| format!("expected {}, found {}", expect.as_str(), found(at))),
                    ),
                }
            }
            messages.join("; ")
        })?;
        jaq_core::Compiler::default().with_funs(funs).compile(modules).map_err(|errors| {
            let mut messages = Vec::new();
            for (_, undefined) in errors {
                for (name, what) in undefined {
                    messages.push(match what {
                        jaq_core::compile::Undefined::Filter(arity) => format!("undefined filter {name}/{arity}"),
                        other => format!("undefined {} {name}", other.as_str()),
                    });
                }
            }
            messages.join("; ")
        })
    }

    /// The results of the `--jq` filter on `value`, or `None` without `--jq`. An error of the filter on this value
    /// (`.a` of an array) is bad input, wrapped in an I/O error for the printer's callers.
    pub(super) fn outputs(value: &Value) -> std::io::Result<Option<Vec<Value>>> {
        let Some(expression) = EXPRESSION.get() else { return Ok(None) };
        let filter = COMPILED.with(|cell| -> std::io::Result<_> {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(std::rc::Rc::new(compile(expression).map_err(bad)?));
            }
            Ok(cell.clone().expect("compiled above"))
        })?;
        run(&filter, value).map(Some).map_err(|e| bad(format!("--jq {expression:?}: {e}")))
    }

    /// The results of `filter` on `value`: JSON values (a string result is a JSON string), or the filter's error.
    pub(super) fn run(filter: &Filter, value: &Value) -> Result<Vec<Value>, String> {
        let input: Val = serde::Deserialize::deserialize(value).map_err(|e: serde_json::Error| e.to_string())?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new([]));
        let mut results = Vec::new();
        for result in filter.id.run((ctx, input)) {
            let val = match result {
                Ok(val) => val,
                Err(exception) => match exception.get_err() {
                    Ok(error) => return Err(shorten(&error.to_string())),
                    // `halt`: stop with the results so far.
                    Err(_) => break,
                },
            };
            let text = val.to_string();
            results.push(serde_json::from_str(&text).unwrap_or(Value::String(text)));
        }
        Ok(results)
    }

    /// jaq's error without most of the value it quotes (a whole response, at times): its first 80 and last 40
    /// characters.
    fn shorten(message: &str) -> String {
        let chars: Vec<char> = message.chars().collect();
        if chars.len() <= 160 {
            return message.to_string();
        }
        let head: String = chars[..80].iter().collect();
        let tail: String = chars[chars.len() - 40..].iter().collect();
        format!("{head}…{tail}")
    }

    fn bad(message: String) -> std::io::Error {
        std::io::Error::other(CliError::input(message))
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
    fn jq_selects_compiles_and_reports_errors() {
        let run = |code: &str, value: Value| jq::run(&jq::compile(code).map_err(|e| e.to_string()).unwrap(), &value);
        let doc = json!([{"name": "a", "n": 1}, {"name": "b", "n": 2, "tags": ["x"]}]);
        assert_eq!(run(".[] | select(.n > 1) | .name", doc.clone()).unwrap(), [json!("b")]);
        assert_eq!(run("map(.n) | add", doc.clone()).unwrap(), [json!(3)]);
        assert_eq!(run(".[1]", doc.clone()).unwrap(), [json!({"name": "b", "n": 2, "tags": ["x"]})]);
        assert_eq!(run("length, (.[0] | keys)", doc.clone()).unwrap(), [json!(2), json!(["n", "name"])]);
        assert_eq!(run(".[] | {n}", doc.clone()).unwrap(), [json!({"n": 1}), json!({"n": 2})]);
        assert_eq!(run("empty", doc.clone()).unwrap(), Vec::<Value>::new());
        assert!(run(".name", doc).unwrap_err().contains("cannot index"), "an error on the data");
        let error = |code: &str| jq::compile(code).err().unwrap_or_default();
        assert_eq!(error(".a |"), "expected term, found the end of the expression");
        assert_eq!(error("nosuch(1)"), "undefined filter nosuch/1");
        assert!(!error("{a:").is_empty());
        assert!(!error(".a | $x").is_empty());
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
