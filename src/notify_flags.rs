//! `notify-keyspace-events` flags: which a link needs, and how to add them
//! to a server's current flags without removing anyone else's.
//!
//! A Redis restart resets flags set with CONFIG SET, so the owner of each
//! connection re-applies them after every reconnect.

use crate::config::Direction;

/// The event classes replhub reacts to: generic (del, expire, rename…),
/// string, list, set, hash, sorted set, expired and evicted.
const CLASSES: &str = "g$lshzxet";

/// Flags the local side needs: keyevent channels (`E`), which carry binary
/// key names intact, plus the classes. Only links that capture local events.
pub fn local_needed(direction: Direction) -> Option<String> {
    matches!(direction, Direction::Push | Direction::Both).then(|| format!("E{CLASSES}"))
}

/// Flags the remote side needs: keyspace channels (`K`, which the PSUBSCRIBE
/// pattern names), plus the classes. Only links that capture remote events.
pub fn remote_needed(direction: Direction) -> Option<String> {
    matches!(direction, Direction::Pull | Direction::Both).then(|| format!("K{CLASSES}"))
}

/// `A` is an alias for these classes (Redis 7).
const ALIAS_A: &str = "g$lshzxetd";

/// The flags to set so that `current` also contains `needed`, or `None`
/// when it already does. Existing flags are kept.
pub fn merged(current: &str, needed: &str) -> Option<String> {
    let has = |c: char| current.contains(c) || (current.contains('A') && ALIAS_A.contains(c));
    let missing: String = needed.chars().filter(|&c| !has(c)).collect();
    if missing.is_empty() { None } else { Some(format!("{current}{missing}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_only_what_is_missing() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("", "Eg$lshzxe", Some("Eg$lshzxe")),
            ("KEA", "Eg$lshzxe", None),
            ("AK", "Eg$lshzxe", Some("AKE")),
            ("Kx", "Kg$lshzxe", Some("Kxg$lshze")),
            ("Eg$lshzxe", "Kg$lshzxe", Some("Eg$lshzxeK")),
            ("Kg$lshzxetm", "Kg$lshzxe", None),
        ];
        for (current, needed, expected) in cases {
            assert_eq!(merged(current, needed).as_deref(), *expected, "{current} + {needed}");
        }
    }

    #[test]
    fn needs_follow_the_direction() {
        assert!(local_needed(Direction::Push).is_some());
        assert!(local_needed(Direction::Pull).is_none());
        assert!(remote_needed(Direction::Push).is_none());
        assert!(remote_needed(Direction::Both).is_some());
    }
}
