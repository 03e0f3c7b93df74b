//! How long each step of a long operation took, for its log line: a
//! snapshot load reports where its time went, so that an operator sees
//! whether the state file, guest memory, KVM or the devices were slow.

use std::fmt;
use std::time::{Duration, Instant};

/// The steps of one operation, each timed from the end of the one before.
#[derive(Debug)]
pub struct Phases {
    started: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
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
            done: Vec::new(),
        }
    }

    /// Ends the step called `name`, which began where the last one ended.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    /// The time since timing started.
    pub fn total(&self) -> Duration {
        self.started.elapsed()
    }

    /// The steps ended so far, in order.
    pub fn steps(&self) -> &[(&'static str, Duration)] {
        &self.done
    }
}

/// `name 1.2 ms, name 0.3 ms`: the steps, in milliseconds.
impl fmt::Display for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (name, took)) in self.done.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} {:.1} ms", took.as_secs_f64() * 1e3)?;
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
        assert_eq!(steps[0].0, "first");
        assert!(steps[0].1 >= Duration::from_millis(20), "{phases}");
        assert!(steps[1].1 < steps[0].1, "{phases}");
        assert!(phases.total() >= steps[0].1 + steps[1].1);
        let text = phases.to_string();
        assert!(text.starts_with("first "), "{text}");
        assert!(text.contains(" ms, second "), "{text}");
    }
}
