//! The YAML document as a tree of nodes that remember where they came from.
//!
//! Every later stage of loading (environment interpolation, the schema check,
//! the `defaults` merge, semantic validation) works on this tree, so every
//! error it finds can name the line and column of the offending node, and the
//! loader can report all of them at once instead of stopping at the first.
//! Parsing is bounded: file size, nesting depth, node count and alias
//! expansion are all capped, so a hostile file ("billion laughs", deep
//! nesting) is refused in bounded memory.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column in the config file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
}

/// One YAML node and its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: NodeValue,
}

/// The value of a node: scalars keep the type YAML's core schema gave them
/// (`1` is an integer, `"1"` a string), so the schema check can say
/// "expected a string, got an integer".
#[derive(Clone, Debug, PartialEq)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; duplicates are kept so the schema check can report them.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl NodeValue {
    /// What the node is, in words, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a number",
            NodeValue::Str(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The value under `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string value, when this node is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The node at a dotted path of keys and sequence indexes (`links.2.remote.url`).
    pub fn at(&self, path: &[PathSeg]) -> Option<&Node> {
        let mut node = self;
        for seg in path {
            node = match (seg, &node.value) {
                (PathSeg::Key(k), NodeValue::Map(_)) => node.get(k)?,
                (PathSeg::Index(i), NodeValue::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// This node with `over` deep-merged on top, as `defaults` merge into a
    /// link: mappings merge key by key (recursively), a `null` in `over`
    /// removes the inherited key, anything else in `over` replaces. Nodes keep
    /// their own positions, so an error in an inherited value points into
    /// `defaults`, where it was written.
    pub fn merged_with(&self, over: &Node) -> Node {
        let (NodeValue::Map(base), NodeValue::Map(overrides)) = (&self.value, &over.value) else {
            return over.clone();
        };
        let mut entries: Vec<(Key, Node)> = base.clone();
        for (key, value) in overrides {
            let existing = entries.iter().position(|(k, _)| k.name == key.name);
            match (existing, &value.value) {
                (Some(i), NodeValue::Null) => {
                    entries.remove(i);
                }
                (None, NodeValue::Null) => {}
                (Some(i), _) => entries[i] = (key.clone(), entries[i].1.merged_with(value)),
                (None, _) => entries.push((key.clone(), value.clone())),
            }
        }
        Node { pos: over.pos, value: NodeValue::Map(entries) }
    }

    /// Converts to JSON for deserializing into the typed model once the
    /// schema check has passed. Duplicate keys keep the last value (the
    /// schema check has already reported them).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            NodeValue::Null => J::Null,
            NodeValue::Bool(b) => J::Bool(*b),
            NodeValue::Int(i) => J::from(*i),
            NodeValue::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            NodeValue::Str(s) => J::String(s.clone()),
            NodeValue::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => J::Object(entries.iter().map(|(k, v)| (k.name.clone(), v.to_json())).collect()),
        }
    }
}

/// One step of a path into the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A path rendered the way users write it: `links[2].remote.url`.
pub fn render_path(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Limits on what a config file may contain.
pub const MAX_FILE_BYTES: usize = 4 << 20;
const MAX_DEPTH: usize = 24;
const MAX_NODES: usize = 200_000;
const MAX_ALIASES: usize = 1_000;

/// A YAML syntax (or size) error with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub pos: Pos,
    pub message: String,
}

/// Parses YAML text into a tree. An empty document is a `Null` node.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ParseError {
            pos: Pos { line: 1, col: 1 },
            message: format!("the file has {} bytes; config files are limited to {MAX_FILE_BYTES} bytes", text.len()),
        });
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = MAX_NODES;
    budget.max_aliases = MAX_ALIASES;
    budget.max_events = MAX_NODES * 4;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    if text.trim().is_empty() {
        return Ok(Node { pos: Pos { line: 1, col: 1 }, value: NodeValue::Null });
    }
    let spanned: Spanned<NodeValue> = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let pos = e.location().map(|l| Pos { line: l.line(), col: l.column() }).unwrap_or(Pos { line: 1, col: 1 });
        ParseError { pos, message: strip_position(&e.without_snippet().to_string()) }
    })?;
    Ok(from_spanned(spanned))
}

/// serde-saphyr appends " at line L, column C" (and alias notes) to its
/// messages; we print the position in front instead, so drop the suffix.
fn strip_position(message: &str) -> String {
    let cut = message.find(" at line ").unwrap_or(message.len());
    message[..cut].trim_end().to_string()
}

fn from_spanned(s: Spanned<NodeValue>) -> Node {
    Node { pos: Pos { line: s.referenced.line(), col: s.referenced.column() }, value: s.value }
}

impl<'de> Deserialize<'de> for NodeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// A mapping key: any scalar, rendered as a string.
struct KeyName(String);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match NodeValue::deserialize(deserializer)? {
            NodeValue::Str(s) => Ok(KeyName(s)),
            NodeValue::Int(i) => Ok(KeyName(i.to_string())),
            NodeValue::Bool(b) => Ok(KeyName(b.to_string())),
            NodeValue::Float(f) => Ok(KeyName(f.to_string())),
            NodeValue::Null => Ok(KeyName("null".to_string())),
            other => Err(de::Error::custom(format!("a mapping key must be a plain word, not {}", other.kind()))),
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = NodeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_none<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NodeValue, D::Error> {
        NodeValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<NodeValue, E> {
        Ok(NodeValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<NodeValue, E> {
        Ok(NodeValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeValue, E> {
        i64::try_from(v).map(NodeValue::Int).map_err(|_| E::custom(format!("the number {v} is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<NodeValue, E> {
        Ok(NodeValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<NodeValue>>()? {
            items.push(from_spanned(item));
        }
        Ok(NodeValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyName>>()? {
            let value = map.next_value::<Spanned<NodeValue>>()?;
            let key = Key { name: key.value.0, pos: Pos { line: key.referenced.line(), col: key.referenced.column() } };
            entries.push((key, from_spanned(value)));
        }
        Ok(NodeValue::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_keep_their_types_and_positions() {
        let tree = parse("version: 1\nname: \"1\"\nflag: true\nratio: 0.5\nempty:\nlist: [a, b]\n").unwrap();
        let NodeValue::Map(entries) = &tree.value else { panic!("not a map: {tree:?}") };
        let kinds: Vec<_> = entries.iter().map(|(k, v)| (k.name.as_str(), v.value.kind(), k.pos.line)).collect();
        assert_eq!(
            kinds,
            vec![
                ("version", "an integer", 1),
                ("name", "a string", 2),
                ("flag", "a boolean", 3),
                ("ratio", "a number", 4),
                ("empty", "null", 5),
                ("list", "a list", 6)
            ]
        );
        assert_eq!(tree.get("name").unwrap().pos, Pos { line: 2, col: 7 });
        let list = tree.get("list").unwrap();
        let NodeValue::Seq(items) = &list.value else { panic!() };
        assert_eq!(items[1].pos, Pos { line: 6, col: 11 });
    }

    #[test]
    fn duplicate_keys_are_kept_for_the_schema_check_to_report() {
        let tree = parse("a: 1\na: 2\n").unwrap();
        let NodeValue::Map(entries) = &tree.value else { panic!() };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_in_bounded_memory() {
        let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 0..9u8 {
            let (name, prev) = ((b'b' + i) as char, (b'a' + i) as char);
            let refs = vec![format!("*{prev}"); 10].join(",");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        let err = parse(&bomb).unwrap_err();
        assert!(err.message.contains("budget breached"), "{err:?}");
        let deep_flow = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep_flow).unwrap_err().message.contains("Depth"));
        let deep_block: String = (0..100).map(|i| format!("{}a:\n", " ".repeat(i * 2))).collect();
        assert!(parse(&deep_block).unwrap_err().message.contains("Depth"));
        let huge = "a: 1\n".repeat(MAX_FILE_BYTES / 5 + 1);
        assert!(parse(&huge).unwrap_err().message.contains("limited to"));
    }

    #[test]
    fn merge_is_deep_the_override_wins_and_null_unsets() {
        let defaults =
            parse("remote:\n  url: u\n  tls: {ca: a, cert: c, key: k}\n  basic_auth: {user: x}\ntypes: [hash]\n")
                .unwrap();
        let link = parse("remote:\n  tls: {cert: c2}\n  basic_auth: null\ntypes: [set]\n").unwrap();
        let merged = defaults.merged_with(&link);
        let remote = merged.get("remote").unwrap();
        assert_eq!(remote.get("url").unwrap().as_str(), Some("u"));
        assert_eq!(remote.get("url").unwrap().pos.line, 2, "inherited values keep their own position");
        let tls = remote.get("tls").unwrap();
        assert_eq!(tls.get("cert").unwrap().as_str(), Some("c2"));
        assert_eq!(tls.get("ca").unwrap().as_str(), Some("a"));
        assert!(remote.get("basic_auth").is_none());
        assert_eq!(merged.get("types").unwrap().to_json(), serde_json::json!(["set"]));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err:?}");
        assert_eq!(err.message, "illegal placement of ':' indicator");
    }
}
