//! The job lifecycle: queued → preparing → starting → running → a final state.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobState {
    /// Waiting for its turn (a free slot in its configuration's and cluster's `max_concurrent`).
    Queued,
    /// Claimed by the scheduler: code is being staged, the code environment built.
    Preparing,
    /// The backend is starting the process, container or pod.
    Starting,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// An activity of a build that did not run: an upstream activity failed, or the build was
    /// cancelled before its turn. Never a job's state.
    Skipped,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        JobState::Queued,
        JobState::Preparing,
        JobState::Starting,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
        JobState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Preparing => "preparing",
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
            JobState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Failed
                | JobState::Cancelled
                | JobState::TimedOut
                | JobState::Skipped
        )
    }

    /// Claimed and not final: counts against `max_concurrent`.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Preparing | JobState::Starting | JobState::Running
        )
    }

    /// Whether the lifecycle allows going from `self` to `to`.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        match (self, to) {
            (a, b) if a.is_final() || a == b => false,
            // Any live state may end: cancelled, failed (a backend error), timed out.
            (_, Cancelled | Failed) => true,
            (Queued, Preparing | Skipped) => true,
            // A build job runs as soon as it is claimed; its activities go through the rest.
            (Preparing, Running) => true,
            // A job that never started is requeued after a daemon crash.
            (Preparing | Starting, Queued) => true,
            (Preparing, Starting) => true,
            (Starting, Running) => true,
            (Starting | Running, Succeeded | TimedOut) => true,
            _ => false,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The recipe name a notebook kernel's job carries: no recipe file can have it (names start
/// with a letter or digit), so a kernel is never mistaken for a recipe.
pub const KERNEL_RECIPE: &str = "@kernel";

/// One activity's share of a search split over several: part `index` of `count` (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: u32,
    pub count: u32,
}

impl std::fmt::Display for Part {
    /// As people count: "part 2/3".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "part {}/{}", self.index + 1, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_are_final() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_final()) {
            for to in JobState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        assert!(JobState::Queued.can_become(JobState::Preparing));
        assert!(!JobState::Queued.can_become(JobState::Running));
        assert!(JobState::Running.can_become(JobState::Succeeded));
        assert!(JobState::Starting.can_become(JobState::Queued));
        assert!(!JobState::Running.can_become(JobState::Queued));
    }
}
