//! Checks the YAML tree against the JSON Schema generated from `model`.
//!
//! serde stops at the first problem; this walk reports all of them (unknown
//! keys with a "did you mean", wrong types, bad enum values, duplicate keys,
//! missing required keys), each at the node's own line and column. It
//! understands exactly the keywords schemars emits for our model; a test
//! fails if the model ever produces a keyword this checker does not know, so
//! the checker cannot silently fall behind the schema.

use regex::Regex;
use serde_json::{Map, Value};

use super::diagnostic::{Diagnostics, context_prefix, describe_path, did_you_mean};
use super::tree::{Node, NodeValue, PathSeg};

/// Keywords this checker enforces or knowingly ignores (annotations); the
/// test below fails when the generated schema uses any other.
#[cfg(test)]
pub(crate) const KNOWN_KEYWORDS: &[&str] = &[
    "$schema",
    "$ref",
    "$defs",
    "title",
    "description",
    "format",
    "type",
    "properties",
    "additionalProperties",
    "required",
    "items",
    "enum",
    "const",
    "oneOf",
    "anyOf",
    "minimum",
    "maximum",
    "pattern",
];

/// Checks `root` against `schema`, appending every problem to `diags`.
pub fn check(root: &Node, schema: &Value, diags: &mut Diagnostics) {
    let checker = Checker { root, defs: schema.get("$defs").and_then(Value::as_object) };
    let mut path = Vec::new();
    checker.node(root, schema, &mut path, diags);
}

struct Checker<'a> {
    root: &'a Node,
    defs: Option<&'a Map<String, Value>>,
}

/// A problem found while trying one alternative of an `anyOf`/`oneOf`.
type Found = Vec<(super::tree::Pos, String)>;

impl<'a> Checker<'a> {
    fn resolve(&self, schema: &'a Value) -> &'a Value {
        let mut schema = schema;
        // Our schemas never chain more than a couple of references.
        for _ in 0..8 {
            match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
                Some(name) => match self.defs.and_then(|d| d.get(name)) {
                    Some(target) => schema = target,
                    None => return schema,
                },
                None => return schema,
            }
        }
        schema
    }

