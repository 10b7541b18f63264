//! Fault rules: "on the N-th `fsync` of a file matching `wal/*.seg`, cut the power",
//! "every `write` to `ledger/*` fails with ENOSPC", "each `read` takes 20 ms".
//!
//! A rule matches an operation by kind and by path (a glob over the path relative to
//! the mount root: `*` and `?` match within one path component, `**` across
//! components). It fires on its `nth` match (1-based; default the first) and then for
//! `times` matches in a row (default once; 0 means for ever).

use serde::{Deserialize, Serialize};

/// The operations a rule can match. `fsync` covers `fsync` and `fdatasync` of a
/// file; `fsyncdir` an `fsync` of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Lookup,
    Getattr,
    Open,
    Read,
    Write,
    Fsync,
    Fsyncdir,
    Create,
    Mkdir,
    Mknod,
    Symlink,
    Rename,
    Unlink,
    Rmdir,
    Truncate,
    Fallocate,
    Readdir,
    Release,
    Statfs,
}

impl Op {
    /// Operations that change what is on disk (the ones a trace records).
    pub fn mutates(self) -> bool {
        matches!(
            self,
            Op::Write
                | Op::Fsync
                | Op::Fsyncdir
                | Op::Create
                | Op::Mkdir
                | Op::Mknod
                | Op::Symlink
                | Op::Rename
                | Op::Unlink
                | Op::Rmdir
                | Op::Truncate
                | Op::Fallocate
        )
    }
}

/// When a power cut happens relative to the matching operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// The operation does not happen.
    #[default]
    Before,
    /// The operation happens (an `fsync` completes and is durable), but the caller
    /// never hears of it.
    After,
}

/// What a rule does when it fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Cut the power: the filesystem freezes (every operation from now on waits)
    /// until `poweroff` reverts it to what was durable.
    Cut {
        #[serde(default)]
        when: When,
    },
    /// Fail with this errno. For `fsync`, `lose` (default true) also drops the file's
    /// unsynced writes from the disk, while reads keep returning them until the next
    /// power cycle — what Linux does after a failed writeback.
    Error {
        errno: i32,
        #[serde(default = "yes")]
        lose: bool,
    },
    /// For `write`: write only the first `bytes` of the request and report that.
    Short { bytes: u64 },
    /// Wait this long, then do the operation.
    DelayMs { ms: u64 },
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub ops: Vec<Op>,
    /// Glob over the path relative to the mount root; absent matches every path.
    #[serde(default)]
    pub path: Option<String>,
    /// Fire on the n-th match (1-based).
    #[serde(default = "one")]
    pub nth: u64,
    /// How many matches in a row it fires for, from the n-th; 0 = for ever.
    #[serde(default = "one")]
    pub times: u64,
    pub action: Action,
}

fn one() -> u64 {
    1
}

impl Rule {
    pub fn new(ops: &[Op], path: Option<&str>, action: Action) -> Self {
        Self {
            ops: ops.to_vec(),
            path: path.map(str::to_string),
            nth: 1,
            times: 1,
            action,
        }
    }

    pub fn nth(mut self, n: u64) -> Self {
        self.nth = n.max(1);
        self
    }

    pub fn times(mut self, n: u64) -> Self {
        self.times = n;
        self
    }

    pub fn matches(&self, op: Op, paths: &[&str]) -> bool {
        self.ops.contains(&op)
            && match &self.path {
                None => true,
                Some(g) => paths.iter().any(|p| glob(g, p)),
            }
    }
}

/// An armed rule and how often it matched.
#[derive(Clone, Debug)]
pub struct Armed {
    pub id: u64,
    pub rule: Rule,
    pub matched: u64,
}

impl Armed {
    /// Counts a match; returns the action if the rule fires on it.
    pub fn hit(&mut self) -> Option<Action> {
        self.matched += 1;
        let first = self.rule.nth;
        let fires = self.matched >= first
            && (self.rule.times == 0 || self.matched < first + self.rule.times);
        fires.then(|| self.rule.action.clone())
    }

    /// True once the rule can never fire again.
    pub fn spent(&self) -> bool {
        self.rule.times != 0 && self.matched >= self.rule.nth + self.rule.times - 1
    }
}

/// Glob match: `*` and `?` within a path component, `**` across components.
pub fn glob(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                let rest = rest.strip_prefix(b"/").unwrap_or(rest);
                (0..=s.len()).any(|i| go(rest, &s[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=s.len() {
                    if go(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == b'/' {
                        break;
                    }
                }
                false
            }
            Some(b'?') => !s.is_empty() && s[0] != b'/' && go(&p[1..], &s[1..]),
            Some(&c) => !s.is_empty() && s[0] == c && go(&p[1..], &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_components() {
        assert!(glob("wal/*.seg", "wal/00000000000000000001.seg"));
        assert!(!glob("wal/*.seg", "wal/00000000000000000001.seg.tmp"));
        assert!(glob("wal/*.seg.tmp", "wal/00000000000000000001.seg.tmp"));
        assert!(!glob("*.seg", "wal/1.seg"));
        assert!(glob("**/*.seg", "data/wal/1.seg"));
        assert!(glob("**", "a/b/c"));
        assert!(glob("data/**", "data/meta/db"));
        assert!(glob("meta/?b", "meta/db"));
        assert!(!glob("meta/?", "meta/db"));
        assert!(glob("ledger", "ledger"));
    }

    #[test]
    fn a_rule_fires_on_its_nth_match_for_its_times() {
        let mut a = Armed {
            id: 1,
            rule: Rule::new(&[Op::Fsync], None, Action::Cut { when: When::Before })
                .nth(3)
                .times(2),
            matched: 0,
        };
        let fired: Vec<bool> = (0..6).map(|_| a.hit().is_some()).collect();
        assert_eq!(fired, [false, false, true, true, false, false]);
        assert!(a.spent());
        let mut forever = Armed {
            id: 2,
            rule: Rule::new(&[Op::Read], None, Action::DelayMs { ms: 1 }).times(0),
            matched: 0,
        };
        assert!((0..100).all(|_| forever.hit().is_some()));
        assert!(!forever.spent());
    }

    #[test]
    fn rules_read_from_json() {
        let r: Rule = serde_json::from_str(
            r#"{"ops":["rename"],"path":"wal/*.seg.tmp","action":{"cut":{"when":"after"}}}"#,
        )
        .unwrap();
        assert_eq!(r.nth, 1);
        assert_eq!(r.action, Action::Cut { when: When::After });
        assert!(r.matches(Op::Rename, &["wal/1.seg.tmp", "wal/1.seg"]));
        let e: Action = serde_json::from_str(r#"{"error":{"errno":5}}"#).unwrap();
        assert_eq!(
            e,
            Action::Error {
                errno: 5,
                lose: true
            }
        );
    }
}
