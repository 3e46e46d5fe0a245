//! Config errors and warnings, each tied to a line and column of the file.
//!
//! Every stage of loading appends to one [`Diagnostics`] list instead of
//! returning at the first problem, so `replhub check` can print every error at
//! once as `FILE:LINE:COL: message`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::tree::{Node, PathSeg, Pos, render_path};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub pos: Pos,
    pub message: String,
}

/// Everything found in one file, in the order found.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    pub file: PathBuf,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: &Path) -> Self {
        Diagnostics { file: file.to_path_buf(), items: Vec::new() }
    }

    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.items.push(Diagnostic { severity: Severity::Error, pos, message: message.into() });
    }

    pub fn warning(&mut self, pos: Pos, message: impl Into<String>) {
        self.items.push(Diagnostic { severity: Severity::Warning, pos, message: message.into() });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Warning)
    }

    /// One line per finding, sorted by position, as `check` prints them.
    pub fn lines(&self) -> Vec<String> {
        let mut items: Vec<&Diagnostic> = self.items.iter().collect();
        items.sort_by_key(|d| (d.pos, d.severity));
        items.iter().map(|d| self.line(d)).collect()
    }

    /// `FILE:LINE:COL: message` or `FILE:LINE:COL: warning: message`.
    pub fn line(&self, d: &Diagnostic) -> String {
        let file = self.file.display();
        let (line, col) = (d.pos.line, d.pos.col);
        match d.severity {
            Severity::Error => format!("{file}:{line}:{col}: {}", d.message),
            Severity::Warning => format!("{file}:{line}:{col}: warning: {}", d.message),
        }
    }

    /// The first error line, for one-line summaries (logs, `/status`).
    pub fn summary(&self) -> String {
        let mut errors: Vec<&Diagnostic> = self.errors().collect();
        errors.sort_by_key(|d| d.pos);
        match errors.split_first() {
            Some((first, [])) => self.line(first),
            Some((first, rest)) => format!("{} (and {} more errors)", self.line(first), rest.len()),
            None => format!("{}: no errors", self.file.display()),
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.lines() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Names where a path points, the way messages say it: which link (by its
/// name when it has one), or `defaults`, and the key inside it.
///
/// `links[2].remote.url` in a link named `sensors` → ("link `sensors`", "remote.url").
pub fn describe_path(root: &Node, path: &[PathSeg]) -> (String, String) {
    match path {
        [PathSeg::Key(links), PathSeg::Index(i), rest @ ..] if links == "links" => {
            let name = root
                .at(&path[..2])
                .and_then(|link| link.get("name"))
                .and_then(Node::as_str)
                .filter(|n| !n.is_empty() && !n.contains(['`', '\n']));
            let context = match name {
                Some(name) => format!("link `{name}`"),
                None => format!("link #{}", i + 1),
            };
            (context, render_path(rest))
        }
        [PathSeg::Key(defaults), rest @ ..] if defaults == "defaults" => ("defaults".to_string(), render_path(rest)),
        _ => (String::new(), render_path(path)),
    }
}

/// `link `x`: ` or `defaults: ` or nothing, for the front of a message.
pub fn context_prefix(context: &str) -> String {
    if context.is_empty() { String::new() } else { format!("{context}: ") }
}

/// The closest candidate to a misspelt word, if it is close enough to be a
/// plausible typo ("directon" → "direction").
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word_lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let keys = ["direction", "local", "remote", "types", "conflict"];
        assert_eq!(did_you_mean("directon", keys), Some("direction"));
        assert_eq!(did_you_mean("Direction", keys), Some("direction"));
        assert_eq!(did_you_mean("remot", keys), Some("remote"));
        assert_eq!(did_you_mean("colour", keys), None);
        assert_eq!(did_you_mean("x", keys), None);
    }

    #[test]
    fn lines_are_sorted_and_formatted() {
        let mut d = Diagnostics::new(Path::new("c.yaml"));
        d.warning(Pos { line: 9, col: 3 }, "later");
        d.error(Pos { line: 2, col: 5 }, "first");
        assert_eq!(d.lines(), vec!["c.yaml:2:5: first", "c.yaml:9:3: warning: later"]);
        assert_eq!(d.summary(), "c.yaml:2:5: first");
    }
}
