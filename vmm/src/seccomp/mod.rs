//! Seccomp filters, one per kind of thread, on by default.
//!
//! Every thread brique runs installs its kind's filter before it handles
//! anything from a guest or an API client: the VMM thread once the command
//! line is read and the API socket is bound, every other thread as soon as
//! `threads::spawn` starts it. A filter lists the system calls its thread
//! makes (and, for `ioctl` and a few others, the argument values); anything
//! else traps, and the trap handler (`violation`) logs the thread and the
//! system call and ends brique with [`EXIT_BAD_SYSCALL`].
//!
//! `--seccomp-filter FILE` replaces the built-in filters with the ones a JSON
//! file describes, in the format of the rust-vmm `seccompiler` crate (also
//! what Firecracker's filters are written in): one filter per thread kind,
//! keyed `vmm`, `api`, `vcpu`, `devices` and `signals`; a file written for
//! Firecracker has only the first three, and brique's helper threads
//! (`devices`, `signals`) then take the `vmm` filter.

pub(crate) mod ioctls;
mod rules;
mod violation;

// The architectures use the macro as their lists need it.
#[allow(unused_imports)]
pub(crate) use self::rules::syscall;
pub use self::rules::Syscall;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::OnceLock;

/// brique's exit status when a thread made a system call its filter does
/// not allow (Firecracker's value for the same event).
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// What can go wrong while building or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("this host's architecture ({0}) has no seccomp filters")]
    UnsupportedArch(&'static str),
    #[error("cannot build the {kind} filter: {source}")]
    Build {
        kind: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("cannot read the seccomp filter file {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the seccomp filter file {path} is not a valid seccompiler JSON filter: {source}")]
    ParseFile {
        path: String,
        source: seccompiler::Error,
    },
    #[error("the seccomp filter file {path} has no filter for the {kind} thread (keys: vmm, api, vcpu, devices, signals)")]
    MissingKind { path: String, kind: &'static str },
    #[error("the seccomp filter file {path} has a filter for {key}, which is no brique thread kind (keys: vmm, api, vcpu, devices, signals)")]
    UnknownKind { path: String, key: String },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    #[error("cannot install the {kind} seccomp filter: {source}")]
    Install {
        kind: &'static str,
        source: seccompiler::Error,
    },
}

/// The kinds of thread that get a filter of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterKind {
    /// The main thread: the controller, which builds, runs and saves the VM.
    Vmm,
    /// The REST API server.
    Api,
    /// Each vCPU.
    Vcpu,
    /// The device event loop (block and net I/O, console input).
    Devices,
    /// The thread forwarding guest reset and panic signals.
    Signals,
}

impl FilterKind {
    /// Every kind, in the order the filter file lists them.
    pub const ALL: [FilterKind; 5] = [
        FilterKind::Vmm,
        FilterKind::Api,
        FilterKind::Vcpu,
        FilterKind::Devices,
        FilterKind::Signals,
    ];

    /// The kind's key in a filter file, and its name in messages.
    pub fn key(self) -> &'static str {
        match self {
            FilterKind::Vmm => "vmm",
            FilterKind::Api => "api",
            FilterKind::Vcpu => "vcpu",
            FilterKind::Devices => "devices",
            FilterKind::Signals => "signals",
        }
    }
}

/// Compiled filters for every kind of thread. A kind may have more than one
/// program: all are installed, and the kernel applies the strictest answer.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: HashMap<FilterKind, Vec<BpfProgram>>,
}

impl Filters {
    /// brique's own filters for this host's architecture.
    pub fn builtin() -> Result<Filters, SeccompError> {
        let arch = host_arch()?;
        let mut programs = HashMap::new();
        for kind in FilterKind::ALL {
            let build = |rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>>, mismatch, matched| {
                SeccompFilter::new(rules, mismatch, matched, arch)
                    .and_then(BpfProgram::try_from)
                    .map_err(|source| SeccompError::Build {
                        kind: kind.key(),
                        source,
                    })
            };
            let allowed = rules::allowed(kind).map_err(|source| SeccompError::Build {
                kind: kind.key(),
                source,
            })?;
            // The ENOSYS filter goes in first: it lets through the
            // prctl and seccomp calls that install the allow-list after it.
            let mut list = Vec::new();
            let refused = rules::refused_with_enosys(kind);
            if !refused.is_empty() {
                list.push(build(
                    refused,
                    SeccompAction::Allow,
                    SeccompAction::Errno(libc::ENOSYS as u32),
                )?);
            }
            list.push(build(allowed, SeccompAction::Trap, SeccompAction::Allow)?);
            programs.insert(kind, list);
        }
        Ok(Filters { programs })
    }

