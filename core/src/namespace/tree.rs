//! The derived directory tree: which node is listed where, under which name.
//!
//! Nodes store where they *want* to be (`parent`, `name`); the tree shown to the
//! file system is derived from the set of node states alone, never from the
//! order events arrived in, so every region that holds the same states shows the
//! same tree. The rules:
//!
//! - **Kept nodes.** A node is listed when it is alive, or when it still has
//!   listed children or visible forks: a directory deleted in one region while
//!   another region concurrently created a file in it comes back, so the
//!   concurrent write survives.
//! - **Name collisions.** Two regions may create the same name concurrently.
//!   Every claimant of `(parent, name)` survives: the one whose location change
//!   has the smallest stamp keeps the name, each other one is shown as
//!   `name.conflict-<region>-<stamp>.ext` (its own location change's stamp).
//! - **Cycles.** Concurrent renames can make directories each other's parents.
//!   In every cycle of the stored parent graph, the member whose location change
//!   has the greatest stamp is *detached*: shown under the root, under its own
//!   name, until a later rename breaks the cycle. One member per cycle is enough
//!   to make the graph a tree, and "greatest stamp" is the same on every region.
//! - **Forks** (kept losing versions) are listed beside their node as
//!   `name.conflict-<region>-<stamp>.ext`, with ids derived from the node and the
//!   fork's write, so every region gives them the same id.
//! - **One entry per shown name.** When two of the above want the same shown
//!   name (a conflict copy turned into a real file while, in some arrival order,
//!   the copy is still shown), the entry goes to a node under its own name, then
//!   a node under a collision name, then a fork, then the smaller id.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use redb::{ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::model::{Dot, Name, NodeId, Version};
use crate::{Error, Result};

use super::{NodeRecord, Notification, NotificationKind};

pub(crate) const NODES: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("ns_nodes");
/// Every index of the tree in one table (each distinct table a transaction
/// writes costs a root-path copy at commit), keyed by a one-byte tag:
///
/// - `c ++ parent ++ name ++ 0 ++ node`: the claimants of a name (every listed
///   node). Names hold no NUL byte, so `parent ++ name ++ 0` is an exact prefix.
/// - `e ++ parent ++ shown name` -> node id: what readdir and lookup read.
/// - `w ++ parent ++ shown name ++ 0 ++ rank ++ id`: every node or fork that
///   wants to be shown at an entry; the first one (see `decide_entry`) is.
/// - `f ++ fork id` -> the node and fork it shows.
/// - `d ++ node`: cycle breakers currently shown under the root.
/// - `t ++ node` -> ms: deleted nodes and when this region learned of it (GC).
/// - `x ++ node` -> ms: open manual conflicts and when they were detected here.
pub(crate) const INDEX: redb::TableDefinition<&[u8], &[u8]> =
    redb::TableDefinition::new("ns_index");
pub(crate) const TAG_CLAIM: u8 = b'c';
pub(crate) const TAG_ENTRY: u8 = b'e';
pub(crate) const TAG_WISH: u8 = b'w';
pub(crate) const TAG_FORK: u8 = b'f';
pub(crate) const TAG_DETACHED: u8 = b'd';
pub(crate) const TAG_TOMBSTONE: u8 = b't';
pub(crate) const TAG_CONFLICT: u8 = b'x';

/// `tag ++ key`.
pub(crate) fn tagged(tag: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(tag);
    k.extend_from_slice(key);
    k
}

/// A node id stored as an index value.
pub(crate) fn node_value(bytes: &[u8]) -> Result<NodeId> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| Error::CorruptEntry("a node id is not 16 bytes".into()))?;
    Ok(NodeId::from_bytes(id))
}

