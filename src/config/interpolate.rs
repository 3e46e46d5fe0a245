//! `${NAME}` environment interpolation inside string values.
//!
//! Runs on the parsed tree before the schema check, so an unset variable is
//! reported at the line of the string that names it. `$$` is a literal `$`;
//! a `$` followed by anything else is kept as it is. Only strings are
//! interpolated: `db: ${DB}` yields the string "3", which the schema check
//! then refuses as "must be an integer".

use super::diagnostic::{Diagnostics, context_prefix, describe_path};
use super::tree::{Node, NodeValue, PathSeg};

/// Looks up an environment variable; a parameter so tests need not touch the process environment.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Replaces `${NAME}` in every string of `node`, reporting unset or malformed references.
pub fn interpolate(node: &mut Node, root: &Node, lookup: Lookup<'_>, diags: &mut Diagnostics) {
    let mut path = Vec::new();
    walk(node, root, &mut path, lookup, diags);
}

fn walk(node: &mut Node, root: &Node, path: &mut Vec<PathSeg>, lookup: Lookup<'_>, diags: &mut Diagnostics) {
    match &mut node.value {
        NodeValue::Str(s) if s.contains('$') => match expand(s, lookup) {
            Ok(expanded) => *s = expanded,
            Err(problem) => {
                let (context, key) = describe_path(root, path);
                diags.error(node.pos, format!("{}`{key}`: {problem}", context_prefix(&context)));
            }
        },
        NodeValue::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(PathSeg::Index(i));
                walk(item, root, path, lookup, diags);
                path.pop();
            }
        }
        NodeValue::Map(entries) => {
            for (key, value) in entries.iter_mut() {
                path.push(PathSeg::Key(key.name.clone()));
                walk(value, root, path, lookup, diags);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Expands one string. The error names every unset variable and what to do.
pub fn expand(text: &str, lookup: Lookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err("`${` without a closing `}` (write `$$` for a literal `$`)".to_string());
            };
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid variable reference (names use A-Z, a-z, 0-9 and _; write `$$` for a literal `$`)"
                ));
            }
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => unset.push(name.to_string()),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    match unset.as_slice() {
        [] => Ok(out),
        [one] => Err(format!("environment variable `{one}` is not set; export it before starting replhub")),
        many => Err(format!(
            "environment variables {} are not set; export them before starting replhub",
            many.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some("s3cret".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_references_and_escapes() {
        assert_eq!(expand("a${PW}b", &env).unwrap(), "as3cretb");
        assert_eq!(expand("$$HOME and $$${PW}", &env).unwrap(), "$HOME and $s3cret");
        assert_eq!(expand("cost: 5$ ${EMPTY}", &env).unwrap(), "cost: 5$ ");
        assert_eq!(expand("no dollars", &env).unwrap(), "no dollars");
    }

    #[test]
    fn reports_unset_and_malformed_references() {
        assert_eq!(
            expand("${NOPE}", &env).unwrap_err(),
            "environment variable `NOPE` is not set; export it before starting replhub"
        );
        assert!(expand("${A} ${B}", &env).unwrap_err().contains("`A`, `B`"));
        assert!(expand("${PW", &env).unwrap_err().contains("without a closing"));
        assert!(expand("${a-b}", &env).unwrap_err().contains("not a valid variable reference"));
    }
}
