//! cgroup v2: the jail's cgroup `<mount>/<parent>/<id>`, its settings, and
//! this process moved into it (brique, exec'd from it, stays there).

use crate::args::CgroupSetting;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What can fail with cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 file system is mounted (/proc/mounts has no cgroup2)")]
    NotMounted,
    #[error("cannot read /proc/mounts: {0}")]
    Mounts(io::Error),
    #[error("the cgroup {0} already exists")]
    Exists(String),
    #[error("cannot create the cgroup {path}: {source}")]
    Create { path: String, source: io::Error },
    #[error(
        "the cgroup controller {controller} is not available under {path} (cgroup.controllers)"
    )]
    Controller { controller: String, path: String },
    #[error("cannot enable the {controller} controller in {path}: {source}")]
    Enable {
        controller: String,
        path: String,
        source: io::Error,
    },
    #[error("unknown cgroup file {0} (no such file in the jail's cgroup)")]
    UnknownFile(String),
    #[error("cannot set {file} to {value}: {source}")]
    Write {
        file: String,
        value: String,
        source: io::Error,
    },
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn mount_point() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(CgroupError::Mounts)?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(target))
        })
        .ok_or(CgroupError::NotMounted)
}

/// The jail's cgroup, made and set up; removed again by `remove` if the
/// jailer fails before brique runs.
#[derive(Debug)]
pub struct JailCgroup {
    pub path: PathBuf,
}

impl JailCgroup {
    /// Makes `<mount>/<parent>/<id>` with `settings`, enabling their
    /// controllers on the way down from the mount.
    pub fn create(
        mount: &Path,
        parent: &str,
        id: &str,
        settings: &[CgroupSetting],
    ) -> Result<JailCgroup, CgroupError> {
        let parent_path = mount.join(parent);
        let path = parent_path.join(id);
        if path.exists() {
            return Err(CgroupError::Exists(path.display().to_string()));
        }
        let mut controllers: Vec<&str> = settings.iter().map(CgroupSetting::controller).collect();
        controllers.sort_unstable();
        controllers.dedup();
        // Each level from the mount to the parent passes the controllers on.
        let mut level = mount.to_path_buf();
        let levels = Path::new(parent).components();
        for next in std::iter::once(None).chain(levels.map(Some)) {
            if let Some(part) = next {
                level.push(part);
                if !level.exists() {
                    std::fs::create_dir(&level).map_err(|source| CgroupError::Create {
                        path: level.display().to_string(),
                        source,
                    })?;
                }
            }
            for controller in &controllers {
                enable(&level, controller)?;
            }
        }
        std::fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.display().to_string(),
            source,
        })?;
        let cgroup = JailCgroup { path };
        for setting in settings {
            if let Err(err) = cgroup.set(setting) {
                cgroup.remove();
                return Err(err);
            }
        }
        Ok(cgroup)
    }

    fn set(&self, setting: &CgroupSetting) -> Result<(), CgroupError> {
        let file = self.path.join(&setting.file);
        // Opened without create: an unknown setting is an error, never a new file.
        let mut handle = match std::fs::OpenOptions::new().write(true).open(&file) {
            Ok(handle) => handle,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(CgroupError::UnknownFile(setting.file.clone()))
            }
            Err(source) => {
                return Err(CgroupError::Write {
                    file: setting.file.clone(),
                    value: setting.value.clone(),
                    source,
                })
            }
        };
        handle
            .write_all(setting.value.as_bytes())
            .map_err(|source| CgroupError::Write {
                file: setting.file.clone(),
                value: setting.value.clone(),
                source,
            })
    }

    /// Moves the calling process into the cgroup.
    pub fn enter(&self) -> Result<(), CgroupError> {
        self.set(&CgroupSetting {
            file: "cgroup.procs".into(),
            value: std::process::id().to_string(),
        })
    }

    /// Removes the cgroup (it must hold no process).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.path);
    }

    /// Moves the calling process back to the mount's root cgroup, then
    /// removes the cgroup.
    pub fn leave_and_remove(&self, mount: &Path) {
        let _ = std::fs::write(mount.join("cgroup.procs"), std::process::id().to_string());
        self.remove();
    }
}

/// Enables `controller` for the children of the cgroup at `level`.
fn enable(level: &Path, controller: &str) -> Result<(), CgroupError> {
    let available = std::fs::read_to_string(level.join("cgroup.controllers")).unwrap_or_default();
    if !available.split_whitespace().any(|name| name == controller) {
        return Err(CgroupError::Controller {
            controller: controller.to_owned(),
            path: level.display().to_string(),
        });
    }
    let enabled = std::fs::read_to_string(level.join("cgroup.subtree_control")).unwrap_or_default();
    if enabled.split_whitespace().any(|name| name == controller) {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(level.join("cgroup.subtree_control"))
        .and_then(|mut file| file.write_all(format!("+{controller}").as_bytes()))
        .map_err(|source| CgroupError::Enable {
            controller: controller.to_owned(),
            path: level.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like a cgroup v2 mount whose root offers
    /// `memory` (plain files stand in for the kernel's).
    fn fake_mount(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("brique-jailer-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.controllers"), "cpu memory\n").unwrap();
        std::fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    #[test]
    fn a_controller_the_mount_lacks_is_refused_before_any_cgroup_is_made() {
        let mount = fake_mount("controller");
        let settings = [CgroupSetting {
            file: "hugetlb.2MB.max".into(),
            value: "0".into(),
        }];
        let err = JailCgroup::create(&mount, "brique", "vm", &settings).unwrap_err();
        assert!(matches!(err, CgroupError::Controller { .. }), "{err}");
        assert!(!mount.join("brique/vm").exists());
        let _ = std::fs::remove_dir_all(&mount);
    }

    #[test]
    fn an_unknown_setting_is_refused_and_the_cgroup_removed() {
        let mount = fake_mount("unknown");
        std::fs::create_dir(mount.join("brique")).unwrap();
        std::fs::write(mount.join("brique/cgroup.controllers"), "memory\n").unwrap();
        std::fs::write(mount.join("brique/cgroup.subtree_control"), "memory\n").unwrap();
        let settings = [CgroupSetting {
            file: "memory.nonsense".into(),
            value: "1".into(),
        }];
        let err = JailCgroup::create(&mount, "brique", "vm", &settings).unwrap_err();
        assert!(matches!(err, CgroupError::UnknownFile(ref file) if file == "memory.nonsense"));
        assert!(!mount.join("brique/vm").exists(), "nothing left behind");
        assert_eq!(
            std::fs::read_to_string(mount.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );
        let _ = std::fs::remove_dir_all(&mount);
    }
}
