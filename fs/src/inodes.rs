//! Inode numbers for namespace nodes and the control tree.
//!
//! Namespace node ids are 128-bit; the kernel speaks 64-bit inode numbers. Each
//! mount hands out numbers in the order it first meets a node and never reuses
//! one, so a number always means the same node for the life of the mount (the
//! kernel can keep any of them) and the generation is always 0. Numbers are not
//! stable across mounts, like most FUSE file systems without `export`.

use std::collections::HashMap;
use std::sync::RwLock;

use geosync_core::model::NodeId;

/// The root directory's inode (the kernel's fixed number).
pub const ROOT_INO: u64 = 1;

/// What an inode number stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Inode {
    /// A node of the namespace.
    Node(NodeId),
    /// A file or directory of the read-only `.geosync/` tree.
    Control(Control),
}

/// The read-only control tree at the mount root.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// `.geosync/`
    Dir,
    /// `.geosync/status.json`
    Status,
    /// `.geosync/conflicts/`
    Conflicts,
    /// `.geosync/conflicts/<node id>/`
    Conflict(NodeId),
    /// `.geosync/conflicts/<node id>/<version name>`: the version's name.
    Version(NodeId, Vec<u8>),
}

#[derive(Default)]
struct Maps {
    by_ino: HashMap<u64, Inode>,
    by_inode: HashMap<Inode, u64>,
    /// The directory entry the kernel last learnt each number under.
    entries: HashMap<u64, (u64, Vec<u8>)>,
    next: u64,
}

impl Maps {
    /// The number of `inode`, handing out the next one on first sight.
    fn assign(&mut self, inode: Inode) -> u64 {
        if let Some(ino) = self.by_inode.get(&inode) {
            return *ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(ino, inode.clone());
        self.by_inode.insert(inode, ino);
        ino
    }
}

/// The two-way map between inode numbers and what they stand for.
pub struct Inodes {
    maps: RwLock<Maps>,
}

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Inodes {
    pub fn new() -> Inodes {
        let mut maps = Maps {
            next: ROOT_INO + 1,
            ..Maps::default()
        };
        let root = Inode::Node(NodeId::ROOT);
        maps.by_ino.insert(ROOT_INO, root.clone());
        maps.by_inode.insert(root, ROOT_INO);
        Inodes {
            maps: RwLock::new(maps),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    /// What `ino` stands for, if this mount handed it out.
    pub fn get(&self, ino: u64) -> Option<Inode> {
        self.read().by_ino.get(&ino).cloned()
    }

    /// The inode number of `inode`, handing out a new one on first sight.
    pub fn ino(&self, inode: Inode) -> u64 {
        if let Some(ino) = self.read().by_inode.get(&inode) {
            return *ino;
        }
        self.maps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .assign(inode)
    }

    /// The inode number of a namespace node.
    pub fn node_ino(&self, node: NodeId) -> u64 {
        self.ino(Inode::Node(node))
    }

    /// The inode numbers of many nodes at once (one lock for a directory page).
    pub fn node_inos(&self, nodes: &[NodeId]) -> Vec<u64> {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        nodes
            .iter()
            .map(|node| maps.assign(Inode::Node(*node)))
            .collect()
    }

    /// The inode number of a node, only if the kernel may know it already.
    pub fn known(&self, node: NodeId) -> Option<u64> {
        self.read().by_inode.get(&Inode::Node(node)).copied()
    }

    /// Records that the kernel knows `ino` as `name` in `parent` (so that a
    /// lost invalidation can be repaired by invalidating every known entry).
    pub fn remember_entry(&self, ino: u64, parent: u64, name: &[u8]) {
        let known = |maps: &Maps| {
            maps.entries
                .get(&ino)
                .is_some_and(|(p, n)| *p == parent && n == name)
        };
        if known(&self.read()) {
            return;
        }
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        if !known(&maps) {
            maps.entries.insert(ino, (parent, name.to_vec()));
        }
    }

    /// Every remembered entry: (inode, parent inode, name).
    pub fn entries(&self) -> Vec<(u64, u64, Vec<u8>)> {
        self.read()
            .entries
            .iter()
            .map(|(ino, (parent, name))| (*ino, *parent, name.clone()))
            .collect()
    }

    /// Makes `ino` stand for `node` from now on (a kept conflict copy that
    /// became a real file keeps the number the kernel knows).
    pub fn rebind(&self, ino: u64, node: NodeId) {
        let mut maps = self.maps.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = maps.by_ino.insert(ino, Inode::Node(node)) {
            maps.by_inode.remove(&old);
        }
        maps.by_inode.insert(Inode::Node(node), ino);
    }

    /// Every namespace node handed out, with its number.
    pub fn known_nodes(&self) -> Vec<(u64, NodeId)> {
        self.read()
            .by_ino
            .iter()
            .filter_map(|(ino, inode)| match inode {
                Inode::Node(id) => Some((*ino, *id)),
                Inode::Control(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_never_reused() {
        let inodes = Inodes::new();
        assert_eq!(inodes.node_ino(NodeId::ROOT), ROOT_INO);
        let a = inodes.node_ino(NodeId(7));
        let b = inodes.node_ino(NodeId(8));
        assert_ne!(a, b);
        assert_eq!(inodes.node_ino(NodeId(7)), a);
        assert_eq!(inodes.get(a), Some(Inode::Node(NodeId(7))));
        assert_eq!(inodes.known(NodeId(9)), None);
        let c = inodes.ino(Inode::Control(Control::Status));
        assert!(c > b);
        assert_eq!(inodes.get(c), Some(Inode::Control(Control::Status)));
        assert_eq!(inodes.get(9999), None);
    }
}
