//! The read-only `.geosync/` tree at the mount root and the `user.geosync.*`
//! extended attributes: replication state for ordinary tools.
//!
//! ```text
//! .geosync/status.json                  the region's sync status (JSON)
//! .geosync/conflicts/<node id>/<region> each version of a file in a manual
//!                                       conflict (`diff` them); a deleted
//!                                       version is `<region>.deleted`, empty
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

use fuser::{Errno, FileAttr, FileType, FopenFlags};
use geosync_core::model::{ChangeEvent, NodeId, NodeKind, Version};
use geosync_core::namespace::ConflictInfo;
use geosync_core::store::content::ContentRef;

use crate::errno::errno;
use crate::filesystem::{GeoFs, synthetic_attr};
use crate::inodes::{Control, Inode, ROOT_INO};
use crate::open::{DirItem, Reader};

/// The name of the control directory at the mount root.
pub const CONTROL_DIR: &[u8] = b".geosync";

/// Extended attributes under this prefix are computed and read-only.
pub const XATTR_PREFIX: &[u8] = b"user.geosync.";

const STATE: &[u8] = b"user.geosync.state";
const LOCATIONS: &[u8] = b"user.geosync.locations";
const VCLOCK: &[u8] = b"user.geosync.vclock";

/// The computed attributes every node has.
pub const STATE_XATTRS: [&[u8]; 3] = [STATE, LOCATIONS, VCLOCK];

/// Queue items looked at to tell whether a node has unsent changes.
const QUEUE_SCAN: usize = 10_000;

/// How long `user.geosync.locations` waits for the coordinator.
const LOCATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn conflict(fs: &GeoFs, node: NodeId) -> Result<ConflictInfo, Errno> {
    fs.ctx
        .engine
        .namespace
        .conflicts()
        .map_err(|e| errno(&e))?
        .into_iter()
        .find(|c| c.node == node)
        .ok_or(Errno::ENOENT)
}

/// The file names of a conflict's versions, in head order.
fn version_names(info: &ConflictInfo) -> Vec<(Vec<u8>, Version)> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    info.versions
        .iter()
        .map(|v| {
            let mut name = v.write.stamp.region.as_str().to_owned();
            let n = seen.entry(name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                name = format!("{name}-{n}");
            }
            if v.meta.deleted {
                name.push_str(".deleted");
            }
            (name.into_bytes(), v.clone())
        })
        .collect()
}

fn version(fs: &GeoFs, node: NodeId, name: &[u8]) -> Result<Version, Errno> {
    let info = conflict(fs, node)?;
    version_names(&info)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .ok_or(Errno::ENOENT)
}

/// What a version file holds: file content, a symlink's target, or nothing.
fn version_body(v: &Version) -> (Option<ContentRef>, Vec<u8>) {
    if v.meta.deleted {
        return (None, Vec::new());
    }
    match v.meta.kind {
        NodeKind::File => (v.meta.content, Vec::new()),
        NodeKind::Symlink => (None, v.meta.target.clone().unwrap_or_default()),
        NodeKind::Directory => (None, Vec::new()),
    }
}

