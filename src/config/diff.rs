//! The difference between two configs, link by link — a pure function.
//!
//! Start-up is the diff from an empty config, so starting and reloading
//! share one path. Links compare by their effective config (defaults merged
//! in), so a change to `defaults` changes exactly the links it alters.

use std::sync::Arc;

use super::{Config, LinkConfig};

/// What a reload must do.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    pub added: Vec<Arc<LinkConfig>>,
    pub removed: Vec<String>,
    /// The new configs of links whose config changed.
    pub changed: Vec<Arc<LinkConfig>>,
    /// Names of links that stay as they are.
    pub kept: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// One line for the log: "added [a], removed [], changed [b], kept [c]".
    pub fn summary(&self) -> String {
        let names = |v: &[Arc<LinkConfig>]| v.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", ");
        format!(
            "added [{}], removed [{}], changed [{}], kept [{}]",
            names(&self.added),
            self.removed.join(", "),
            names(&self.changed),
            self.kept.join(", ")
        )
    }
}

/// Compares `old` and `new` link by link (by name), in `new`'s order.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    for link in &new.links {
        match old.links.iter().find(|o| o.name == link.name) {
            None => d.added.push(link.clone()),
            Some(previous) if previous == link => d.kept.push(link.name.clone()),
            Some(_) => d.changed.push(link.clone()),
        }
    }
    for link in &old.links {
        if !new.links.iter().any(|n| n.name == link.name) {
            d.removed.push(link.name.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_text;
    use std::path::Path;
    use std::time::SystemTime;

    fn config(links: &str, defaults: &str) -> Config {
        let text = format!("version: 1\n{defaults}links:\n{links}");
        match load_text(Path::new("/tmp/t.yaml"), &text, &|_| None, SystemTime::now()) {
            Ok(loaded) => loaded.config,
            Err(d) => panic!("test config invalid:\n{d}\n{text}"),
        }
    }

    fn link(name: &str, prefix: &str) -> String {
        format!(
            "  - name: {name}\n    direction: push\n    local: {{url: \"redis://127.0.0.1:1/0\", prefix: \"{prefix}\"}}\n    remote: {{url: \"http://127.0.0.1:2/\", insecure_plaintext: true}}\n"
        )
    }

    fn link_names(v: &[Arc<LinkConfig>]) -> Vec<&str> {
        v.iter().map(|l| l.name.as_str()).collect()
    }

    /// (added, removed, changed, kept)
    type Names<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>);

    fn names(d: &Diff) -> Names<'_> {
        (
            link_names(&d.added),
            d.removed.iter().map(String::as_str).collect(),
            link_names(&d.changed),
            d.kept.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn table() {
        let a = link("a", "a:");
        let b = link("b", "b:");
        let b2 = link("b", "bb:");
        let c = link("c", "c:");
        let empty = Config::empty("/tmp/t.yaml".into());
        let cases: Vec<(Config, Config, Names<'_>)> = vec![
            (empty.clone(), config(&(a.clone() + &b), ""), (vec!["a", "b"], vec![], vec![], vec![])),
            (config(&(a.clone() + &b), ""), config(&(a.clone() + &b), ""), (vec![], vec![], vec![], vec!["a", "b"])),
            (config(&(a.clone() + &b), ""), config(&(a.clone() + &b2), ""), (vec![], vec![], vec!["b"], vec!["a"])),
            (config(&(a.clone() + &b), ""), config(&(b.clone() + &c), ""), (vec!["c"], vec!["a"], vec![], vec!["b"])),
            (config(&a, ""), empty.clone(), (vec![], vec!["a"], vec![], vec![])),
        ];
        for (old, new, expected) in cases {
            assert_eq!(names(&diff(&old, &new)), expected);
        }
    }

    #[test]
    fn a_defaults_change_changes_exactly_the_links_it_alters() {
        let own_types = "  - name: own\n    direction: push\n    types: [hash]\n    local: {url: \"redis://127.0.0.1:1/0\", prefix: \"o:\"}\n    remote: {url: \"http://127.0.0.1:2/\", insecure_plaintext: true}\n";
        let inherits = link("inherits", "i:");
        let links = format!("{own_types}{inherits}");
        let old = config(&links, "defaults:\n  types: [string]\n");
        let new = config(&links, "defaults:\n  types: [string, set]\n");
        assert_eq!(names(&diff(&old, &new)), (vec![], vec![], vec!["inherits"], vec!["own"]));
    }
}
