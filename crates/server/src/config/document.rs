//! A namespace's config document: a tree addressed by dot paths, with Micro's merge semantics and secret leaves.
//!
//! Setting an object merges it leaf by leaf into what is there; setting anything else (a scalar, an array, null)
//! replaces the whole subtree at the path. Secret leaves hold ciphertext (see [`super::secrets`]) and read as
//! `[secret]` unless revealed.
//!
//! On disk a document is JSON in which every node is tagged, so that user data can never be mistaken for a
//! secret: `{"o":{…}}` is an object, `{"v":…}` a plain value (never an object), `{"s":"…"}` a secret.

use super::secrets::{Cipher, SecretError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What secret leaves read as unless revealed.
pub const SECRET_PLACEHOLDER: &str = "[secret]";
/// The deepest a document may nest (path segments plus levels of the value), so that stored documents always
/// parse back (serde_json's recursion limit is 128 and every level is tagged).
pub const MAX_DEPTH: usize = 48;
/// The longest path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// A node of a document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// An object: its members by name.
    #[serde(rename = "o")]
    Object(BTreeMap<String, Node>),
    /// A plain JSON value that is not an object.
    #[serde(rename = "v")]
    Value(Value),
    /// An encrypted JSON value (see [`Cipher::seal`]).
    #[serde(rename = "s")]
    Secret(String),
}

/// What can be wrong with a path or a value.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The path is malformed.
    #[error("{0}")]
    Path(String),
    /// The value cannot be set there.
    #[error("{0}")]
    Value(String),
    /// A secret cannot be sealed or opened.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// Splits a dot path (`key.subkey`) into its segments; the empty path is the whole document.
