//! The jail's files: its directory with the binary (a hard link to the exec
//! file where that is safe, a copy otherwise), then a new mount namespace
//! pivoted into it, whose `/dev` is a small tmpfs with the device nodes
//! brique needs.
//!
//! The nodes live in the jail's own tmpfs rather than on the host's disk:
//! they vanish with the jail, never sit on the host's file system where
//! another process could open them, and cost no disk metadata writes
//! (on this project's development machine each mkdir and mknod on disk
//! took 50-80 us, most of what the jail's files cost).

use crate::args::JailPlan;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// What can fail while making the jail's files or entering it.
#[derive(Debug, thiserror::Error)]
pub enum JailFsError {
    #[error("a jail for this id already exists: {0}")]
    Exists(String),
    #[error("cannot create {path}: {source}")]
    Create { path: String, source: io::Error },
    #[error("cannot copy {from} into the jail: {source}")]
    Copy { from: String, source: io::Error },
    #[error("cannot create the device node {path}: {source}")]
    DeviceNode { path: String, source: io::Error },
    #[error("cannot {what}: {source}")]
    Mount {
        what: &'static str,
        source: io::Error,
    },
}

/// A character device brique needs in its jail.
struct DeviceNode {
    path: &'static str,
    major: u32,
    minor: u32,
    mode: u32,
}

/// The kernel's fixed numbers for the devices brique opens.
const KVM: DeviceNode = DeviceNode {
    path: "dev/kvm",
    major: 10,
    minor: 232,
    mode: 0o660,
};
const TUN: DeviceNode = DeviceNode {
    path: "dev/net/tun",
    major: 10,
    minor: 200,
    mode: 0o660,
};
const URANDOM: DeviceNode = DeviceNode {
    path: "dev/urandom",
    major: 1,
    minor: 9,
    mode: 0o666,
};
const NULL: DeviceNode = DeviceNode {
    path: "dev/null",
    major: 1,
    minor: 3,
    mode: 0o666,
};

/// Makes `<jail dir>/root` with the binary and an empty `dev` (where the
/// jail's `/dev` is mounted), the root owned by the jail's uid and gid.
/// The jail directory must not exist yet.
pub fn populate(plan: &JailPlan) -> Result<(), JailFsError> {
    let create = |path: &Path, source| JailFsError::Create {
        path: path.display().to_string(),
        source,
    };
    if plan.jail_dir.exists() {
        return Err(JailFsError::Exists(plan.jail_dir.display().to_string()));
    }
    if let Some(parent) = plan.jail_dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| create(parent, source))?;
    }
    // Made in one step, so that two jailers for one id cannot share it.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&plan.jail_dir)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => {
                JailFsError::Exists(plan.jail_dir.display().to_string())
            }
            _ => create(&plan.jail_dir, source),
        })?;
    let root = plan.root();
    for dir in [root.clone(), root.join("dev")] {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(|source| create(&dir, source))?;
    }
    let binary = root.join(&plan.exec_name);
    place_binary(&plan.exec_file, &binary).map_err(|source| JailFsError::Copy {
        from: plan.exec_file.display().to_string(),
        source,
    })?;
    // brique creates its API socket and files in its root.
    chown(&root, plan.uid, plan.gid).map_err(|source| create(&root, source))?;
    // The jail directory itself only needs to be crossed.
    std::fs::set_permissions(&plan.jail_dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|source| create(&plan.jail_dir, source))
}

/// Puts the exec file at `to`: a hard link when it is on the jail's file
/// system and only root can change it (owned by root, writable by nobody
/// else, no set-id bit), so that nothing is copied (a 10 MB binary took
/// about 6 ms to copy, most of what jailing added to brique's start); a
/// root-owned 0755 copy otherwise. The jailed process cannot change a
/// linked binary (root's, not writable for it); unlinking its name in the
/// jail leaves the exec file.
fn place_binary(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(from)?;
    let root_only = meta.uid() == 0 && meta.mode() & 0o7022 == 0;
    if root_only && std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
}

/// Mounts the jail's `/dev` (a tmpfs room for a few nodes, no set-id, no
/// executables) on `<root>/dev` and makes the device nodes in it, owned by
/// `uid` and `gid`. On failure nothing stays mounted.
fn make_dev(root: &Path, plan: &JailPlan) -> Result<(), JailFsError> {
    let dev = root.join("dev");
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=755,size=16k,nr_inodes=16"),
    )
    .map_err(|source| JailFsError::Mount {
        what: "mount the jail's /dev",
        source,
    })?;
    let made = make_dev_nodes(root, plan);
    if made.is_err() {
        detach_quietly(&dev);
    }
    made
}

fn make_dev_nodes(root: &Path, plan: &JailPlan) -> Result<(), JailFsError> {
    let net = root.join("dev/net");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&net)
        .map_err(|source| JailFsError::Create {
            path: "/dev/net".into(),
            source,
        })?;
    let mut nodes = vec![KVM, TUN, URANDOM];
    if plan.daemonize {
        nodes.push(NULL);
    }
    for node in nodes {
        make_node(root, &node, plan.uid, plan.gid)?;
    }
    Ok(())
}

