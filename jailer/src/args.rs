//! The jailer's command line (Firecracker's jailer flags) and the checks
//! made before anything on the host changes.

use clap::Parser;
use std::path::{Path, PathBuf};

/// What is wrong with a command line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("invalid --id {0:?}: 1 to 64 characters, letters, digits and '-' only")]
    BadId(String),
    #[error("--exec-file {0} is not an existing regular file")]
    MissingExec(String),
    #[error("--exec-file {0} is dynamically linked (it needs {1}), and the jail holds the binary alone: build it statically (-C target-feature=+crt-static)")]
    Dynamic(String, String),
    #[error("--exec-file {0} has no usable file name")]
    BadExecName(String),
    #[error("--chroot-base-dir {0} must be an absolute path")]
    RelativeBase(String),
    #[error("--netns {0} does not exist")]
    MissingNetns(String),
    #[error("--cgroup-version {0}: only cgroup version 2 is supported")]
    CgroupVersion(u8),
    #[error("--cgroup {0:?}: expected FILE=VALUE with FILE like memory.max (controller.setting)")]
    BadCgroup(String),
    #[error("--parent-cgroup {0:?}: a relative path without '..'")]
    BadParentCgroup(String),
    #[error("--resource-limit {0:?}: expected fsize=N or no-file=N")]
    BadResourceLimit(String),
}

/// brique-jailer: starts brique inside a jail, as Firecracker's jailer
/// starts Firecracker.
///
/// Checks the arguments, closes inherited descriptors and clears the
/// environment, copies --exec-file into <chroot-base-dir>/<exec name>/<id>/root,
/// sets resource limits and cgroup v2 limits, pivots into that root in a new
/// mount namespace with /dev/kvm, /dev/net/tun and /dev/urandom, optionally
/// joins a network namespace and a new PID namespace, drops to --uid and
/// --gid, and executes the copy with brique's arguments (those after --).
#[derive(Debug, Parser)]
#[command(name = "brique-jailer", version, about, long_about)]
pub struct Args {
    /// The microVM's id: the jail's directory name, and brique's --id.
    #[arg(long)]
    pub id: String,

    /// The brique binary to copy into the jail and run.
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,

    /// The user id brique runs as.
    #[arg(long)]
    pub uid: u32,

    /// The group id brique runs as.
    #[arg(long)]
    pub gid: u32,

    /// Where jails are made: <dir>/<exec file name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = "/srv/jailer")]
    pub chroot_base_dir: PathBuf,

    /// A network namespace to join (a path such as /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Detach from the terminal and session; stdio goes to /dev/null.
    #[arg(long)]
    pub daemonize: bool,

    /// Run brique as PID 1 of a new PID namespace (its pid, as the host
    /// sees it, goes to <root>/<exec file name>.pid).
    #[arg(long)]
    pub new_pid_ns: bool,

    /// A cgroup v2 setting, FILE=VALUE (e.g. memory.max=268435456); repeatable.
    #[arg(long, value_name = "FILE=VALUE")]
    pub cgroup: Vec<String>,

    /// The cgroup version (only 2).
    #[arg(long, default_value_t = 2)]
    pub cgroup_version: u8,

    /// The cgroup the jail's cgroup <id> is made in (default: the exec
    /// file's name), under the cgroup v2 mount.
    #[arg(long, value_name = "PATH")]
    pub parent_cgroup: Option<String>,

    /// A resource limit, fsize=N (bytes) or no-file=N; repeatable.
    #[arg(long, value_name = "RESOURCE=N")]
    pub resource_limit: Vec<String>,

    /// brique's own arguments.
    #[arg(last = true)]
    pub brique_args: Vec<String>,
}

/// One cgroup setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    pub file: String,
    pub value: String,
}

impl CgroupSetting {
    /// The controller the setting belongs to (`memory` for `memory.max`).
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// A resource limit to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceLimit {
    FileSize(u64),
    OpenFiles(u64),
}

/// Everything the jail is made from, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPlan {
    pub id: String,
    pub exec_file: PathBuf,
    pub exec_name: String,
    pub uid: u32,
    pub gid: u32,
    /// `<base>/<exec name>/<id>`: removed again if the jailer fails before
    /// brique runs.
    pub jail_dir: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cgroups: Vec<CgroupSetting>,
    pub parent_cgroup: String,
    pub limits: Vec<ResourceLimit>,
    pub brique_args: Vec<String>,
}

impl JailPlan {
    /// `<jail dir>/root`, the jail's `/`.
    pub fn root(&self) -> PathBuf {
        self.jail_dir.join("root")
    }
}

