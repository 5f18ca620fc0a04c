//! Where the requests of a call come from: JSON text, `@FILE`, `@-` (stdin), or a piped stdin when no request is
//! given, for `micro call`, `micro stream` and dynamic service commands alike.
//!
//! Unary and server-streaming calls take one request: the whole input is one JSON document (an empty input is the
//! empty request `{}`). Client and bidi streams take any number: a file or text holds a sequence of JSON documents,
//! and stdin is read one JSON document per line as the lines arrive. Without a request, a terminal stdin is not
//! read (a unary call sends `{}`; a client stream reads lines from it after a hint), and a piped one is: a piped
//! request is never dropped. Every document is checked against the request type before it is converted, so a bad
//! one names its field ([`micro_client::json`]).

use super::Requests;
use crate::exit::CliError;
use micro_client::json::{self, JsonError};
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Where a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// JSON text given as an argument.
    Text(String),
    /// `@FILE`: a file.
    File(PathBuf),
    /// `@-`: stdin.
    Stdin,
}

impl Source {
    /// `@-` is stdin, `@FILE` a file, anything else JSON text.
    pub fn parse(arg: &str) -> Source {
        match arg.strip_prefix('@') {
            Some("-") => Source::Stdin,
            Some(path) => Source::File(PathBuf::from(path)),
            None => Source::Text(arg.to_string()),
        }
    }

    /// The source in an error message: ` from FILE`, ` from stdin`, or nothing for text.
    fn origin(&self) -> String {
        match self {
            Source::Text(_) => String::new(),
            Source::File(path) => format!(" from {}", path.display()),
            Source::Stdin => " from stdin".into(),
        }
    }
}

/// How long a read of a piped stdin may take before a hint says what micro is waiting for (on a terminal stderr).
const STDIN_HINT_AFTER: Duration = Duration::from_secs(2);

/// Reads all of stdin as UTF-8. When it takes a while and stderr is a terminal, says that micro waits for it.
async fn read_stdin(hint_on: bool) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    let mut stdin = tokio::io::stdin();
    let read = stdin.read_to_end(&mut bytes);
    tokio::pin!(read);
    let done = tokio::select! {
        done = &mut read => done,
        _ = tokio::time::sleep(STDIN_HINT_AFTER), if hint_on => {
            eprintln!("Reading the request from stdin (end it with Ctrl-D, or give the request as an argument).");
            read.await
        }
    };
    done.map_err(|e| CliError::input(format!("cannot read the request from stdin: {e}")))?;
    String::from_utf8(bytes).map_err(|_| CliError::input("the request on stdin is not UTF-8 text"))
}

/// The text of a source that is not read line by line.
async fn read_text(source: &Source, stderr_tty: bool) -> Result<String, CliError> {
    match source {
        Source::Text(text) => Ok(text.clone()),
        Source::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| CliError::input(format!("cannot read the request file {}: {e}", path.display())))?;
            String::from_utf8(bytes)
                .map_err(|_| CliError::input(format!("the request file {} is not UTF-8 text", path.display())))
        }
        Source::Stdin => read_stdin(stderr_tty).await,
    }
}

/// The JSON documents of `text`: one when `one` (an empty text is `{}`), else any number.
fn documents(text: &str, one: bool, origin: &str) -> Result<Vec<Value>, CliError> {
    let syntax = |n: Option<usize>, e: serde_json::Error| {
        let at = n.map(|n| format!(" (document {n})")).unwrap_or_default();
        CliError::input(format!("Error creating request{origin}{at}: {e}"))
    };
    if one {
        if text.trim().is_empty() {
            return Ok(vec![Value::Object(Map::new())]);
        }
        return serde_json::from_str(text).map(|v| vec![v]).map_err(|e| syntax(None, e));
    }
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
        .map(|(i, doc)| doc.map_err(|e| syntax(Some(i + 1), e)))
        .collect()
}

/// A JSON request that does not fit its type, as the user sees it: `Error creating request[ from X]: <what>`.
pub fn json_error(e: &JsonError, origin: &str) -> CliError {
    CliError::input(format!("Error creating request{origin}: {e}"))
}

/// What a call sends, before conversion: JSON documents, or stdin's lines for a client stream.
pub enum Input {
    /// These documents, in order.
    Documents {
        /// The documents.
        values: Vec<Value>,
        /// Where they came from, for errors: ` from FILE`, ` from stdin` or nothing.
        origin: String,
    },
    /// A client stream's requests: stdin's lines, read as they arrive.
    StdinLines,
}

/// Reads the input of a call to `method` from `source`, or, without one, from a piped stdin (see the module docs).
pub async fn read(
    method: &MethodDescriptor,
    source: Option<Source>,
    stdin_tty: bool,
    stderr_tty: bool,
) -> Result<Input, CliError> {
    let streaming_in = method.is_client_streaming();
    let source = match source {
        Some(Source::Stdin) | None if streaming_in => return Ok(Input::StdinLines),
        Some(source) => source,
        None if stdin_tty => {
            return Ok(Input::Documents { values: vec![Value::Object(Map::new())], origin: "".into() });
        }
        None => Source::Stdin,
    };
    let text = read_text(&source, stderr_tty).await?;
    let origin = source.origin();
    Ok(Input::Documents { values: documents(&text, !streaming_in, &origin)?, origin })
}

/// Converts documents to messages of type `input`, naming the document of a stream that does not fit.
pub fn messages(values: Vec<Value>, input: &MessageDescriptor, origin: &str) -> Result<Vec<DynamicMessage>, CliError> {
    let many = values.len() > 1;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            json::to_message(v, input).map_err(|e| {
                let at = if many { format!("{origin} (document {})", i + 1) } else { origin.to_string() };
                json_error(&e, &at)
            })
        })
        .collect()
}

/// The requests of `micro call`/`micro stream`: the input converted as is.
pub async fn for_call(
    method: &MethodDescriptor,
    source: Option<Source>,
    stdin_tty: bool,
    stderr_tty: bool,
) -> Result<Requests, CliError> {
    Ok(match read(method, source, stdin_tty, stderr_tty).await? {
        Input::StdinLines => Requests::StdinLines { overlay: None },
        Input::Documents { values, origin } => Requests::Given(messages(values, &method.input(), &origin)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(Source::parse("@-"), Source::Stdin);
        assert_eq!(Source::parse("@big.json"), Source::File("big.json".into()));
        assert_eq!(Source::parse("{\"a\":1}"), Source::Text("{\"a\":1}".into()));
    }

    #[test]
    fn one_document_or_a_stream_of_them() {
        assert_eq!(documents("  \n", true, "").unwrap(), vec![serde_json::json!({})]);
        assert_eq!(documents("{\"a\":1}\n", true, "").unwrap(), vec![serde_json::json!({"a": 1})]);
        let e = documents("{} {}", true, " from x.json").unwrap_err();
        assert!(e.message.starts_with("Error creating request from x.json: trailing characters"), "{}", e.message);
        assert_eq!(documents("{\"a\":1}\n{\"a\":2} {}", false, "").unwrap().len(), 3);
        assert!(documents("", false, "").unwrap().is_empty());
        let e = documents("{}\n{", false, " from y").unwrap_err();
        assert!(e.message.starts_with("Error creating request from y (document 2): EOF"), "{}", e.message);
    }
}