fn status_json(fs: &GeoFs) -> Vec<u8> {
    let mut status = (fs.ctx.status)();
    let (files, dirs) = fs.open.counts();
    if let Some(obj) = status.as_object_mut() {
        obj.insert(
            "mount".into(),
            serde_json::json!({
                "passthrough": fs.passthrough.load(std::sync::atomic::Ordering::Relaxed),
                "open_files": files,
                "open_directories": dirs,
            }),
        );
    }
    let mut out = serde_json::to_vec_pretty(&status).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Attributes of a control entry.
pub fn attr(fs: &GeoFs, c: &Control) -> FileAttr {
    let ino = fs.inodes.ino(Inode::Control(c.clone()));
    match c {
        Control::Dir | Control::Conflicts | Control::Conflict(_) => {
            synthetic_attr(ino, FileType::Directory, 0, 0, 0o555)
        }
        Control::Status => synthetic_attr(
            ino,
            FileType::RegularFile,
            status_json(fs).len() as u64,
            0,
            0o444,
        ),
        Control::Version(node, name) => match version(fs, *node, name) {
            Ok(v) => {
                let (content, bytes) = version_body(&v);
                let size = content.map_or(bytes.len() as u64, |c| c.size);
                synthetic_attr(ino, FileType::RegularFile, size, v.meta.mtime_ns, 0o444)
            }
            Err(_) => synthetic_attr(ino, FileType::RegularFile, 0, 0, 0o444),
        },
    }
}

/// Looks `name` up in the control directory `dir`.
pub fn lookup(fs: &GeoFs, dir: &Control, name: &[u8]) -> Result<FileAttr, Errno> {
    let child = match dir {
        Control::Dir => match name {
            b"status.json" => Control::Status,
            b"conflicts" => Control::Conflicts,
            _ => return Err(Errno::ENOENT),
        },
        Control::Conflicts => {
            let node = std::str::from_utf8(name)
                .ok()
                .and_then(|s| u128::from_str_radix(s, 16).ok())
                .map(NodeId)
                .ok_or(Errno::ENOENT)?;
            conflict(fs, node)?;
            Control::Conflict(node)
        }
        Control::Conflict(node) => {
            version(fs, *node, name)?;
            Control::Version(*node, name.to_vec())
        }
        Control::Status | Control::Version(..) => return Err(Errno::ENOTDIR),
    };
    Ok(attr(fs, &child))
}

/// The entries of a control directory.
pub fn list(fs: &GeoFs, ino: u64, dir: &Control) -> Result<Vec<DirItem>, Errno> {
    let parent = match dir {
        Control::Dir => ROOT_INO,
        Control::Conflicts => fs.inodes.ino(Inode::Control(Control::Dir)),
        Control::Conflict(_) => fs.inodes.ino(Inode::Control(Control::Conflicts)),
        Control::Status | Control::Version(..) => return Err(Errno::ENOTDIR),
    };
    let item = |c: Control, kind, name: Vec<u8>| DirItem {
        ino: fs.inodes.ino(Inode::Control(c)),
        node: None,
        kind,
        name,
    };
    let mut items = vec![
        DirItem {
            ino,
            node: None,
            kind: FileType::Directory,
            name: b".".to_vec(),
        },
        DirItem {
            ino: parent,
            node: None,
            kind: FileType::Directory,
            name: b"..".to_vec(),
        },
    ];
    match dir {
        Control::Dir => {
            items.push(item(
                Control::Status,
                FileType::RegularFile,
                b"status.json".to_vec(),
            ));
            items.push(item(
                Control::Conflicts,
                FileType::Directory,
                b"conflicts".to_vec(),
            ));
        }
        Control::Conflicts => {
            let conflicts = fs.ctx.engine.namespace.conflicts().map_err(|e| errno(&e))?;
            for c in conflicts {
                items.push(item(
                    Control::Conflict(c.node),
                    FileType::Directory,
                    c.node.to_string().into_bytes(),
                ));
            }
        }
        Control::Conflict(node) => {
            let info = conflict(fs, *node)?;
            for (name, _) in version_names(&info) {
                items.push(item(
                    Control::Version(*node, name.clone()),
                    FileType::RegularFile,
                    name,
                ));
            }
        }
        Control::Status | Control::Version(..) => {}
    }
    Ok(items)
}

/// Opens a control file for reading.
pub fn open(fs: &GeoFs, c: &Control) -> Result<(Reader, FopenFlags), Errno> {
    match c {
        Control::Status => Ok((Reader::Bytes(status_json(fs)), FopenFlags::FOPEN_DIRECT_IO)),
        Control::Version(node, name) => {
            let v = version(fs, *node, name)?;
            match version_body(&v) {
                (Some(content), _) => {
                    let guard = fs.ctx.engine.content.open_handle(&content.id);
                    Ok((
                        Reader::Version {
                            content: Some(content),
                            object: Mutex::new(None),
                            _guard: Some(guard),
                        },
                        FopenFlags::FOPEN_DIRECT_IO,
                    ))
                }
                (None, bytes) => Ok((Reader::Bytes(bytes), FopenFlags::FOPEN_DIRECT_IO)),
            }
        }
        Control::Dir | Control::Conflicts | Control::Conflict(_) => Err(Errno::EISDIR),
    }
}

/// Whether the region's queue still holds an unsent change of `node`.
fn queued(fs: &GeoFs, node: NodeId) -> geosync_core::Result<bool> {
    let items = fs.ctx.engine.queue.list(Some(QUEUE_SCAN))?;
    Ok(items.iter().any(|item| {
        ChangeEvent::decode(&item.payload)
            .map(|e| e.node == node)
            .unwrap_or(false)
    }))
}

/// The value of a computed `user.geosync.*` attribute (`None` for other names).
pub fn state_xattr(fs: &GeoFs, id: NodeId, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    if !STATE_XATTRS.contains(&name) {
        return Ok(None);
    }
    let view = fs.ctx.engine.namespace.get(id).map_err(|e| errno(&e))?;
    let store = &fs.ctx.engine.content;
    let complete = |c: &ContentRef| store.is_complete(&c.id).unwrap_or(false);
    let value = match name {
        STATE => {
            let dirty = fs
                .open
                .state(id)
                .is_some_and(|s| crate::open::lock(&s).dirty());
            let state = if view.in_conflict {
                "conflict"
            } else if dirty || queued(fs, id).map_err(|e| errno(&e))? {
                "syncing"
            } else if view.meta.content.is_some_and(|c| !complete(&c)) {
                "stale"
            } else {
                "synced"
            };
            state.as_bytes().to_vec()
        }
        LOCATIONS => {
            let mut regions: Vec<String> = Vec::new();
            if let Some(content) = view.meta.content.filter(|c| c.size > 0) {
                if complete(&content) {
                    regions.push(fs.ctx.engine.namespace.region().as_str().to_owned());
                }
                if let Some(locator) = &fs.ctx.locator {
                    let locator = locator.clone();
                    let found = fs.ctx.runtime.block_on(async move {
                        tokio::time::timeout(LOCATE_TIMEOUT, locator.locate(content.id)).await
                    });
                    match found {
                        Ok(Ok(list)) => {
                            regions.extend(list.into_iter().map(|(r, _)| r.to_string()))
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "locate for xattr failed"),
                        Err(_) => tracing::debug!("locate for xattr timed out"),
                    }
                }
            }
            if regions.is_empty() {
                regions.push(view.write.stamp.region.as_str().to_owned());
            }
            regions.sort();
            regions.dedup();
            regions.join(",").into_bytes()
        }
        _ => view
            .vclock
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes(),
    };
    Ok(Some(value))
}