/// Checks `args`; nothing on the host is touched.
pub fn plan(args: Args) -> Result<JailPlan, ArgsError> {
    if !valid_id(&args.id) {
        return Err(ArgsError::BadId(args.id));
    }
    let shown = args.exec_file.display().to_string();
    if !args.exec_file.is_file() {
        return Err(ArgsError::MissingExec(shown));
    }
    if let Some(interpreter) = elf_interpreter(&args.exec_file) {
        return Err(ArgsError::Dynamic(shown, interpreter));
    }
    let exec_name = args
        .exec_file
        .file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .ok_or(ArgsError::BadExecName(shown))?;
    if !args.chroot_base_dir.is_absolute() {
        return Err(ArgsError::RelativeBase(
            args.chroot_base_dir.display().to_string(),
        ));
    }
    if let Some(netns) = &args.netns {
        if !netns.exists() {
            return Err(ArgsError::MissingNetns(netns.display().to_string()));
        }
    }
    if args.cgroup_version != 2 {
        return Err(ArgsError::CgroupVersion(args.cgroup_version));
    }
    let cgroups = args
        .cgroup
        .iter()
        .map(|text| parse_cgroup(text))
        .collect::<Result<Vec<_>, _>>()?;
    let parent_cgroup = args.parent_cgroup.unwrap_or_else(|| exec_name.clone());
    if !valid_relative(&parent_cgroup) {
        return Err(ArgsError::BadParentCgroup(parent_cgroup));
    }
    let limits = args
        .resource_limit
        .iter()
        .map(|text| parse_limit(text))
        .collect::<Result<Vec<_>, _>>()?;
    let jail_dir = args.chroot_base_dir.join(&exec_name).join(&args.id);
    Ok(JailPlan {
        id: args.id,
        exec_file: args.exec_file,
        exec_name,
        uid: args.uid,
        gid: args.gid,
        jail_dir,
        netns: args.netns,
        daemonize: args.daemonize,
        new_pid_ns: args.new_pid_ns,
        cgroups,
        parent_cgroup,
        limits,
        brique_args: args.brique_args,
    })
}

/// The program interpreter (dynamic loader) a 64-bit ELF file asks for,
/// if it is one and asks for one (its PT_INTERP program header). Reads the
/// headers only, not the whole binary.
fn elf_interpreter(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileExt;
    const PT_INTERP: u32 = 3;
    const MAX_INTERPRETER: usize = 4096;
    let file = std::fs::File::open(path).ok()?;
    let read = |offset: u64, len: usize| {
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, offset).ok().map(|()| bytes)
    };
    let header = read(0, 64)?;
    // ELF magic, 64-bit class, little-endian.
    if header[..6] != *b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at =
        |bytes: &[u8], at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at =
        |bytes: &[u8], at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at =
        |bytes: &[u8], at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let table = u64_at(&header, 0x20)?;
    let entry_size = usize::from(u16_at(&header, 0x36)?);
    let count = usize::from(u16_at(&header, 0x38)?);
    if entry_size < 0x28 {
        return None;
    }
    let headers = read(table, entry_size.checked_mul(count)?)?;
    headers.chunks_exact(entry_size).find_map(|entry| {
        if u32_at(entry, 0)? != PT_INTERP {
            return None;
        }
        let offset = u64_at(entry, 8)?;
        let size = usize::try_from(u64_at(entry, 32)?)
            .ok()?
            .min(MAX_INTERPRETER);
        let name = read(offset, size)?;
        Some(
            String::from_utf8_lossy(&name)
                .trim_end_matches('\0')
                .to_owned(),
        )
    })
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A relative path whose parts are plain names.
fn valid_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path).components().all(|part| {
            matches!(part, std::path::Component::Normal(name)
                if name.to_str().is_some_and(|name| !name.starts_with('.')))
        })
}

fn parse_cgroup(text: &str) -> Result<CgroupSetting, ArgsError> {
    let bad = || ArgsError::BadCgroup(text.to_owned());
    let (file, value) = text.split_once('=').ok_or_else(bad)?;
    let (controller, setting) = file.split_once('.').ok_or_else(bad)?;
    let plain = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    if !plain(controller) || !plain(setting) || value.is_empty() || value.contains('\n') {
        return Err(bad());
    }
    Ok(CgroupSetting {
        file: file.to_owned(),
        value: value.to_owned(),
    })
}