    /// The JSON types a schema accepts, looking through references and alternatives.
    fn schema_types(&self, schema: &'a Value) -> Vec<String> {
        let schema = self.resolve(schema);
        if let Some(types) = type_names(schema) {
            return types;
        }
        let alternatives = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array);
        alternatives.into_iter().flatten().flat_map(|a| self.schema_types(a)).collect()
    }

    fn node(&self, node: &Node, schema: &'a Value, path: &mut Vec<PathSeg>, diags: &mut Diagnostics) {
        let mut found = Found::new();
        self.collect(node, schema, path, &mut found);
        for (pos, message) in found {
            diags.error(pos, message);
        }
    }

    /// Describes the key at `path` for messages: "link `x`: `remote.url`".
    fn subject(&self, path: &[PathSeg]) -> (String, String) {
        let (context, key) = describe_path(self.root, path);
        let key = if key.is_empty() { "the file".to_string() } else { format!("`{key}`") };
        (context_prefix(&context), key)
    }

    fn collect(&self, node: &Node, schema: &'a Value, path: &mut Vec<PathSeg>, found: &mut Found) {
        let schema = self.resolve(schema);
        if let Some(alternatives) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array) {
            self.alternatives(node, alternatives, path, found);
            return;
        }
        if let Some(allowed) = type_names(schema)
            && !allowed.iter().any(|t| matches_type(&node.value, t))
        {
            let (ctx, key) = self.subject(path);
            let expected = allowed.iter().map(|t| describe_type(t)).collect::<Vec<_>>().join(" or ");
            found.push((node.pos, format!("{ctx}{key} must be {expected}, got {}", node.value.kind())));
            return;
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            self.enumeration(node, values, path, found);
        }
        if let Some(expected) = schema.get("const")
            && node.to_json() != *expected
        {
            let (ctx, key) = self.subject(path);
            found.push((node.pos, format!("{ctx}{key} must be {expected}")));
        }
        match &node.value {
            NodeValue::Map(entries) => self.mapping(node, entries, schema, path, found),
            NodeValue::Seq(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        path.push(PathSeg::Index(i));
                        self.collect(item, item_schema, path, found);
                        path.pop();
                    }
                }
            }
            NodeValue::Int(_) | NodeValue::Float(_) => self.range(node, schema, path, found),
            NodeValue::Str(s) => {
                if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                    let matches = Regex::new(pattern).map(|re| re.is_match(s)).unwrap_or(false);
                    if !matches {
                        let (ctx, key) = self.subject(path);
                        let hint = schema.get("description").and_then(Value::as_str).unwrap_or("");
                        found.push((node.pos, format!("{ctx}{key}: \"{}\" is not valid. {hint}", s.escape_debug())));
                    }
                }
            }
            NodeValue::Null | NodeValue::Bool(_) => {}
        }
    }

    /// `anyOf`/`oneOf`: fine if any alternative fits. Otherwise report the
    /// errors of the alternative of the node's own type (a mapping is checked
    /// as the mapping alternative), or list the allowed values for enums
    /// written as `oneOf` of constants.
    fn alternatives(&self, node: &Node, alternatives: &'a [Value], path: &mut Vec<PathSeg>, found: &mut Found) {
        let mut best: Option<Found> = None;
        for alternative in alternatives {
            let mut attempt = Found::new();
            self.collect(node, alternative, path, &mut attempt);
            if attempt.is_empty() {
                return;
            }
            let same_type = self.schema_types(alternative).iter().any(|t| matches_type(&node.value, t));
            if same_type && best.is_none() {
                best = Some(attempt);
            }
        }
        let consts: Vec<&Value> = alternatives.iter().filter_map(|a| self.resolve(a).get("const")).collect::<Vec<_>>();
        if consts.len() == alternatives.len() {
            let values: Vec<Value> = consts.into_iter().cloned().collect();
            self.enumeration(node, &values, path, found);
            return;
        }
        match best {
            Some(errors) => found.extend(errors),
            None => {
                let (ctx, key) = self.subject(path);
                let mut expected: Vec<String> = Vec::new();
                for alternative in alternatives {
                    for t in self.schema_types(alternative) {
                        let name = describe_type(&t).to_string();
                        if !expected.contains(&name) {
                            expected.push(name);
                        }
                    }
                }
                found.push((
                    node.pos,
                    format!("{ctx}{key} must be {}, got {}", expected.join(" or "), node.value.kind()),
                ));
            }
        }
    }

    fn enumeration(&self, node: &Node, values: &[Value], path: &[PathSeg], found: &mut Found) {
        let value = node.to_json();
        if values.contains(&value) {
            return;
        }
        let (ctx, key) = self.subject(path);
        let names: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        let got = match &node.value {
            NodeValue::Str(s) => format!("`{s}`"),
            other => other.kind().to_string(),
        };
        let hint = node
            .as_str()
            .and_then(|s| did_you_mean(s, names.iter().copied()))
            .map(|m| format!(" (did you mean `{m}`?)"))
            .unwrap_or_default();
        found.push((node.pos, format!("{ctx}{key} must be one of {}; got {got}{hint}", names.join(", "))));
    }

    fn range(&self, node: &Node, schema: &Value, path: &[PathSeg], found: &mut Found) {
        let value = match node.value {
            NodeValue::Int(i) => i as f64,
            NodeValue::Float(f) => f,
            _ => return,
        };
        let min = schema.get("minimum").and_then(Value::as_f64);
        let max = schema.get("maximum").and_then(Value::as_f64);
        if min.is_some_and(|m| value < m) || max.is_some_and(|m| value > m) {
            let (ctx, key) = self.subject(path);
            let bounds = format!("{} to {}", fmt_num(min), fmt_num(max));
            found.push((node.pos, format!("{ctx}{key} must be in the range {bounds}, got {value}")));
        }
    }

    fn mapping(
        &self,
        node: &Node,
        entries: &[(super::tree::Key, Node)],
        schema: &'a Value,
        path: &mut Vec<PathSeg>,
        found: &mut Found,
    ) {
        let properties = schema.get("properties").and_then(Value::as_object);
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        for (i, (key, value)) in entries.iter().enumerate() {
            if let Some((first, _)) = entries[..i].iter().find(|(k, _)| k.name == key.name) {
                let (ctx, _) = self.subject(path);
                path.push(PathSeg::Key(key.name.clone()));
                let (_, full) = self.subject(path);
                path.pop();
                found.push((key.pos, format!("{ctx}duplicate key {full} (first set on line {})", first.pos.line)));
                continue;
            }
            match properties.and_then(|p| p.get(&key.name)) {
                Some(sub) => {
                    path.push(PathSeg::Key(key.name.clone()));
                    self.collect(value, sub, path, found);
                    path.pop();
                }
                None if closed => {
                    let (ctx, _) = self.subject(path);
                    path.push(PathSeg::Key(key.name.clone()));
                    let (_, full) = self.subject(path);
                    path.pop();
                    let names =
                        properties.map(|p| p.keys().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default();
                    let hint = match did_you_mean(&key.name, names.iter().copied()) {
                        Some(m) => format!(" (did you mean `{m}`?)"),
                        None => format!("; allowed here: {}", names.join(", ")),
                    };
                    found.push((key.pos, format!("{ctx}unknown key {full}{hint}")));
                }
                None => {}
            }
        }
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = required.as_str() else { continue };
            if !entries.iter().any(|(k, _)| k.name == name) {
                let (ctx, _) = self.subject(path);
                path.push(PathSeg::Key(name.to_string()));
                let (_, full) = self.subject(path);
                path.pop();
                found.push((node.pos, format!("{ctx}missing required key {full}")));
            }
        }
    }
}

