//! The FUSE mount against real tools: std::fs round trips for every
//! operation, errno checks for what is refused, ordinary tools across two
//! mounted regions, kernel cache invalidation, cold reads and conflict files.
//!
//! Every mount is a guard declared after its cluster: it is unmounted first,
//! also when an assertion fails.

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use geosync_core::config::{StrategyName, SyncStrategy};
use geosync_core::namespace::ConflictChoice;
use geosync_tests::{Cluster, MountOptions, SETTLE, wait_until};

fn errno_of(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("the call must fail")
        .raw_os_error()
        .expect("an OS error")
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths")
}

/// A libc call's `0 = success, -1 = errno` result.
fn zero_or_errno(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (from, to) = (cstr(from), cstr(to));
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    zero_or_errno(r)
}

fn set_xattr(path: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<()> {
    let (path, name) = (cstr(path), CString::new(name).expect("name"));
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    zero_or_errno(r)
}

fn get_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (path, name) = (cstr(path), CString::new(name).expect("name"));
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn list_xattrs(path: &Path) -> Vec<String> {
    let path = cstr(path);
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid C string and a buffer of the given length.
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn remove_xattr(path: &Path, name: &str) -> std::io::Result<()> {
    let (path, name) = (cstr(path), CString::new(name).expect("name"));
    // SAFETY: valid C strings.
    let r = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    zero_or_errno(r)
}

/// Runs a shell command; panics with its output unless it succeeds.
fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Waits until `path` reads as `expected`.
fn wait_content(path: &Path, expected: &[u8]) -> bool {
    wait_until(SETTLE, || fs::read(path).is_ok_and(|d| d == expected))
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_round_trip_through_the_mount() {
    let cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    let mount = cluster.mount("eu", MountOptions::default());
    let m = mount.path().to_path_buf();

    // Write, read, overwrite in place, append, O_TRUNC.
    let f = m.join("a.txt");
    fs::write(&f, b"hello world").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello world");
    let mut h = OpenOptions::new().write(true).open(&f).unwrap();
    h.seek(SeekFrom::Start(6)).unwrap();
    h.write_all(b"WORLD").unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"hello WORLD");
    let mut h = OpenOptions::new().append(true).open(&f).unwrap();
    h.write_all(b"!!").unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"hello WORLD!!");
    let mut h = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&f)
        .unwrap();
    h.write_all(b"new").unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"new");
    // Read-write handle reads its own writes before close.
    let mut h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    h.write_all(b"NE").unwrap();
    let mut back = String::new();
    h.seek(SeekFrom::Start(0)).unwrap();
    h.read_to_string(&mut back).unwrap();
    assert_eq!(back, "NEw");
    drop(h);

    // Truncate shorter and longer (zeros).
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(2).unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"NE");
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(5).unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"NE\0\0\0");

    // A sparse file larger than 4 GiB.
    let big = m.join("sparse.bin");
    let mut h = File::create(&big).unwrap();
    let far = (4u64 << 30) + 12345;
    h.seek(SeekFrom::Start(far)).unwrap();
    h.write_all(b"end").unwrap();
    h.sync_all().unwrap();
    drop(h);
    assert_eq!(fs::metadata(&big).unwrap().len(), far + 3);
    let mut h = File::open(&big).unwrap();
    let mut buf = [1u8; 8];
    h.seek(SeekFrom::Start(far - 5)).unwrap();
    h.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"\0\0\0\0\0end");
    h.seek(SeekFrom::Start(1 << 20)).unwrap();
    h.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0u8; 8]);
    drop(h);
    fs::remove_file(&big).unwrap();

    // Names are bytes, not only UTF-8.
    let odd = m.join(OsStr::from_bytes(b"caf\xe9 \xff.txt"));
    fs::write(&odd, b"latin-1").unwrap();
    let names: Vec<Vec<u8>> = fs::read_dir(&m)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert!(names.contains(&b"caf\xe9 \xff.txt".to_vec()), "{names:?}");
    assert_eq!(fs::read(&odd).unwrap(), b"latin-1");

    // Directories.
    let d = m.join("dir");
    fs::create_dir(&d).unwrap();
    assert_eq!(errno_of(fs::create_dir(&d)), libc::EEXIST);
    fs::write(d.join("inner"), b"x").unwrap();
    assert_eq!(errno_of(fs::remove_dir(&d)), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_file(&d)), libc::EISDIR);
    assert_eq!(
        errno_of(fs::create_dir(f.join("below-a-file"))),
        libc::ENOTDIR
    );
    fs::remove_file(d.join("inner")).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_eq!(errno_of(fs::metadata(&d)), libc::ENOENT);

    // Symlinks.
    let link = m.join("link");
    std::os::unix::fs::symlink("a.txt", &link).unwrap();
    assert_eq!(fs::read_link(&link).unwrap(), PathBuf::from("a.txt"));
    assert_eq!(fs::read(&link).unwrap(), b"NE\0\0\0");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Rename: replace, NOREPLACE, EXCHANGE; into its own subtree refused.
    fs::write(m.join("b.txt"), b"bee").unwrap();
    fs::write(m.join("c.txt"), b"sea").unwrap();
    assert_eq!(
        errno_of(renameat2(
            &m.join("b.txt"),
            &m.join("c.txt"),
            libc::RENAME_NOREPLACE
        )),
        libc::EEXIST
    );
    renameat2(&m.join("b.txt"), &m.join("c.txt"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.join("b.txt")).unwrap(), b"sea");
    assert_eq!(fs::read(m.join("c.txt")).unwrap(), b"bee");
    fs::rename(m.join("b.txt"), m.join("c.txt")).unwrap();
    assert_eq!(fs::read(m.join("c.txt")).unwrap(), b"sea");
    assert_eq!(errno_of(fs::metadata(m.join("b.txt"))), libc::ENOENT);
    fs::create_dir_all(m.join("p/q")).unwrap();
    assert_eq!(
        errno_of(fs::rename(m.join("p"), m.join("p/q/p"))),
        libc::EINVAL
    );

    // Hard links are refused.
    assert_eq!(
        errno_of(fs::hard_link(m.join("c.txt"), m.join("hard"))),
        libc::EPERM
    );

    // chmod, chown, utimens.
    fs::set_permissions(m.join("c.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(m.join("c.txt")).unwrap().mode() & 0o7777,
        0o640
    );
    std::os::unix::fs::chown(m.join("c.txt"), Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(m.join("c.txt")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options()
        .write(true)
        .open(m.join("c.txt"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(
        fs::metadata(m.join("c.txt")).unwrap().modified().unwrap(),
        t
    );

    // statfs reports the data directory's file system.
    let out = sh(&format!("stat -f -c %b {}", m.display()));
    assert!(out.trim().parse::<u64>().unwrap() > 0, "{out}");

    // What the mount wrote is the namespace.
    let ns = cluster.ns("eu");
    assert!(ns.resolve(b"/c.txt").is_ok());
    assert!(ns.resolve(b"/link").is_ok());
    drop(mount);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn xattrs_are_stored_and_replicated_and_state_is_read_only() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    let eu = cluster.mount("eu", MountOptions::default());
    let us = cluster.mount("us", MountOptions::default());
    let f = eu.path().join("tagged.mkv");
    fs::write(&f, b"movie").unwrap();
    set_xattr(&f, "user.color", b"blue", 0).unwrap();
    assert_eq!(get_xattr(&f, "user.color").unwrap(), b"blue");
    assert_eq!(
        errno_of(set_xattr(&f, "user.color", b"red", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(set_xattr(&f, "user.none", b"x", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    assert_eq!(errno_of(get_xattr(&f, "user.none")), libc::ENODATA);
    assert_eq!(
        errno_of(set_xattr(&f, "trusted.x", b"x", 0)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno_of(set_xattr(&f, "user.geosync.state", b"synced", 0)),
        libc::EPERM
    );
    let names = list_xattrs(&f);
    for n in [
        "user.color",
        "user.geosync.state",
        "user.geosync.locations",
        "user.geosync.vclock",
    ] {
        assert!(names.contains(&n.to_owned()), "{names:?}");
    }

    // The attribute replicates; the replication state says where it is.
    let g = us.path().join("tagged.mkv");
    assert!(
        wait_until(SETTLE, || get_xattr(&g, "user.color")
            .is_ok_and(|v| v == b"blue")),
        "user.color reached us"
    );
    assert!(
        wait_until(SETTLE, || get_xattr(&f, "user.geosync.state")
            .is_ok_and(|v| v == b"synced")),
        "eu's change was pushed: {:?}",
        get_xattr(&f, "user.geosync.state")
    );
    let vclock = String::from_utf8(get_xattr(&g, "user.geosync.vclock").unwrap()).unwrap();
    assert!(vclock.contains("eu="), "{vclock}");
    let locations = String::from_utf8(get_xattr(&g, "user.geosync.locations").unwrap()).unwrap();
    assert!(locations.contains("eu"), "{locations}");
    remove_xattr(&f, "user.color").unwrap();
    assert!(
        wait_until(SETTLE, || get_xattr(&g, "user.color").is_err()),
        "the removal reached us"
    );
    drop((eu, us));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permissions_and_local_locks() {
    let cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    let mount = cluster.mount(
        "eu",
        MountOptions {
            allow_other: true,
            ..MountOptions::default()
        },
    );
    let m = mount.path().to_path_buf();
    // The mount's parents must be traversable by the other user.
    let mut p = m.parent().map(Path::to_path_buf);
    while let Some(dir) = p {
        let mode = fs::metadata(&dir).unwrap().mode();
        fs::set_permissions(&dir, fs::Permissions::from_mode((mode | 0o011) & 0o7777)).ok();
        p = dir.parent().map(Path::to_path_buf);
    }
    fs::write(m.join("secret"), b"s").unwrap();
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.join("public"), b"p").unwrap();
    fs::set_permissions(m.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |file: &str| {
        Command::new("cat")
            .arg(m.join(file))
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run cat")
    };
    let denied = as_nobody("secret");
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
        "{denied:?}"
    );
    let allowed = as_nobody("public");
    assert!(allowed.status.success(), "{allowed:?}");
    assert_eq!(allowed.stdout, b"p");

    // flock: exclusive between open files; fcntl locks work locally.
    let a = File::open(m.join("public")).unwrap();
    let b = File::open(m.join("public")).unwrap();
    // SAFETY: valid open file descriptors.
    unsafe {
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(
            libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EWOULDBLOCK)
        );
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_UN), 0);
        assert_eq!(libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
    }
    if has("flock") {
        let held = Command::new("flock")
            .args(["-n", "-x"])
            .arg(m.join("public"))
            .arg("true")
            .status()
            .unwrap();
        assert!(!held.success(), "another process cannot take a held lock");
    }
    // With FUSE passthrough, the kernel reads open files itself and wants no
    // other kind of open beside them: a writer waits for the readers.
    let writer = OpenOptions::new().write(true).open(m.join("public"));
    if mount.passthrough() {
        assert_eq!(errno_of(writer), libc::ETXTBSY);
    } else {
        drop(writer.unwrap());
    }
    drop((a, b));
    let w = OpenOptions::new()
        .write(true)
        .open(m.join("public"))
        .unwrap();
    let lock = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: a valid descriptor and a valid flock struct.
    assert_eq!(
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETLK, &lock) },
        0
    );
    drop(w);
    drop(mount);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_control_directory_is_read_only() {
    let cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    let mount = cluster.mount("eu", MountOptions::default());
    let m = mount.path().to_path_buf();
    let status: serde_json::Value =
        serde_json::from_slice(&fs::read(m.join(".geosync/status.json")).unwrap()).unwrap();
    assert_eq!(status["region"], "eu");
    assert!(status["mount"]["passthrough"].is_boolean());
    assert_eq!(
        errno_of(
            OpenOptions::new()
                .write(true)
                .open(m.join(".geosync/status.json"))
        ),
        libc::EROFS
    );
    assert_eq!(
        errno_of(fs::write(m.join(".geosync/new"), b"x")),
        libc::EROFS
    );
    assert_eq!(errno_of(fs::create_dir(m.join(".geosync"))), libc::EEXIST);
    assert_eq!(errno_of(fs::write(m.join(".geosync"), b"x")), libc::EISDIR);
    assert_eq!(errno_of(fs::remove_dir(m.join(".geosync"))), libc::EROFS);
    assert!(
        fs::read_dir(m.join(".geosync/conflicts"))
            .unwrap()
            .next()
            .is_none()
    );
    drop(mount);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordinary_tools_work_across_two_regions() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    let eu_mount = cluster.mount("eu", MountOptions::default());
    let us_mount = cluster.mount("us", MountOptions::default());
    let (eu, us) = (eu_mount.path(), us_mount.path());
    let work = cluster.path().join("work");
    let src = work.join("src");
    fs::create_dir_all(src.join("Movies/Film (2020)")).unwrap();
    fs::create_dir_all(src.join("Shows/Show/Season 01")).unwrap();
    fs::write(src.join("Movies/Film (2020)/film.mkv"), data(300_000, 1)).unwrap();
    fs::write(src.join("Movies/Film (2020)/film.nfo"), b"<movie/>").unwrap();
    fs::write(src.join("Shows/Show/Season 01/e01.mkv"), data(70_000, 2)).unwrap();
    fs::write(src.join("Shows/Show/poster.jpg"), data(5_000, 3)).unwrap();
    std::os::unix::fs::symlink("Film (2020)/film.mkv", src.join("Movies/latest")).unwrap();
    fs::set_permissions(
        src.join("Shows/Show/poster.jpg"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // cp -a into eu, diff -r from us.
    sh(&format!("cp -a {}/. {}/lib", src.display(), eu.display()));
    let diff = format!("diff -r {} {}/lib", src.display(), us.display());
    assert!(
        wait_until(SETTLE, || Command::new("sh")
            .arg("-c")
            .arg(&diff)
            .output()
            .is_ok_and(|o| o.status.success())),
        "{}",
        String::from_utf8_lossy(
            &Command::new("sh")
                .arg("-c")
                .arg(&diff)
                .output()
                .unwrap()
                .stdout
        )
    );
    let meta = fs::metadata(us.join("lib/Shows/Show/poster.jpg")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "cp -a kept the mode");
    let src_mtime = fs::metadata(src.join("Movies/Film (2020)/film.mkv"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        fs::metadata(us.join("lib/Movies/Film (2020)/film.mkv"))
            .unwrap()
            .modified()
            .unwrap(),
        src_mtime,
        "cp -a kept the mtime"
    );

    // find -newer.
    std::thread::sleep(Duration::from_millis(20));
    sh(&format!("touch {}/lib/Movies/fresh.txt", eu.display()));
    let newer = sh(&format!(
        "cd {}/lib && find . -newer 'Shows/Show/poster.jpg' -type f",
        eu.display()
    ));
    assert_eq!(newer.trim(), "./Movies/fresh.txt", "{newer}");

    // mv and rm -r in us reach eu. The removal must follow every version of
    // fresh.txt (touch creates, then sets times): a delete concurrent with a
    // write it has not seen loses to the write, by design.
    let fresh_mtime = fs::metadata(eu.join("lib/Movies/fresh.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(
        wait_until(SETTLE, || fs::metadata(us.join("lib/Movies/fresh.txt"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t == fresh_mtime)),
        "fresh.txt's last version reached us"
    );
    sh(&format!("mv {0}/lib/Shows {0}/lib/Series", us.display()));
    sh(&format!("rm -r {}/lib/Movies/fresh.txt", us.display()));
    assert!(
        wait_until(SETTLE, || eu
            .join("lib/Series/Show/Season 01/e01.mkv")
            .exists()
            && !eu.join("lib/Shows").exists()
            && !eu.join("lib/Movies/fresh.txt").exists()),
        "mv and rm reached eu"
    );

    // tar c | tar x.
    sh(&format!(
        "tar -C {} -cf - lib | tar -C {} -xf - && diff -r {}/lib {}/lib",
        eu.display(),
        work.display(),
        eu.display(),
        work.display()
    ));
    sh(&format!(
        "mkdir {0}/untar && tar -C {1} -cf - . | tar -C {0}/untar -xf -",
        us.display(),
        src.display()
    ));
    sh(&format!("diff -r {} {}/untar", src.display(), us.display()));

    // rsync -a twice: the second transfers nothing.
    if has("rsync") {
        sh(&format!(
            "rsync -a {}/ {}/synced/",
            src.display(),
            eu.display()
        ));
        sh(&format!(
            "diff -r {} {}/synced",
            src.display(),
            eu.display()
        ));
        let stats = sh(&format!(
            "rsync -a --stats {}/ {}/synced/",
            src.display(),
            eu.display()
        ));
        assert!(
            stats.contains("Number of regular files transferred: 0"),
            "{stats}"
        );
    } else {
        eprintln!("rsync is not installed: skipping the rsync checks");
    }

    // An editor-style save: temp file, fsync, rename over.
    let doc = eu.join("doc.txt");
    fs::write(&doc, b"draft 1").unwrap();
    let tmp = eu.join(".doc.txt.swp");
    let mut h = File::create(&tmp).unwrap();
    h.write_all(b"draft 2").unwrap();
    h.sync_all().unwrap();
    drop(h);
    fs::rename(&tmp, &doc).unwrap();
    assert_eq!(fs::read(&doc).unwrap(), b"draft 2");
    assert!(
        wait_content(&us.join("doc.txt"), b"draft 2"),
        "the save reached us"
    );

    // ls -l of a directory of 10k entries.
    let many = eu.join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..10_000 {
        File::create(many.join(format!("f{i:05}"))).unwrap();
    }
    let listing = sh(&format!("ls -l {}", many.display()));
    assert_eq!(
        listing.lines().count(),
        10_001,
        "a total line and 10k entries"
    );
    let us_many = us.join("many");
    assert!(
        wait_until(SETTLE, || fs::read_dir(&us_many)
            .is_ok_and(|d| d.count() == 10_000)),
        "10k entries reached us"
    );
    drop((eu_mount, us_mount));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_write_reaches_a_reader_with_long_cache_lifetimes() {
    let cluster = Cluster::start(&["eu", "us"], StrategyName::Lww).await;
    let long = MountOptions {
        ttl: Duration::from_secs(600),
        ..MountOptions::default()
    };
    let eu = cluster.mount("eu", long.clone());
    let us = cluster.mount("us", long);
    fs::write(eu.path().join("news.txt"), b"version 1").unwrap();
    let theirs = us.path().join("news.txt");
    assert!(wait_content(&theirs, b"version 1"), "first version");
    // us has the entry, attributes and pages cached for ten minutes now.
    assert_eq!(fs::read(&theirs).unwrap(), b"version 1");
    fs::write(eu.path().join("news.txt"), b"version 2, longer").unwrap();
    assert!(wait_content(&theirs, b"version 2, longer"), "new content");
    assert_eq!(fs::metadata(&theirs).unwrap().len(), 17);
    // A remote delete and a remote create are seen too.
    fs::remove_file(eu.path().join("news.txt")).unwrap();
    assert!(wait_until(SETTLE, || !theirs.exists()), "deleted");
    fs::write(eu.path().join("news.txt"), b"back").unwrap();
    assert!(wait_content(&theirs, b"back"), "created again");
    drop((eu, us));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_random_reads_fetch_what_they_need() {
    let mut cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    cluster.sync = geosync_core::config::SyncConfig {
        default: SyncStrategy::OnDemand,
        rules: Vec::new(),
    };
    cluster.start_region("us").await;
    let eu = cluster.mount("eu", MountOptions::default());
    let us = cluster.mount("us", MountOptions::default());
    let source = data(8 << 20, 7);
    fs::write(eu.path().join("big.bin"), &source).unwrap();
    let theirs = us.path().join("big.bin");
    assert!(
        wait_until(SETTLE, || fs::metadata(&theirs)
            .is_ok_and(|m| m.len() == source.len() as u64)),
        "metadata reached us"
    );
    let content = cluster
        .ns("us")
        .resolve(b"/big.bin")
        .unwrap()
        .meta
        .content
        .unwrap();
    assert!(
        !cluster
            .region("us")
            .engine()
            .content
            .is_complete(&content.id)
            .unwrap()
    );
    let mut h = File::open(&theirs).unwrap();
    for (i, offset) in [5_000_000u64, 17, 8_000_000, 1_234_567, (8 << 20) - 10]
        .iter()
        .enumerate()
    {
        let mut buf = vec![0u8; 4096.min(source.len() - *offset as usize)];
        h.seek(SeekFrom::Start(*offset)).unwrap();
        h.read_exact(&mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &source[*offset as usize..][..buf.len()],
            "read {i}"
        );
    }
    drop(h);
    let held = cluster
        .region("us")
        .engine()
        .content
        .missing_chunks(&content.id, 0..source.len() as u64)
        .unwrap();
    assert!(
        !held.is_empty(),
        "random reads fetched only some chunks, not the whole file"
    );
    // A whole read gets every byte, verified.
    assert_eq!(fs::read(&theirs).unwrap(), source);
    drop((eu, us));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflict_versions_show_under_the_control_directory() {
    let manual = geosync_core::config::ConflictConfig {
        default: StrategyName::Manual,
        ..Default::default()
    };
    let cluster = Cluster::concurrent_writes(
        manual,
        "doc.txt",
        b"base\n",
        b"line\nfrom eu\n",
        b"line\nfrom us\n",
    )
    .await;
    cluster.converged().await.expect("both versions everywhere");
    let mount = cluster.mount("us", MountOptions::default());
    let node = cluster.ns("us").resolve(b"/doc.txt").unwrap().id;
    let dir = mount
        .path()
        .join(".geosync/conflicts")
        .join(node.to_string());
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["eu", "us"]);
    assert_eq!(fs::read(dir.join("eu")).unwrap(), b"line\nfrom eu\n");
    assert_eq!(fs::read(dir.join("us")).unwrap(), b"line\nfrom us\n");
    let diff = Command::new("diff")
        .arg(dir.join("eu"))
        .arg(dir.join("us"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&diff.stdout).contains("> from us"));
    assert_eq!(
        get_xattr(&mount.path().join("doc.txt"), "user.geosync.state").unwrap(),
        b"conflict"
    );

    cluster
        .ns("us")
        .resolve_conflict(node, ConflictChoice::Keep("eu".parse().unwrap()))
        .unwrap();
    assert!(
        wait_until(SETTLE, || !dir.exists()),
        "the conflict directory is gone after resolution"
    );
    assert!(wait_content(
        &mount.path().join("doc.txt"),
        b"line\nfrom eu\n"
    ));
    drop(mount);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mount_errors_read_only_mounts_and_unmount_with_open_files() {
    let cluster = Cluster::start(&["eu"], StrategyName::Lww).await;
    let mount = cluster.mount("eu", MountOptions::default());
    fs::write(mount.path().join("kept.txt"), b"kept").unwrap();

    // The same directory cannot be mounted twice; the error says what to do.
    let ctx = geosync_tests::FsContext::for_region(cluster.region("eu"));
    let again = geosync_fs::mount(ctx.clone(), mount.path(), &MountOptions::default());
    let err = again.err().expect("a second mount is refused").to_string();
    assert!(
        err.contains("already mounted") && err.contains("fusermount3 -u"),
        "{err}"
    );
    let missing = geosync_fs::mount(
        ctx.clone(),
        &cluster.path().join("no-such-dir"),
        &MountOptions::default(),
    );
    let err = missing
        .err()
        .expect("a missing mount point is refused")
        .to_string();
    assert!(err.contains("does not exist"), "{err}");

    // Unmounting with a file open completes; the open file is cut off.
    let mut open = File::open(mount.path().join("kept.txt")).unwrap();
    let writer = OpenOptions::new()
        .write(true)
        .open(mount.path().join("other.txt"))
        .or_else(|_| File::create(mount.path().join("other.txt")))
        .unwrap();
    let path = mount.path().to_path_buf();
    let started = std::time::Instant::now();
    mount.unmount().expect("unmount with open files");
    assert!(started.elapsed() < Duration::from_secs(15));
    let mut buf = Vec::new();
    assert!(open.read_to_end(&mut buf).is_err() || buf == b"kept");
    drop((open, writer));
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!(" {} ", path.display())),
        "nothing is left mounted"
    );

    // Read-only: reads work, every change is refused.
    let ro = geosync_fs::mount(
        ctx,
        &path,
        &MountOptions {
            read_only: true,
            ..MountOptions::default()
        },
    )
    .expect("read-only mount");
    assert_eq!(fs::read(ro.path().join("kept.txt")).unwrap(), b"kept");
    assert_eq!(
        errno_of(fs::write(ro.path().join("new.txt"), b"x")),
        libc::EROFS
    );
    assert_eq!(
        errno_of(fs::remove_file(ro.path().join("kept.txt"))),
        libc::EROFS
    );
    assert_eq!(errno_of(fs::create_dir(ro.path().join("d"))), libc::EROFS);
    drop(ro);
    cluster.shutdown().await;
}