fn parse_limit(text: &str) -> Result<ResourceLimit, ArgsError> {
    let bad = || ArgsError::BadResourceLimit(text.to_owned());
    let (name, value) = text.split_once('=').ok_or_else(bad)?;
    let value: u64 = value.parse().map_err(|_| bad())?;
    match name {
        "fsize" => Ok(ResourceLimit::FileSize(value)),
        "no-file" => Ok(ResourceLimit::OpenFiles(value)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a static brique: any regular file that is not a
    /// dynamically linked ELF (this crate's own source).
    fn exec_file() -> &'static str {
        concat!(env!("CARGO_MANIFEST_DIR"), "/src/main.rs")
    }

    fn args(extra: &[&str]) -> Args {
        let mut all = vec![
            "brique-jailer",
            "--id",
            "vm-1",
            "--exec-file",
            exec_file(),
            "--uid",
            "123",
            "--gid",
            "124",
        ];
        all.extend_from_slice(extra);
        Args::try_parse_from(all).unwrap()
    }

    #[test]
    fn a_good_command_line_gives_the_jail_paths_and_settings() {
        let plan = plan(args(&[
            "--chroot-base-dir",
            "/srv/j",
            "--cgroup",
            "memory.max=268435456",
            "--resource-limit",
            "no-file=1024",
            "--",
            "--api-sock",
            "/api.sock",
        ]))
        .unwrap();
        assert_eq!(plan.jail_dir, PathBuf::from("/srv/j/main.rs/vm-1"));
        assert_eq!(plan.root(), PathBuf::from("/srv/j/main.rs/vm-1/root"));
        assert_eq!(plan.exec_name, "main.rs");
        assert_eq!(plan.parent_cgroup, "main.rs");
        assert_eq!(plan.cgroups[0].controller(), "memory");
        assert_eq!(plan.limits, vec![ResourceLimit::OpenFiles(1024)]);
        assert_eq!(plan.brique_args, vec!["--api-sock", "/api.sock"]);
        assert_eq!((plan.uid, plan.gid), (123, 124));
    }

    #[test]
    fn ids_are_short_names_of_letters_digits_and_dashes() {
        for bad in ["", "a/b", "..", "vm 1", "vm_1", &"x".repeat(65)] {
            let mut parsed = args(&[]);
            parsed.id = bad.to_owned();
            assert_eq!(plan(parsed), Err(ArgsError::BadId(bad.to_owned())));
        }
        let mut parsed = args(&[]);
        parsed.id = "A-0".repeat(21);
        assert!(plan(parsed).is_ok());
    }

    #[test]
    fn bad_paths_versions_cgroups_and_limits_are_refused() {
        let mut parsed = args(&[]);
        parsed.exec_file = PathBuf::from("/nonexistent/brique");
        assert!(matches!(plan(parsed), Err(ArgsError::MissingExec(_))));
        let mut parsed = args(&[]);
        parsed.exec_file = PathBuf::from("/tmp");
        assert!(matches!(plan(parsed), Err(ArgsError::MissingExec(_))));
        // A dynamically linked binary could not start in the jail.
        let mut parsed = args(&[]);
        parsed.exec_file = std::env::current_exe().unwrap();
        match plan(parsed) {
            Err(ArgsError::Dynamic(_, interpreter)) => {
                assert!(interpreter.contains("ld-"), "{interpreter}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan(args(&["--chroot-base-dir", "srv"])),
            Err(ArgsError::RelativeBase(_))
        ));
        assert!(matches!(
            plan(args(&["--netns", "/nonexistent/ns"])),
            Err(ArgsError::MissingNetns(_))
        ));
        assert_eq!(
            plan(args(&["--cgroup-version", "1"])),
            Err(ArgsError::CgroupVersion(1))
        );
        for bad in [
            "memory.max",
            "max=1",
            "memory.max=",
            "../x.max=1",
            "memory.max=1\n2",
        ] {
            assert_eq!(
                plan(args(&["--cgroup", bad])),
                Err(ArgsError::BadCgroup(bad.to_owned()))
            );
        }
        for bad in ["../up", "/abs", ".hidden", ""] {
            assert_eq!(
                plan(args(&["--parent-cgroup", bad])),
                Err(ArgsError::BadParentCgroup(bad.to_owned()))
            );
        }
        for bad in ["nproc=1", "fsize=-1", "no-file", "fsize=x"] {
            assert_eq!(
                plan(args(&["--resource-limit", bad])),
                Err(ArgsError::BadResourceLimit(bad.to_owned()))
            );
        }
    }
}
