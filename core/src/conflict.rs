//! Conflict detection and resolution.
//!
//! Two versions of one node conflict when their vector clocks are concurrent.
//! A node keeps its *heads*: the versions no other received version has seen.
//! Because the heads are the maximal elements of everything received, they do
//! not depend on arrival order; [`resolve`] is a pure function of the heads, so
//! every region computes the same result whatever order events arrived in.
//!
//! The rules, for every strategy:
//!
//! 1. **A delete never silently destroys a concurrent write.** Deleted heads are
//!    dropped when any live head exists; only when every head is a delete does
//!    the node stay deleted.
//! 2. **The result's clock is the join of the heads**, so it has seen (and
//!    supersedes) every head, and a head that arrives again is a duplicate. A
//!    real write has a dot no other write has, so a write can only be `<=` the
//!    join if it is `<=` one of the heads: the join never swallows an unseen write.
//! 3. **Associativity.** Resolving `{resolve({a, b}), c}` equals resolving
//!    `{a, b, c}`: winners are maxima over totally ordered keys (HLC stamps with
//!    the region as tie-break), kept losers are unions of grow-only sets, and a
//!    resolved version carries its winner's stamps. Hence a region that met the
//!    conflict in two steps and one that met it at once agree.
//!
//! The strategies differ in what happens to a losing live version:
//!
//! - **last-writer-wins**: the head with the greatest write stamp wins whole;
//!   losers are superseded (their content stays in history, not in the tree).
//! - **fork**: the greatest stamp wins; every loser whose content differs is kept
//!   as a fork, shown as `name.conflict-<region>-<stamp>.ext` beside the node.
//! - **merge**: field groups (location, content, permissions, mtime, xattrs) are
//!   merged: each group is taken from the head whose change to it the others
//!   have seen; where changes to a group are concurrent, the greater change
//!   stamp wins it. Disjoint changes (content on one side, mode on the other)
//!   thus both survive. When the *content* was changed concurrently, merge falls
//!   back to fork for the content: the greatest stamp's content stays, the other
//!   contents are kept as forks — no content is lost.
//! - **primary-wins**: like fork, but the winner is the greatest stamp among the
//!   heads written in the path's primary region (the greatest overall if none is).
//! - **manual**: heads whose contents differ stay heads and the conflict is open
//!   until an operator decides; meanwhile the node shows the greatest stamp's
//!   version. Heads with equal content are merged as in `merge` (there is nothing
//!   to decide). The architecture notes said "the version that arrived first" is
//!   shown; that would differ between regions, so the deterministic choice wins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::{RegionId, VectorClock};
use crate::model::{Change, Dot, FieldChanges, Fork, NodeKind, Version};

/// How concurrent versions of a path are reconciled.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "strategy", content = "primary")]
pub enum Strategy {
    LastWriterWins,
    Fork,
    Merge,
    Manual,
    PrimaryWins(RegionId),
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::LastWriterWins => "lww",
            Strategy::Fork => "fork",
            Strategy::Merge => "merge",
            Strategy::Manual => "manual",
            Strategy::PrimaryWins(_) => "primary-wins",
        }
    }
}

/// The strategy for each path prefix; the longest matching prefix wins.
///
/// Prefixes match whole path components: `/media` covers `/media/a.mkv`, not
/// `/mediaserver`. A conflict is resolved with the strategy of the node's path
/// when it is met; keep prefixes stable, since a rename across prefixes that
/// races with a conflict could be judged under different rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictPolicy {
    pub default: Strategy,
    /// `(prefix without trailing '/', strategy)`.
    pub rules: Vec<(String, Strategy)>,
}

impl Default for ConflictPolicy {
    fn default() -> Self {
        ConflictPolicy {
            default: Strategy::LastWriterWins,
            rules: Vec::new(),
        }
    }
}

impl ConflictPolicy {
    /// One strategy for every path.
    pub fn uniform(strategy: Strategy) -> Self {
        ConflictPolicy {
            default: strategy,
            rules: Vec::new(),
        }
    }

    /// The strategy for an absolute path (`/a/b`), as bytes.
    pub fn strategy_for(&self, path: &[u8]) -> &Strategy {
        self.rules
            .iter()
            .filter(|(prefix, _)| {
                let p = prefix.trim_end_matches('/').as_bytes();
                path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/')
            })
            .max_by_key(|(prefix, _)| prefix.trim_end_matches('/').len())
            .map(|(_, s)| s)
            .unwrap_or(&self.default)
    }
}

/// The outcome of resolving a node's heads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// One version supersedes all heads.
    Resolved(Version),
    /// A manual conflict: the heads stay; `preview` is what the node shows.
    Open { preview: Version },
}