pub fn parse_path(path: &str) -> Result<Vec<String>, DocumentError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(DocumentError::Path(format!("the key is longer than {MAX_PATH_BYTES} bytes")));
    }
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    if segments.iter().any(String::is_empty) {
        return Err(DocumentError::Path(format!(
            "invalid key {path:?}: dot paths have a name between every two dots, e.g. key.subkey"
        )));
    }
    if segments.len() > MAX_DEPTH {
        return Err(DocumentError::Path(format!("the key {path:?} is nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(segments)
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The additional authenticated data of the secret at `path` in `namespace`: a secret only opens where it was
/// sealed.
fn aad(namespace: &str, path: &[String]) -> Vec<u8> {
    format!("{namespace}\0{}", path.join(".")).into_bytes()
}

impl Node {
    /// An empty object (a new document).
    pub fn empty() -> Node {
        Node::Object(BTreeMap::new())
    }

    /// The node for `value` set at `path` of `namespace`: objects become [`Node::Object`]s, and with `cipher`
    /// every other leaf is sealed as a [`Node::Secret`].
    pub fn from_json(
        value: Value,
        namespace: &str,
        path: &[String],
        cipher: Option<&Cipher>,
    ) -> Result<Node, DocumentError> {
        if path.len() + depth(&value) > MAX_DEPTH {
            return Err(DocumentError::Value(format!("the value is nested deeper than {MAX_DEPTH} levels")));
        }
        Node::build(value, namespace, &mut path.to_vec(), cipher)
    }

    fn build(
        value: Value,
        namespace: &str,
        path: &mut Vec<String>,
        cipher: Option<&Cipher>,
    ) -> Result<Node, DocumentError> {
        match (value, cipher) {
            (Value::Object(map), _) => {
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    if k.is_empty() || k.contains('.') {
                        return Err(DocumentError::Value(format!(
                            "invalid key {k:?} in the value: keys are not empty and have no dots"
                        )));
                    }
                    path.push(k.clone());
                    let node = Node::build(v, namespace, path, cipher);
                    path.pop();
                    out.insert(k, node?);
                }
                Ok(Node::Object(out))
            }
            (v, Some(cipher)) => Ok(Node::Secret(cipher.seal(v.to_string().as_bytes(), &aad(namespace, path))?)),
            (v, None) => Ok(Node::Value(v)),
        }
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: &[String]) -> Option<&Node> {
        let mut node = self;
        for segment in path {
            match node {
                Node::Object(members) => node = members.get(segment)?,
                _ => return None,
            }
        }
        Some(node)
    }

    /// Sets `incoming` at `path`: an object merges leaf by leaf into an object already there; anything else
    /// replaces the subtree. Missing (or non-object) parents become objects. At the root, only an object may be
    /// set (it merges).
    pub fn set(&mut self, path: &[String], incoming: Node) -> Result<(), DocumentError> {
        let Some((last, parents)) = path.split_last() else {
            if !matches!(incoming, Node::Object(_)) {
                return Err(DocumentError::Value("only an object can be set without a key".into()));
            }
            self.merge(incoming);
            return Ok(());
        };
        let mut node = self;
        for segment in parents {
            let members = node.as_object_mut();
            node = members.entry(segment.clone()).or_insert_with(Node::empty);
        }
        let members = node.as_object_mut();
        match members.get_mut(last) {
            Some(existing) => existing.merge(incoming),
            None => {
                members.insert(last.clone(), incoming);
            }
        }
        Ok(())
    }

    /// Deletes the node at `path`; returns whether there was one. The empty path is refused by callers.
    pub fn delete(&mut self, path: &[String]) -> bool {
        let Some((last, parents)) = path.split_last() else { return false };
        let mut node = self;
        for segment in parents {
            match node {
                Node::Object(members) => match members.get_mut(segment) {
                    Some(child) => node = child,
                    None => return false,
                },
                _ => return false,
            }
        }
        match node {
            Node::Object(members) => members.remove(last).is_some(),
            _ => false,
        }
    }

    /// This node's members, after turning it into an (empty) object if it is not one.
    fn as_object_mut(&mut self) -> &mut BTreeMap<String, Node> {
        if !matches!(self, Node::Object(_)) {
            *self = Node::empty();
        }
        match self {
            Node::Object(members) => members,
            _ => unreachable!("just made an object"),
        }
    }

    fn merge(&mut self, incoming: Node) {
        match (self, incoming) {
            (Node::Object(existing), Node::Object(incoming)) => {
                for (k, v) in incoming {
                    match existing.get_mut(&k) {
                        Some(e) => e.merge(v),
                        None => {
                            existing.insert(k, v);
                        }
                    }
                }
            }
            (this, incoming) => *this = incoming,
        }
    }

    /// The node as plain JSON, with object keys sorted: secret leaves read as [`SECRET_PLACEHOLDER`], or decrypted
    /// with `reveal`. `path` is where the node is (for decryption).
    pub fn render(&self, namespace: &str, path: &[String], reveal: Option<&Cipher>) -> Result<Value, DocumentError> {
        self.render_at(namespace, &mut path.to_vec(), reveal)
    }

    fn render_at(
        &self,
        namespace: &str,
        path: &mut Vec<String>,
        reveal: Option<&Cipher>,
    ) -> Result<Value, DocumentError> {
        match self {
            Node::Object(members) => {
                let mut out = serde_json::Map::new();
                for (k, v) in members {
                    path.push(k.clone());
                    let value = v.render_at(namespace, path, reveal);
                    path.pop();
                    out.insert(k.clone(), value?);
                }
                Ok(Value::Object(out))
            }
            Node::Value(v) => Ok(sorted(v.clone())),
            Node::Secret(sealed) => match reveal {
                None => Ok(Value::String(SECRET_PLACEHOLDER.into())),
                Some(cipher) => {
                    let plain = cipher.open(sealed, &aad(namespace, path))?;
                    let value: Value = serde_json::from_slice(&plain)
                        .map_err(|e| DocumentError::Value(format!("a secret does not hold JSON: {e}")))?;
                    Ok(sorted(value))
                }
            },
        }
    }
}

/// `value` with the keys of every object sorted.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> Vec<String> {
        parse_path(p).unwrap()
    }

    fn set(doc: &mut Node, p: &str, v: Value) {
        let node = Node::from_json(v, "micro", &path(p), None).unwrap();
        doc.set(&path(p), node).unwrap();
    }

    fn show(doc: &Node, p: &str) -> Option<String> {
        doc.get(&path(p)).map(|n| n.render("micro", &path(p), None).unwrap().to_string())
    }

    #[test]
    fn objects_merge_and_scalars_replace() {
        let mut doc = Node::empty();
        set(&mut doc, "key", json!({"a": 1, "b": {"b1": 1}}));
        set(&mut doc, "key", json!({"b": {"b2": 2.2}}));
        set(&mut doc, "key.b.b1", json!(2));
        assert_eq!(show(&doc, "key").unwrap(), r#"{"a":1,"b":{"b1":2,"b2":2.2}}"#);
        // A scalar replaces the whole subtree.
        set(&mut doc, "key.b", json!("flat"));
        assert_eq!(show(&doc, "key").unwrap(), r#"{"a":1,"b":"flat"}"#);
        // An object replaces a scalar; setting below a scalar turns it into an object.
        set(&mut doc, "key.a.deep.er", json!(true));
        assert_eq!(show(&doc, "key.a").unwrap(), r#"{"deep":{"er":true}}"#);
        // Arrays are values: they replace.
        set(&mut doc, "list", json!([1, 2]));
        set(&mut doc, "list", json!([3]));
        assert_eq!(show(&doc, "list").unwrap(), "[3]");
        // At the root, objects merge.
        set(&mut doc, "", json!({"top": 1}));
        assert_eq!(show(&doc, "top").unwrap(), "1");
        assert!(doc.set(&[], Node::Value(json!(1))).is_err());
    }

    #[test]
    fn nested_paths_get_and_delete() {
        let mut doc = Node::empty();
        set(&mut doc, "a.b.c", json!("x"));
        assert_eq!(show(&doc, "a").unwrap(), r#"{"b":{"c":"x"}}"#);
        assert_eq!(show(&doc, "a.b.c").unwrap(), r#""x""#);
        assert_eq!(show(&doc, "a.b.c.d"), None);
        assert_eq!(show(&doc, "nope"), None);
        assert!(doc.delete(&path("a.b.c")));
        assert!(!doc.delete(&path("a.b.c")));
        assert!(!doc.delete(&path("x.y")));
        assert_eq!(show(&doc, "a").unwrap(), r#"{"b":{}}"#);
    }

    #[test]
    fn keys_are_sorted_in_output() {
        let mut doc = Node::empty();
        set(&mut doc, "k", json!({"z": 1, "a": [{"y": 1, "b": 2}]}));
        assert_eq!(show(&doc, "k").unwrap(), r#"{"a":[{"b":2,"y":1}],"z":1}"#);
    }

    #[test]
    fn bad_paths_and_values() {
        for bad in ["a..b", ".a", "a."] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
        assert!(parse_path("a.".repeat(60).trim_end_matches('.')).is_err());
        assert!(Node::from_json(json!({"a.b": 1}), "micro", &[], None).is_err());
        let mut deep = json!(1);
        for _ in 0..60 {
            deep = json!({"x": deep});
        }
        assert!(Node::from_json(deep, "micro", &[], None).is_err());
    }

    #[test]
    fn secrets_are_sealed_per_leaf_and_bound_to_their_path() {
        let cipher = Cipher::new(&[7u8; 32]);
        let mut doc = Node::empty();
        let p = path("db");
        let node = Node::from_json(json!({"password": "hunter2", "port": 5432}), "micro", &p, Some(&cipher)).unwrap();
        doc.set(&p, node).unwrap();
        set(&mut doc, "db.host", json!("localhost"));
        let stored = serde_json::to_string(&doc).unwrap();
        assert!(!stored.contains("hunter2") && !stored.contains("5432"), "{stored}");
        let hidden = doc.get(&p).unwrap().render("micro", &p, None).unwrap();
        assert_eq!(hidden, json!({"host": "localhost", "password": "[secret]", "port": "[secret]"}));
        let shown = doc.get(&p).unwrap().render("micro", &p, Some(&cipher)).unwrap();
        assert_eq!(shown, json!({"host": "localhost", "password": "hunter2", "port": 5432}));
        // A leaf read on its own decrypts too; in another namespace it does not open.
        let leaf = path("db.password");
        assert_eq!(doc.get(&leaf).unwrap().render("micro", &leaf, Some(&cipher)).unwrap(), json!("hunter2"));
        assert!(doc.get(&leaf).unwrap().render("other", &leaf, Some(&cipher)).is_err());
        // The stored form parses back.
        let back: Node = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, doc);
    }
}
