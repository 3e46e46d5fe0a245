//! Watching the config file and the TLS files it names.
//!
//! notify (debounced by notify-debouncer-full) watches the *directories*
//! that hold them, not the files: deploy tools replace files by renaming
//! over them, and Kubernetes swaps a `..data` symlink, and either breaks a
//! watch on the file itself. Any event in a watched directory only says
//! "look again": the owner (the run loop) compares content hashes, so a
//! touch without a change does nothing. Because some file systems drop
//! events, the run loop also looks again on a slow timer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

/// Watches a set of directories and sends `()` whenever something in them changes.
pub struct DirWatcher {
    debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    watched: BTreeSet<PathBuf>,
}

impl DirWatcher {
    /// Starts watching; changes are signalled on `tx` (coalesced: a full channel means a look is pending anyway).
    pub fn new(tx: mpsc::Sender<()>) -> notify::Result<DirWatcher> {
        let debouncer = new_debouncer(Duration::from_millis(200), None, move |result: DebounceEventResult| {
            if result.is_ok_and(|events| !events.is_empty()) {
                let _ = tx.try_send(());
            }
        })?;
        Ok(DirWatcher { debouncer, watched: BTreeSet::new() })
    }

    /// Watches exactly the parent directories of `files` (adding and removing watches as needed).
    pub fn watch_parents_of<'a>(&mut self, files: impl IntoIterator<Item = &'a Path>) {
        let wanted: BTreeSet<PathBuf> = files.into_iter().filter_map(parent_dir).collect();
        for gone in self.watched.difference(&wanted).cloned().collect::<Vec<_>>() {
            let _ = self.debouncer.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for dir in wanted {
            if self.watched.contains(&dir) {
                continue;
            }
            match self.debouncer.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "cannot watch this directory; relying on the periodic check")
                }
            }
        }
    }
}

fn parent_dir(file: &Path) -> Option<PathBuf> {
    let parent = file.parent()?;
    Some(if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() })
}

/// The content hash of a file, `None` when it cannot be read.
pub fn file_hash(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|bytes| super::content_hash(&bytes))
}