/// Resolves mutually concurrent heads (at least two) of one node.
pub fn resolve(heads: &[Version], strategy: &Strategy) -> Resolution {
    debug_assert!(heads.len() >= 2);
    let mut join = VectorClock::new();
    for h in heads {
        join.merge(&h.vclock);
    }
    let live: Vec<&Version> = heads.iter().filter(|h| !h.meta.deleted).collect();
    if live.is_empty() {
        return Resolution::Resolved(supersede(newest(&heads[0], heads), &join, heads, None));
    }
    if live.len() == 1 {
        return Resolution::Resolved(supersede(live[0], &join, heads, None));
    }
    let files = live[0].meta.kind == NodeKind::File;
    match strategy {
        Strategy::LastWriterWins => Resolution::Resolved(supersede(
            newest(live[0], live.iter().copied()),
            &join,
            heads,
            None,
        )),
        Strategy::Fork => {
            let winner = newest(live[0], live.iter().copied());
            let losers = files.then_some(&live[..]);
            Resolution::Resolved(supersede(winner, &join, heads, losers))
        }
        Strategy::PrimaryWins(primary) => {
            let newest_live = newest(live[0], live.iter().copied());
            let winner = live
                .iter()
                .copied()
                .filter(|h| h.write.stamp.region == *primary)
                .max_by(|a, b| a.lww_key().cmp(b.lww_key()))
                .unwrap_or(newest_live);
            let losers = files.then_some(&live[..]);
            Resolution::Resolved(supersede(winner, &join, heads, losers))
        }
        Strategy::Merge => Resolution::Resolved(merge(&live, &join, heads)),
        Strategy::Manual => {
            let first = &live[0].meta;
            let same_content = live
                .iter()
                .all(|h| h.meta.content == first.content && h.meta.target == first.target);
            if same_content {
                Resolution::Resolved(merge(&live, &join, heads))
            } else {
                Resolution::Open {
                    preview: newest(live[0], live.iter().copied()).clone(),
                }
            }
        }
    }
}

/// The version with the greatest write stamp (a total order: no ties).
fn newest<'a>(first: &'a Version, rest: impl IntoIterator<Item = &'a Version>) -> &'a Version {
    rest.into_iter().fold(first, |best, v| {
        if v.lww_key() > best.lww_key() {
            v
        } else {
            best
        }
    })
}

/// The union of the heads' forks and dismissals (both grow-only).
fn union_forks(heads: &[Version], out: &mut Version) {
    for h in heads {
        for (dot, fork) in &h.forks {
            out.forks.entry(dot.clone()).or_insert_with(|| fork.clone());
        }
        out.dismissed.extend(h.dismissed.iter().cloned());
    }
}

fn fork_of(v: &Version) -> (Dot, Fork) {
    let change = v.changes.content.clone();
    let fork = Fork {
        change: change.clone(),
        content: v.meta.content,
        size: v.meta.size,
        mtime_ns: v.meta.mtime_ns,
        mode: v.meta.mode,
    };
    (change.dot(), fork)
}

/// `winner`'s state under the join clock, with every head's forks, plus a fork
/// for each of `losers` whose content differs from the winner's.
fn supersede(
    winner: &Version,
    join: &VectorClock,
    heads: &[Version],
    losers: Option<&[&Version]>,
) -> Version {
    let mut out = winner.clone();
    out.vclock = join.clone();
    union_forks(heads, &mut out);
    for loser in losers.unwrap_or_default() {
        if loser.changes.content.dot() != winner.changes.content.dot()
            && loser.meta.content != winner.meta.content
        {
            let (dot, fork) = fork_of(loser);
            out.forks.entry(dot).or_insert(fork);
        }
    }
    out
}

/// The heads whose change to one field group no other head has superseded,
/// deduplicated by the change's dot.
fn surviving<'a>(live: &[&'a Version], group: fn(&FieldChanges) -> &Change) -> Vec<&'a Version> {
    let mut by_dot: BTreeMap<Dot, &Version> = BTreeMap::new();
    for &h in live {
        let c = group(&h.changes);
        let superseded = live
            .iter()
            .any(|o| group(&o.changes).dot() != c.dot() && c.seen_by(&o.vclock));
        if !superseded {
            by_dot.entry(c.dot()).or_insert(h);
        }
    }
    by_dot.into_values().collect()
}

/// The head holding the greatest change to a group among the survivors.
fn group_winner<'a>(
    live: &[&'a Version],
    group: fn(&FieldChanges) -> &Change,
) -> (&'a Version, Vec<&'a Version>) {
    let survivors = surviving(live, group);
    let winner = survivors
        .iter()
        .copied()
        .max_by(|a, b| group(&a.changes).stamp.cmp(&group(&b.changes).stamp))
        .unwrap_or(live[0]);
    (winner, survivors)
}

/// Field-group merge of live heads (see the module docs).
fn merge(live: &[&Version], join: &VectorClock, heads: &[Version]) -> Version {
    let mut out = newest(live[0], live.iter().copied()).clone();
    out.vclock = join.clone();

    let (loc, _) = group_winner(live, |c| &c.location);
    out.meta.parent = loc.meta.parent;
    out.meta.name = loc.meta.name.clone();
    out.changes.location = loc.changes.location.clone();

    let (content, content_survivors) = group_winner(live, |c| &c.content);
    out.meta.content = content.meta.content;
    out.meta.size = content.meta.size;
    out.meta.target = content.meta.target.clone();
    out.changes.content = content.changes.content.clone();

    let (perms, _) = group_winner(live, |c| &c.perms);
    out.meta.mode = perms.meta.mode;
    out.meta.uid = perms.meta.uid;
    out.meta.gid = perms.meta.gid;
    out.changes.perms = perms.changes.perms.clone();

    let (mtime, _) = group_winner(live, |c| &c.mtime);
    out.meta.mtime_ns = mtime.meta.mtime_ns;
    out.changes.mtime = mtime.changes.mtime.clone();

    let (xattrs, _) = group_winner(live, |c| &c.xattrs);
    out.meta.xattrs = xattrs.meta.xattrs.clone();
    out.changes.xattrs = xattrs.changes.xattrs.clone();

    union_forks(heads, &mut out);
    // Concurrent content changes: keep the losing contents as forks.
    if out.meta.kind == NodeKind::File {
        for loser in content_survivors {
            if loser.changes.content.dot() != out.changes.content.dot()
                && loser.meta.content != out.meta.content
            {
                let (dot, fork) = fork_of(loser);
                out.forks.entry(dot).or_insert(fork);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
