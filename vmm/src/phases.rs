//! How long each step of a long operation took, for its log line: a
//! snapshot load reports where its time went, so that an operator sees
//! whether the state file, guest memory, KVM or the devices were slow.
//! A long step also says how much of its time the thread spent on a CPU:
//! one that mostly waited (for another thread, or for a CPU the host gave
//! to someone else) reads differently from one that computed.

use brique_devices::clock;
use std::fmt;
use std::time::{Duration, Instant};

/// Steps shorter than this print their wall time only.
const SHOW_CPU_FROM: Duration = Duration::from_millis(5);

/// One ended step: its name, wall time and the CPU time of the thread
/// that marked it.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub name: &'static str,
    pub took: Duration,
    pub on_cpu: Duration,
}

/// The steps of one operation, each timed from the end of the one before.
/// Created and marked on one thread (CPU time is that thread's).
#[derive(Debug)]
pub struct Phases {
    started: Instant,
    last: Instant,
    last_cpu: Duration,
    done: Vec<Step>,
}

fn thread_cpu_time() -> Duration {
    clock::now(libc::CLOCK_THREAD_CPUTIME_ID)
}

impl Default for Phases {
    fn default() -> Self {
        Self::new()
    }
}

impl Phases {
    /// Starts timing now.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            last_cpu: thread_cpu_time(),
            done: Vec::new(),
        }
    }

    /// Ends the step called `name`, which began where the last one ended.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        let cpu = thread_cpu_time();
        self.done.push(Step {
            name,
            took: now - self.last,
            on_cpu: cpu.saturating_sub(self.last_cpu),
        });
        self.last = now;
        self.last_cpu = cpu;
    }

    /// The time since timing started.
    pub fn total(&self) -> Duration {
        self.started.elapsed()
    }

    /// The steps ended so far, in order.
    pub fn steps(&self) -> &[Step] {
        &self.done
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// `name 1.2 ms, name 91.3 ms (on CPU 0.9), ...`: the steps in
/// milliseconds, with the thread's CPU time for the long ones.
impl fmt::Display for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, step) in self.done.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {:.1} ms", step.name, millis(step.took))?;
            if step.took >= SHOW_CPU_FROM {
                write!(f, " (on CPU {:.1})", millis(step.on_cpu))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_is_timed_from_the_end_of_the_one_before() {
        let mut phases = Phases::new();
        std::thread::sleep(Duration::from_millis(20));
        phases.mark("first");
        phases.mark("second");
        let steps = phases.steps();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].name, "first");
        assert!(steps[0].took >= Duration::from_millis(20), "{phases}");
        assert!(steps[1].took < steps[0].took, "{phases}");
        assert!(phases.total() >= steps[0].took + steps[1].took);
        let text = phases.to_string();
        assert!(text.starts_with("first "), "{text}");
        assert!(text.contains(" ms (on CPU "), "{text}");
        assert!(text.contains("), second "), "{text}");
        assert!(
            !text.ends_with(')'),
            "a short step shows no CPU time: {text}"
        );
    }

    #[test]
    fn a_waiting_step_shows_little_cpu_and_a_computing_one_much() {
        let mut phases = Phases::new();
        std::thread::sleep(Duration::from_millis(20));
        phases.mark("sleeping");
        let cpu = thread_cpu_time();
        while thread_cpu_time() < cpu + Duration::from_millis(20) {
            std::hint::black_box(());
        }
        phases.mark("computing");
        let steps = phases.steps();
        assert!(steps[0].on_cpu < steps[0].took / 2, "{phases}");
        assert!(steps[1].on_cpu >= Duration::from_millis(20), "{phases}");
        assert!(steps[1].on_cpu <= steps[1].took, "{phases}");
    }
}
