//! Mounting regions with FUSE for `geosync region --mount` and `geosync demo`.

use std::path::Path;

use anyhow::{Context, Result};
use geosync_core::node::RegionNode;
use geosync_fs::{FsContext, MountOptions, Mounted};

use crate::cli::MountArgs;

impl MountArgs {
    pub fn options(&self) -> MountOptions {
        MountOptions {
            allow_other: self.allow_other,
            read_only: self.read_only,
            ..MountOptions::default()
        }
    }
}

/// Mounts `node`'s namespace at `dir` (blocking work off the async threads).
pub async fn mount(node: &RegionNode, dir: &Path, options: MountOptions) -> Result<Mounted> {
    let ctx = FsContext::for_region(node);
    let dir = dir.to_path_buf();
    let region = node.region().clone();
    tokio::task::spawn_blocking(move || geosync_fs::mount(ctx, &dir, &options))
        .await
        .context("the mount task failed")?
        .with_context(|| format!("cannot mount region {region}"))
}

/// Unmounts every mount, reporting (not stopping at) failures.
pub async fn unmount_all(mounts: Vec<Mounted>) {
    for m in mounts {
        let path = m.path().display().to_string();
        match tokio::task::spawn_blocking(move || m.unmount()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("geosync: {e}"),
            Err(e) => eprintln!("geosync: unmounting {path}: {e}"),
        }
    }
}