    /// Filters from a seccompiler JSON file (see the module documentation).
    pub fn from_json_file(path: &Path) -> Result<Filters, SeccompError> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| SeccompError::ReadFile {
            path: shown.clone(),
            source,
        })?;
        let compiled = seccompiler::compile_from_json(file, host_arch()?).map_err(|source| {
            SeccompError::ParseFile {
                path: shown.clone(),
                source,
            }
        })?;
        Self::from_compiled(compiled, &shown)
    }

    fn from_compiled(
        compiled: HashMap<String, BpfProgram>,
        path: &str,
    ) -> Result<Filters, SeccompError> {
        if let Some(key) = compiled.keys().find(|key| {
            !FilterKind::ALL
                .iter()
                .any(|kind| kind.key() == key.as_str())
        }) {
            return Err(SeccompError::UnknownKind {
                path: path.to_owned(),
                key: key.clone(),
            });
        }
        let mut programs = HashMap::new();
        for kind in FilterKind::ALL {
            // The helper threads take the vmm filter (checked first) where
            // the file has none of theirs.
            let helper = matches!(kind, FilterKind::Devices | FilterKind::Signals);
            let program = compiled
                .get(kind.key())
                .or_else(|| {
                    helper
                        .then(|| compiled.get(FilterKind::Vmm.key()))
                        .flatten()
                })
                .ok_or_else(|| SeccompError::MissingKind {
                    path: path.to_owned(),
                    kind: kind.key(),
                })?;
            programs.insert(kind, vec![program.clone()]);
        }
        Ok(Filters { programs })
    }

    /// Installs `kind`'s filters on the calling thread, for good.
    pub fn install(&self, kind: FilterKind) -> Result<(), SeccompError> {
        violation::name_this_thread(kind);
        for program in self.programs.get(&kind).into_iter().flatten() {
            if program.is_empty() {
                continue;
            }
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                kind: kind.key(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The filters every thread installs, set once at startup; `None` when
/// brique runs with `--no-seccomp` (or nothing was configured, as in unit
/// tests).
static CONFIGURED: OnceLock<Option<Filters>> = OnceLock::new();

/// Sets the process's filters (once; later calls change nothing) and the
/// handler that reports violations.
pub fn configure(filters: Option<Filters>) -> Result<(), SeccompError> {
    if filters.is_some() {
        violation::install_handler().map_err(SeccompError::Handler)?;
        keep_malloc_off_files();
    }
    let _ = CONFIGURED.set(filters);
    Ok(())
}

/// Installs the configured filter of `kind` on the calling thread (nothing
/// when none was configured).
pub fn confine_current_thread(kind: FilterKind) -> Result<(), SeccompError> {
    match CONFIGURED.get() {
        Some(Some(filters)) => filters.install(kind),
        _ => Ok(()),
    }
}

/// glibc's allocator reads /proc/sys/vm/overcommit_memory (openat, which
/// no thread's filter allows past startup) the first time a thread's arena
/// gives memory back to the kernel, after a large free: the device loop
/// did, under vsock traffic, and was killed. Arenas whose top never reaches
/// the trim threshold never shrink, so the threshold is set out of reach.
/// What brique allocates is small and long-lived (guest memory is mapped
/// apart), so nothing of note stays mapped that would have been returned.
fn keep_malloc_off_files() {
    // SAFETY: mallopt only changes the allocator's parameters; it is called
    // before brique starts any thread.
    if unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) } != 1 {
        log::warn!("mallopt(M_TRIM_THRESHOLD) failed: a thread may yet trip its filter");
    }
}

fn host_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

#[cfg(test)]
mod tests;