/// The keys (tag stripped) under `tag ++ prefix`, in order.
pub(crate) fn index_keys(
    index: &impl ReadableTable<&'static [u8], &'static [u8]>,
    tag: u8,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let start = tagged(tag, prefix);
    let end = prefix_end(&start);
    let mut out = Vec::new();
    for item in index.range(start.as_slice()..end.as_slice())? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item?;
        out.push((k.value()[1..].to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

/// How far a parent walk goes before it gives up: deeper trees are refused by
/// the local operations long before this.
const MAX_WALK: usize = 4096;

/// A record in the transaction's cache.
struct Cached {
    rec: NodeRecord,
    dirty: bool,
}

/// Where a node is listed now (so the listing can be removed exactly).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Listing {
    pub parent: NodeId,
    /// The claimed name.
    pub name: Name,
    /// The name shown (differs from `name` for a collision loser).
    pub shown: Name,
    /// Fork entries shown beside the node: `(fork id, shown name)`.
    pub forks: Vec<(NodeId, Name)>,
}

/// Ranks of the wishes for one entry key; lower is shown.
const RANK_CLAIMED: u8 = 0;
const RANK_COLLISION: u8 = 1;
const RANK_FORK: u8 = 2;

impl Listing {
    fn rank(&self) -> u8 {
        if self.shown == self.name {
            RANK_CLAIMED
        } else {
            RANK_COLLISION
        }
    }
}

fn wish_key(entry: &[u8], rank: u8, id: NodeId) -> Vec<u8> {
    let mut k = Vec::with_capacity(entry.len() + 18);
    k.extend_from_slice(entry);
    k.push(0);
    k.push(rank);
    k.extend_from_slice(&id.to_bytes());
    k
}

/// A fork entry's target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ForkRef {
    pub node: NodeId,
    pub dot: Dot,
}

fn claim_prefix(parent: NodeId, name: &Name) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + name.as_bytes().len() + 16);
    k.extend_from_slice(&parent.to_bytes());
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

fn claim_key(parent: NodeId, name: &Name, node: NodeId) -> Vec<u8> {
    let mut k = claim_prefix(parent, name);
    k.extend_from_slice(&node.to_bytes());
    k
}

pub(crate) fn entry_key(parent: NodeId, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len());
    k.extend_from_slice(&parent.to_bytes());
    k.extend_from_slice(name);
    k
}

/// The smallest key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// How a [`NodeRecord`] is stored: the view only when it differs from the
/// single head (a conflict), so the common record holds one version, not two.
#[derive(Serialize)]
struct StoredRef<'a> {
    heads: &'a [Version],
    resolved: Option<&'a Version>,
    open_conflict: bool,
    listing: &'a Option<Listing>,
}