fn fmt_num(n: Option<f64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "any".to_string())
}

fn type_names(schema: &Value) -> Option<Vec<String>> {
    match schema.get("type")? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect()),
        _ => None,
    }
}

fn matches_type(value: &NodeValue, ty: &str) -> bool {
    matches!(
        (ty, value),
        ("null", NodeValue::Null)
            | ("boolean", NodeValue::Bool(_))
            | ("integer", NodeValue::Int(_))
            | ("number", NodeValue::Int(_) | NodeValue::Float(_))
            | ("string", NodeValue::Str(_))
            | ("array", NodeValue::Seq(_))
            | ("object", NodeValue::Map(_))
    )
}

fn describe_type(ty: &str) -> &'static str {
    match ty {
        "null" => "null",
        "boolean" => "true or false",
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "array" => "a list",
        "object" => "a mapping",
        _ => "a value of another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::schema;
    use crate::config::tree::parse;
    use std::path::Path;

    fn errors(yaml: &str) -> Vec<String> {
        let tree = parse(yaml).expect("test YAML parses");
        let mut diags = Diagnostics::new(Path::new("t.yaml"));
        check(&tree, &schema(), &mut diags);
        diags.lines()
    }

    #[test]
    fn the_checker_knows_every_keyword_the_model_emits() {
        fn walk(v: &Value, parent_is_map_of_schemas: bool, out: &mut Vec<String>) {
            if let Value::Object(map) = v {
                for (k, sub) in map {
                    if !parent_is_map_of_schemas && !KNOWN_KEYWORDS.contains(&k.as_str()) {
                        out.push(k.clone());
                    }
                    let sub_is_map = !parent_is_map_of_schemas && (k == "properties" || k == "$defs");
                    if !parent_is_map_of_schemas && (k == "enum" || k == "const" || k == "required") {
                        continue;
                    }
                    walk(sub, sub_is_map, out);
                }
            } else if let Value::Array(items) = v {
                for item in items {
                    walk(item, false, out);
                }
            }
        }
        let mut unknown = Vec::new();
        walk(&schema(), false, &mut unknown);
        assert!(unknown.is_empty(), "schema keywords the checker does not handle: {unknown:?}");
    }

    #[test]
    fn a_valid_shape_has_no_errors() {
        let yaml = "version: 1\nlinks:\n  - name: a\n    direction: push\n    local: {url: \"redis://h:1\", prefix: \"p:\"}\n    types: [string, zset]\n    max_delete_fraction: 0.25\n    heartbeat: {interval: 3s}\n";
        assert_eq!(errors(yaml), Vec::<String>::new());
    }

    #[test]
    fn reports_every_structural_error_with_its_position() {
        let yaml = "\
version: \"1\"
links:
  - name: sensors
    directon: push
    local:
      url: 5
      prefix: p
    types: [string, strng]
    max_delete_fraction: 2
    resync_interval: 10 minutes
  - name: other
    direction: sideways
    direction: push
bogus: 1
";
        assert_eq!(
            errors(yaml),
            vec![
                "t.yaml:1:10: `version` must be an integer, got a string",
                "t.yaml:4:5: link `sensors`: unknown key `directon` (did you mean `direction`?)",
                "t.yaml:6:12: link `sensors`: `local.url` must be a string or null, got an integer",
                "t.yaml:8:21: link `sensors`: `types[1]` must be one of string, hash, list, set, zset; got `strng` (did you mean `string`?)",
                "t.yaml:9:26: link `sensors`: `max_delete_fraction` must be in the range 0 to 1, got 2",
                "t.yaml:10:22: link `sensors`: `resync_interval`: \"10 minutes\" is not valid. A duration written as a string: \"500ms\", \"15s\", \"10m\", \"1h\", or a sum such as \"1m30s\".",
                "t.yaml:12:16: link `other`: `direction` must be one of push, pull, both; got `sideways`",
                "t.yaml:13:5: link `other`: duplicate key `direction` (first set on line 12)",
                "t.yaml:14:1: unknown key `bogus`; allowed here: version, admin, defaults, links, shutdown_timeout, state_dir",
            ]
        );
    }

    #[test]
    fn missing_required_keys_are_named() {
        assert_eq!(
            errors("links:\n  - direction: push\n"),
            vec!["t.yaml:1:1: missing required key `version`", "t.yaml:2:5: link #1: missing required key `name`",]
        );
    }
}
