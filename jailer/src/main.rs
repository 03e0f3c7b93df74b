//! `brique-jailer`: starts brique confined, with Firecracker's jailer
//! flags, so that orchestrators written for Firecracker's jailer can switch.
//!
//! In order: check the arguments; close inherited descriptors and clear the
//! environment; make `<base>/<exec name>/<id>/root` with the binary (a link
//! or a copy); set resource limits; make the cgroup v2 cgroup with its
//! settings and enter it; join the network namespace; pivot into the jail
//! in a new mount namespace, with its own /dev holding the device nodes;
//! daemonize and make a new PID namespace if asked; drop to the uid and
//! gid; exec brique (or, in a new PID namespace, start it as its PID 1 and
//! end).
//! Until the pivot a failure removes the jail directory and cgroup again.

mod args;
mod cgroup;
mod jail_fs;
mod process;

use args::{Args, JailPlan};
use cgroup::JailCgroup;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Everything that can stop the jailer.
#[derive(Debug, thiserror::Error)]
enum JailerError {
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    #[error(transparent)]
    Fs(#[from] jail_fs::JailFsError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error("{source} (the jail {jail} is left as it is)")]
    InJail {
        source: process::ProcessError,
        jail: String,
    },
}

/// When the jailer started, for brique's startup-time metrics.
struct StartTimes {
    wall_us: u64,
    cpu_us: u64,
}

fn main() -> ExitCode {
    let start = StartTimes {
        wall_us: process::clock_us(libc::CLOCK_MONOTONIC),
        cpu_us: process::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID),
    };
    let args = Args::parse();
    let err = match run(args, &start) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    eprintln!("brique-jailer: {err}");
    ExitCode::from(1)
}

/// What to remove if the jailer fails before brique runs.
struct Undo {
    jail_dir: Option<PathBuf>,
    cgroup: Option<(JailCgroup, PathBuf)>,
}

impl Undo {
    /// Nothing is removed any more (the jail is entered).
    fn disarm(&mut self) {
        self.jail_dir = None;
        self.cgroup = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some((cgroup, mount)) = self.cgroup.take() {
            cgroup.leave_and_remove(&mount);
        }
        if let Some(dir) = self.jail_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn run(args: Args, start: &StartTimes) -> Result<std::convert::Infallible, JailerError> {
    let plan = args::plan(args)?;
    process::close_inherited_fds()?;
    let names: Vec<_> = std::env::vars_os().map(|(name, _)| name).collect();
    for name in names {
        // The jailer is single-threaded: nothing reads the environment
        // while it changes.
        std::env::remove_var(name);
    }
    // Found before anything is made: no cgroup v2 means no jail.
    let cgroup_mount = match plan.cgroups.is_empty() {
        true => None,
        false => Some(cgroup::mount_point()?),
    };
    let mut undo = Undo {
        jail_dir: None,
        cgroup: None,
    };
    match jail_fs::populate(&plan) {
        Ok(()) => undo.jail_dir = Some(plan.jail_dir.clone()),
        Err(err @ jail_fs::JailFsError::Exists(_)) => return Err(err.into()),
        Err(err) => {
            // Part of it may exist: it is ours, made just now.
            let _ = std::fs::remove_dir_all(&plan.jail_dir);
            return Err(err.into());
        }
    }
    process::set_limits(&plan.limits)?;
    if let Some(mount) = cgroup_mount {
        let cgroup = JailCgroup::create(&mount, &plan.parent_cgroup, &plan.id, &plan.cgroups)?;
        let entered = cgroup.enter();
        undo.cgroup = Some((cgroup, mount));
        entered?;
    }
    if let Some(netns) = &plan.netns {
        process::join_netns(netns)?;
    }
    jail_fs::pivot_into(&plan)?;
    undo.disarm();
    let in_jail = |source| JailerError::InJail {
        source,
        jail: plan.jail_dir.display().to_string(),
    };
    if plan.daemonize {
        process::daemonize().map_err(in_jail)?;
    }
    let program = format!("/{}", plan.exec_name);
    let mut brique_args = start_args(&plan, start);
    if plan.new_pid_ns {
        process::new_pid_ns_for_children().map_err(in_jail)?;
        let parent_cpu_us = process::clock_us(libc::CLOCK_PROCESS_CPUTIME_ID);
        brique_args.extend(["--parent-cpu-time-us".into(), parent_cpu_us.to_string()]);
    }
    brique_args.extend(plan.brique_args.iter().cloned());
    process::drop_privileges(plan.uid, plan.gid).map_err(in_jail)?;
    if plan.new_pid_ns {
        let pid_file = PathBuf::from(format!("/{}.pid", plan.exec_name));
        return process::spawn_and_exit(&program, &brique_args, &pid_file).map_err(in_jail);
    }
    Err(in_jail(process::exec(&program, &brique_args)))
}

/// The arguments the jailer gives brique before the user's.
fn start_args(plan: &JailPlan, start: &StartTimes) -> Vec<String> {
    vec![
        "--id".into(),
        plan.id.clone(),
        "--start-time-us".into(),
        start.wall_us.to_string(),
        "--start-time-cpu-us".into(),
        start.cpu_us.to_string(),
    ]
}