#[derive(Deserialize)]
struct Stored {
    heads: Vec<Version>,
    resolved: Option<Version>,
    open_conflict: bool,
    listing: Option<Listing>,
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<NodeRecord> {
    let s: Stored = postcard::from_bytes(bytes).map_err(|source| Error::Decode {
        what: "node",
        source,
    })?;
    let view = match (s.resolved, s.heads.first()) {
        (Some(v), _) => v,
        (None, Some(h)) => h.clone(),
        (None, None) => return Err(Error::CorruptEntry("a node record without versions".into())),
    };
    Ok(NodeRecord {
        heads: s.heads,
        view,
        open_conflict: s.open_conflict,
        listing: s.listing,
    })
}

pub(crate) fn encode_record(rec: &NodeRecord) -> Vec<u8> {
    let resolved = (rec.heads.len() != 1 || rec.heads[0] != rec.view).then_some(&rec.view);
    encode(&StoredRef {
        heads: &rec.heads,
        resolved,
        open_conflict: rec.open_conflict,
        listing: &rec.listing,
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain in-memory data into a Vec cannot fail.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// The namespace's tables, open inside one write transaction.
pub(crate) struct Tables<'txn> {
    pub nodes: Table<'txn, u128, &'static [u8]>,
    index: Table<'txn, &'static [u8], &'static [u8]>,
    /// Records read or written in this transaction, decoded once and written
    /// once (at [`Tables::finish`]), however often the tree logic touches them.
    cache: RefCell<HashMap<u128, Cached>>,
    /// Records written so far (a failure after a write must not commit).
    writes: u64,
    /// Changes to report once the transaction commits.
    pub notes: Vec<Notification>,
    pub now_ms: u64,
}

impl<'txn> Tables<'txn> {
    pub fn open(txn: &'txn WriteTransaction, now_ms: u64) -> Result<Self> {
        Ok(Tables {
            nodes: txn.open_table(NODES)?,
            index: txn.open_table(INDEX)?,
            cache: RefCell::new(HashMap::new()),
            writes: 0,
            notes: Vec::new(),
            now_ms,
        })
    }

    pub fn load(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        if let Some(c) = self.cache.borrow().get(&id.0) {
            return Ok(Some(c.rec.clone()));
        }
        match self.nodes.get(id.0)? {
            Some(v) => {
                let rec = decode_record(v.value())?;
                self.cache.borrow_mut().insert(
                    id.0,
                    Cached {
                        rec: rec.clone(),
                        dirty: false,
                    },
                );
                Ok(Some(rec))
            }
            None => Ok(None),
        }
    }

    pub fn mutated(&self) -> bool {
        self.writes > 0
    }

    pub fn writes(&self) -> u64 {
        self.writes
    }

    pub fn save(&mut self, id: NodeId, rec: &NodeRecord) -> Result<()> {
        self.writes += 1;
        self.cache.get_mut().insert(
            id.0,
            Cached {
                rec: rec.clone(),
                dirty: true,
            },
        );
        Ok(())
    }

    /// Writes the changed records and hands back the notifications; call once,
    /// before the transaction commits.
    pub fn finish(mut self) -> Result<Vec<Notification>> {
        for (id, c) in self.cache.get_mut().drain() {
            if c.dirty {
                self.nodes.insert(id, encode_record(&c.rec).as_slice())?;
            }
        }
        Ok(self.notes)
    }

    pub fn ix_get(&self, tag: u8, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .index
            .get(tagged(tag, key).as_slice())?
            .map(|v| v.value().to_vec()))
    }

    pub fn ix_put(&mut self, tag: u8, key: &[u8], value: &[u8]) -> Result<()> {
        self.writes += 1;
        self.index.insert(tagged(tag, key).as_slice(), value)?;
        Ok(())
    }

    pub fn ix_del(&mut self, tag: u8, key: &[u8]) -> Result<()> {
        self.writes += 1;
        self.index.remove(tagged(tag, key).as_slice())?;
        Ok(())
    }

    fn ix_any(&self, tag: u8, prefix: &[u8]) -> Result<bool> {
        Ok(!index_keys(&self.index, tag, prefix, 1)?.is_empty())
    }

    fn ix_keys(&self, tag: u8, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(index_keys(&self.index, tag, prefix, usize::MAX)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// The node listed under `name` in `parent`, if any.
    pub fn lookup(&self, parent: NodeId, name: &[u8]) -> Result<Option<NodeId>> {
        self.ix_get(TAG_ENTRY, &entry_key(parent, name))?
            .map(|v| node_value(&v))
            .transpose()
    }

    pub fn has_entries(&self, parent: NodeId) -> Result<bool> {
        self.ix_any(TAG_ENTRY, &parent.to_bytes())
    }

    fn has_claims(&self, parent: NodeId) -> Result<bool> {
        self.ix_any(TAG_CLAIM, &parent.to_bytes())
    }

    pub fn is_detached(&self, id: NodeId) -> Result<bool> {
        Ok(self.ix_get(TAG_DETACHED, &id.to_bytes())?.is_some())
    }

    pub fn any_detached(&self) -> Result<bool> {
        self.ix_any(TAG_DETACHED, &[])
    }

    /// Brings the listing of `start` (and, transitively, of every node whose
    /// listing depends on it: its parents) in line with the rules above.
    pub fn settle(&mut self, start: NodeId) -> Result<()> {
        let mut work = vec![start];
        let mut steps = 0usize;
        while let Some(id) = work.pop() {
            steps += 1;
            if id == NodeId::ROOT || steps > MAX_WALK * 4 {
                continue;
            }
            let Some(mut rec) = self.load(id)? else {
                continue;
            };
            let kept = !rec.view.meta.deleted
                || self.has_claims(id)?
                || rec.view.visible_forks().next().is_some();
            let parent = if self.is_detached(id)? {
                NodeId::ROOT
            } else {
                rec.view.meta.parent
            };
            let want = kept.then(|| (parent, rec.view.meta.name.clone()));
            let have = rec.listing.as_ref().map(|l| (l.parent, l.name.clone()));
            if want == have {
                if let Some((p, name)) = want {
                    // Same place; the shown state (forks, precedence) may differ.
                    self.regroup(p, &name)?;
                }
                continue;
            }
            if let Some(old) = rec.listing.take() {
                self.ix_del(TAG_CLAIM, &claim_key(old.parent, &old.name, id))?;
                self.unlist(id, &old)?;
                self.save(id, &rec)?;
                self.regroup(old.parent, &old.name)?;
                self.push_if_deleted(&mut work, old.parent)?;
            }
            if let Some((p, name)) = want {
                self.ix_put(TAG_CLAIM, &claim_key(p, &name, id), &[])?;
                self.save(id, &rec)?;
                self.regroup(p, &name)?;
                self.push_if_deleted(&mut work, p)?;
            }
        }
        Ok(())
    }

    /// A parent's own listing depends on its children only while it is deleted
    /// (it is kept for them); a live parent is listed whatever they do.
    fn push_if_deleted(&self, work: &mut Vec<NodeId>, parent: NodeId) -> Result<()> {
        if self.load(parent)?.is_some_and(|p| p.view.meta.deleted) {
            work.push(parent);
        }
        Ok(())
    }

    /// Removes a node's shown entries (its own and its forks').
    fn unlist(&mut self, id: NodeId, listing: &Listing) -> Result<()> {
        let key = entry_key(listing.parent, listing.shown.as_bytes());
        self.unwish(&key, listing.rank(), id)?;
        for (fork_id, shown) in &listing.forks {
            self.unwish(
                &entry_key(listing.parent, shown.as_bytes()),
                RANK_FORK,
                *fork_id,
            )?;
            self.ix_del(TAG_FORK, &fork_id.to_bytes())?;
        }
        Ok(())
    }

    /// Recomputes the shown names of every claimant of `(parent, name)` and
    /// rewrites their entries where they changed.
    fn regroup(&mut self, parent: NodeId, name: &Name) -> Result<()> {
        let mut claimants = Vec::new();
        for k in self.ix_keys(TAG_CLAIM, &claim_prefix(parent, name))? {
            let id = node_value(&k[k.len().saturating_sub(16)..])?;
            if let Some(rec) = self.load(id)? {
                claimants.push((id, rec));
            }
        }
        // Earliest location change keeps the name; the id breaks exact ties.
        claimants.sort_by(|(ia, a), (ib, b)| {
            (&a.view.changes.location.stamp, ia).cmp(&(&b.view.changes.location.stamp, ib))
        });
        for (rank, (id, mut rec)) in claimants.into_iter().enumerate() {
            let shown = if rank == 0 {
                name.clone()
            } else {
                name.conflict_copy(&rec.view.changes.location.stamp)
            };
            let forks: Vec<(NodeId, Name)> = rec
                .view
                .visible_forks()
                .map(|(dot, fork)| (fork_id(id, dot), shown.conflict_copy(&fork.change.stamp)))
                .collect();
            let listing = Listing {
                parent,
                name: name.clone(),
                shown,
                forks,
            };
            if rec.listing.as_ref() == Some(&listing) {
                continue;
            }
            if let Some(old) = rec.listing.take() {
                self.unlist(id, &old)?;
            }
            self.list(id, &rec.view, &listing)?;
            rec.listing = Some(listing);
            self.save(id, &rec)?;
        }
        Ok(())
    }

    fn list(&mut self, id: NodeId, view: &Version, listing: &Listing) -> Result<()> {
        let key = entry_key(listing.parent, listing.shown.as_bytes());
        self.wish(&key, listing.rank(), id)?;
        for ((fork_id, shown), (dot, _)) in listing.forks.iter().zip(view.visible_forks()) {
            let target = ForkRef {
                node: id,
                dot: dot.clone(),
            };
            self.ix_put(TAG_FORK, &fork_id.to_bytes(), &encode(&target))?;
            self.wish(
                &entry_key(listing.parent, shown.as_bytes()),
                RANK_FORK,
                *fork_id,
            )?;
        }
        Ok(())
    }

    /// Records that `id` wants to be shown at entry `key`, and re-decides it.
    fn wish(&mut self, key: &[u8], rank: u8, id: NodeId) -> Result<()> {
        self.ix_put(TAG_WISH, &wish_key(key, rank, id), &[])?;
        self.decide_entry(key)
    }

    fn unwish(&mut self, key: &[u8], rank: u8, id: NodeId) -> Result<()> {
        self.ix_del(TAG_WISH, &wish_key(key, rank, id))?;
        self.decide_entry(key)
    }

    /// Shows at `key` the best of the nodes that want it: a node under the name
    /// it claims, then a node under a collision name, then a fork; the smaller
    /// id among equals. A function of the wishes alone, so of the node states.
    fn decide_entry(&mut self, key: &[u8]) -> Result<()> {
        let mut prefix = key.to_vec();
        prefix.push(0);
        let best = match index_keys(&self.index, TAG_WISH, &prefix, 1)?.first() {
            Some((k, _)) => Some(node_value(&k[k.len().saturating_sub(16)..])?),
            None => None,
        };
        let current = self
            .ix_get(TAG_ENTRY, key)?
            .map(|v| node_value(&v))
            .transpose()?;
        if current == best {
            return Ok(());
        }
        let parent = NodeId::from_bytes(key[..16].try_into().unwrap_or([0; 16]));
        let name = Name::new(key[16..].to_vec()).map_err(|e| Error::CorruptEntry(e.to_string()))?;
        if let Some(old) = current {
            self.ix_del(TAG_ENTRY, key)?;
            self.notes.push(Notification {
                node: old,
                kind: NotificationKind::EntryRemoved {
                    parent,
                    name: name.clone(),
                },
                origin: 0,
            });
        }
        if let Some(new) = best {
            self.ix_put(TAG_ENTRY, key, &new.to_bytes())?;
            self.notes.push(Notification {
                node: new,
                kind: NotificationKind::EntryAdded { parent, name },
                origin: 0,
            });
        }
        Ok(())
    }

    /// Re-derives the set of detached cycle breakers after the stored parent of
    /// `changed` moved, and re-settles the nodes whose place changed.
    pub fn check_cycles(&mut self, changed: NodeId) -> Result<()> {
        let mut candidates: BTreeSet<NodeId> = BTreeSet::new();
        for k in self.ix_keys(TAG_DETACHED, &[])? {
            candidates.insert(node_value(&k)?);
        }
        let before = candidates.clone();
        candidates.insert(changed);
        let mut breakers = BTreeSet::new();
        for &c in &candidates {
            if let Some(cycle) = self.cycle_through(c)? {
                let mut best: Option<(crate::clock::Timestamp, NodeId)> = None;
                for id in cycle {
                    if let Some(rec) = self.load(id)? {
                        let key = (rec.view.changes.location.stamp.clone(), id);
                        if best.as_ref().is_none_or(|b| key > *b) {
                            best = Some(key);
                        }
                    }
                }
                if let Some((_, id)) = best {
                    breakers.insert(id);
                }
            }
        }
        if breakers == before {
            return Ok(());
        }
        for gone in before.difference(&breakers) {
            self.ix_del(TAG_DETACHED, &gone.to_bytes())?;
        }
        for new in breakers.difference(&before) {
            self.ix_put(TAG_DETACHED, &new.to_bytes(), &[])?;
        }
        for id in before.symmetric_difference(&breakers) {
            self.settle(*id)?;
        }
        Ok(())
    }

    /// The cycle of stored parents that `start` is on, if any.
    fn cycle_through(&self, start: NodeId) -> Result<Option<Vec<NodeId>>> {
        let mut path = vec![start];
        let mut at = start;
        for _ in 0..MAX_WALK {
            let Some(rec) = self.load(at)? else {
                return Ok(None);
            };
            let parent = rec.view.meta.parent;
            if parent == start {
                return Ok(Some(path));
            }
            if parent == NodeId::ROOT || parent == at || path.contains(&parent) {
                // Reached the root, or a cycle that `start` only leads into.
                return Ok(None);
            }
            path.push(parent);
            at = parent;
        }
        Ok(None)
    }
}

/// The id of the entry that shows a node's fork.
pub(crate) fn fork_id(node: NodeId, dot: &Dot) -> NodeId {
    node.derive("geosync 2026 fork entry", &encode(dot))
}