fn make_node(root: &Path, node: &DeviceNode, uid: u32, gid: u32) -> Result<(), JailFsError> {
    let path = root.join(node.path);
    let error = |source| JailFsError::DeviceNode {
        path: format!("/{}", node.path),
        source,
    };
    let c_path = c_path(&path).map_err(error)?;
    // SAFETY: mknod reads the NUL-terminated path we own; it creates a
    // device node and touches no memory of ours.
    let made = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            libc::S_IFCHR | node.mode,
            libc::makedev(node.major, node.minor),
        )
    };
    if made != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    // mknod's mode is filtered by the umask: set it as asked.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(node.mode)).map_err(error)?;
    chown(&path, uid, gid).map_err(error)
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Enters a new mount namespace whose `/` is the jail's root, with its own
/// `/dev`: the host's mounts are no longer reachable, and nothing mounted
/// here propagates back. Until the pivot, a failure leaves the jail's
/// directory as `populate` made it (the jailer then removes it).
pub fn pivot_into(plan: &JailPlan) -> Result<(), JailFsError> {
    let root = &plan.root();
    let fail = |what| move |source| JailFsError::Mount { what, source };
    // SAFETY: unshare only changes this process's namespaces.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })
        .map_err(fail("enter a new mount namespace"))?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )
    .map_err(fail("stop mount propagation to the host"))?;
    let here = c_path(Path::new(".")).map_err(fail("name the new root"))?;
    make_dev(root, plan)?;
    let entered = (|| {
        mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None)
            .map_err(fail("bind-mount the jail root on itself"))?;
        std::env::set_current_dir(root).map_err(fail("enter the jail root"))?;
        // pivot_root(".", "."), as pivot_root(2) describes: the old root
        // ends stacked on the new one and is detached at once, so no mount
        // point for it is made in the jail (a mkdir and an rmdir fewer).
        // SAFETY: pivot_root takes two NUL-terminated paths we own.
        check(unsafe { libc::syscall(libc::SYS_pivot_root, here.as_ptr(), here.as_ptr()) } as i32)
            .map_err(fail("pivot_root into the jail"))
    })();
    if entered.is_err() {
        // Still outside: what is mounted on the jail's directories goes,
        // so that the jailer can remove them.
        detach_quietly(root);
        detach_quietly(&root.join("dev"));
        return entered;
    }
    // SAFETY: umount2 takes a NUL-terminated path we own.
    check(unsafe { libc::umount2(here.as_ptr(), libc::MNT_DETACH) })
        .map_err(fail("detach the host's file system"))?;
    std::env::set_current_dir("/").map_err(fail("enter the new /"))
}

/// mount(2). `fs` and `options` are for a new file system; a bind mount or
/// a propagation change has neither.
fn mount(
    source: Option<&Path>,
    target: &Path,
    fs: Option<&str>,
    flags: libc::c_ulong,
    options: Option<&str>,
) -> io::Result<()> {
    let text =
        |text: &str| CString::new(text).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let source = source.map(c_path).transpose()?;
    let target = c_path(target)?;
    let fs = fs.map(text).transpose()?;
    let options = options.map(text).transpose()?;
    let pointer =
        |text: &Option<CString>| text.as_ref().map_or(std::ptr::null(), |text| text.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string we own for
    // the duration of the call.
    check(unsafe {
        libc::mount(
            pointer(&source),
            target.as_ptr(),
            pointer(&fs),
            flags,
            pointer(&options).cast(),
        )
    })
}

/// Detaches whatever is mounted on `path`, on a failure's way out: an error
/// (nothing mounted there) changes nothing.
fn detach_quietly(path: &Path) {
    if let Ok(path) = c_path(path) {
        // SAFETY: umount2 takes a NUL-terminated path we own.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod place_binary_tests {
    use super::*;

    #[test]
    fn a_root_only_binary_is_linked_and_any_other_copied() {
        let dir = std::env::temp_dir().join(format!("brique-jail-bin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let exec = dir.join("brique");
        std::fs::write(&exec, b"\x7fELF not really").unwrap();
        std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o755)).unwrap();
        let linked = dir.join("linked");
        place_binary(&exec, &linked).unwrap();
        let same_inode =
            std::fs::metadata(&linked).unwrap().ino() == std::fs::metadata(&exec).unwrap().ino();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(same_inode, "root's 0755 binary is linked");
        } else {
            assert!(!same_inode, "a binary not owned by root is copied");
        }
        // Writable by others: copied, and the copy is root's 0755.
        std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o757)).unwrap();
        let copied = dir.join("copied");
        place_binary(&exec, &copied).unwrap();
        let meta = std::fs::metadata(&copied).unwrap();
        assert_ne!(meta.ino(), std::fs::metadata(&exec).unwrap().ino());
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert_eq!(
            std::fs::read(&copied).unwrap(),
            std::fs::read(&exec).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
