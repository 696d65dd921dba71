//! Which step runs next, which will never run, and how the run ends.
//!
//! A [`Schedule`] holds where every step of a run is and decides from
//! that alone: it does no I/O, spawns nothing and keeps no time, so each
//! rule has a unit test here. The engine asks it for the next step to
//! start, tells it how each step ended, records whatever it says to skip,
//! and asks it at the end how the run ended.

use airlock_model::Dag;
use airlock_store::{RunState, StepState};
use std::collections::VecDeque;

/// A step the schedule decided will not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skip {
    /// The step's index in the DAG.
    pub(crate) index: usize,
    /// The reason to record.
    pub(crate) reason: String,
}

/// Where each step of one run is, and what follows from it.
#[derive(Debug)]
pub(crate) struct Schedule {
    names: Vec<String>,
    /// Direct prerequisites of each step.
    needs: Vec<Vec<usize>>,
    /// Steps that directly need each step.
    dependants: Vec<Vec<usize>>,
    states: Vec<StepState>,
    /// How many of its prerequisites each step still waits for.
    waiting: Vec<usize>,
    /// Pending steps with nothing left to wait for, first come first.
    ready: VecDeque<usize>,
    /// Why the run cannot succeed, from the first thing that went wrong.
    first_failure: Option<String>,
    cancelled: bool,
}

impl Schedule {
    /// A schedule for the steps of `dag`, each in the state `states`
    /// gives (all [`StepState::Pending`] for a new run; what the store
    /// says for a resumed one). Returns the pending steps that can never
    /// run because a step they need, directly or not, already ended
    /// without succeeding.
    pub(crate) fn new(dag: &Dag, states: Vec<StepState>) -> (Self, Vec<Skip>) {
        assert_eq!(dag.len(), states.len(), "one state per step");
        let n = dag.len();
        let mut schedule = Self {
            names: (0..n).map(|i| dag.name(i).to_owned()).collect(),
            needs: (0..n).map(|i| dag.needs(i).collect()).collect(),
            // In file order, so steps that become ready together start in
            // the order the pipeline lists them.
            dependants: (0..n).map(|i| sorted(dag.dependants(i))).collect(),
            waiting: vec![0; n],
            states,
            ready: VecDeque::new(),
            first_failure: None,
            cancelled: false,
        };
        for i in 0..n {
            match schedule.states[i] {
                StepState::Failed => schedule.fail(format!("step `{}` failed", schedule.names[i])),
                // Cancelled while its run was being cancelled, before the
                // engine stopped: the run cannot succeed without it.
                StepState::Cancelled => schedule.fail(format!("step `{}` was cancelled", schedule.names[i])),
                _ => {}
            }
            schedule.waiting[i] =
                schedule.needs[i].iter().filter(|need| schedule.states[**need] != StepState::Succeeded).count();
        }
        let mut skips = Vec::new();
        for i in 0..n {
            if schedule.states[i].is_final() && schedule.states[i] != StepState::Succeeded {
                let reason = format!("`{}`, which it needs, did not succeed", schedule.names[i]);
                skips.extend(schedule.skip_downstream(i, &reason));
            }
        }
        schedule.ready =
            (0..n).filter(|i| schedule.states[*i] == StepState::Pending && schedule.waiting[*i] == 0).collect();
        (schedule, skips)
    }

    /// The next step to start, marked running, if one is ready, the run
    /// is not cancelled and fewer than `jobs` steps are `running`.
    pub(crate) fn start_next(&mut self, running: usize, jobs: usize) -> Option<usize> {
        if self.cancelled || running >= jobs {
            return None;
        }
        let index = self.ready.pop_front()?;
        self.states[index] = StepState::Running;
        Some(index)
    }

    /// Step `index` ended in `state`. Returns the steps that will not run
    /// because of it.
    pub(crate) fn finished(&mut self, index: usize, state: StepState) -> Vec<Skip> {
        self.states[index] = state;
        match state {
            StepState::Succeeded => {
                for d in self.dependants[index].clone() {
                    self.waiting[d] -= 1;
                    if self.waiting[d] == 0 && self.states[d] == StepState::Pending {
                        self.ready.push_back(d);
                    }
                }
                Vec::new()
            }
            StepState::Failed => {
                let name = self.names[index].clone();
                self.fail(format!("step `{name}` failed"));
                let reason = format!("`{name}`, which it needs, failed");
                self.skip_downstream(index, &reason)
            }
            // A step cancelled while running: the run is being cancelled,
            // and whatever has not started will be recorded so.
            _ => Vec::new(),
        }
    }

    /// Step `index` was lost to a bug in airlock (its task panicked); it
    /// counts as failed, with `error` as the run's reason if nothing went
    /// wrong before. Returns the steps that will not run because of it.
    pub(crate) fn lost(&mut self, index: usize, error: &str) -> Vec<Skip> {
        self.fail(format!("internal error while running step `{}`: {error}", self.names[index]));
        self.finished(index, StepState::Failed)
    }

    /// The run is cancelled: no step starts any more.
    pub(crate) fn cancel(&mut self) {
        self.cancelled = true;
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// The steps that have not reached an end state: at the end of a run,
    /// those cancelled before they started.
    pub(crate) fn unfinished(&self) -> Vec<usize> {
        (0..self.states.len()).filter(|i| !self.states[*i].is_final()).collect()
    }

    /// How the run ended, once no step is running; `cancelled` says the
    /// run was cancelled even if the schedule never heard of it (a step
    /// saw the cancellation first and ended before the engine did).
    pub(crate) fn outcome(&self, cancelled: bool) -> (RunState, Option<String>) {
        if cancelled || self.cancelled {
            (RunState::Cancelled, Some("cancelled by the user".to_owned()))
        } else if let Some(reason) = &self.first_failure {
            (RunState::Failed, Some(reason.clone()))
        } else if let Some(i) = self.unfinished().first() {
            // Cannot happen for a DAG; said plainly rather than called a success.
            (RunState::Failed, Some(format!("step `{}` never ran", self.names[*i])))
        } else {
            (RunState::Succeeded, None)
        }
    }

    /// The name of step `index`.
    pub(crate) fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    fn fail(&mut self, reason: String) {
        self.first_failure.get_or_insert(reason);
    }

    /// Marks every pending step that transitively needs `index` skipped.
    fn skip_downstream(&mut self, index: usize, reason: &str) -> Vec<Skip> {
        let mut skips = Vec::new();
        let mut stack = self.dependants[index].clone();
        let mut seen = vec![false; self.states.len()];
        while let Some(d) = stack.pop() {
            if std::mem::replace(&mut seen[d], true) {
                continue;
            }
            stack.extend(self.dependants[d].iter().copied());
            if self.states[d] == StepState::Pending {
                self.states[d] = StepState::Skipped;
                self.ready.retain(|r| *r != d);
                skips.push(Skip { index: d, reason: reason.to_owned() });
            }
        }
        skips.sort_by_key(|s| s.index);
        skips
    }
}

fn sorted(indices: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut v: Vec<usize> = indices.collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use StepState::*;

    /// A DAG from YAML-less parts: each step with the steps it needs.
    fn dag(steps: &[(&str, &[&str])]) -> Dag {
        let yaml: String = std::iter::once("name: t\nsteps:\n".to_owned())
            .chain(
                steps
                    .iter()
                    .map(|(name, needs)| format!("  {name}:\n    uses: p.wasm\n    needs: [{}]\n", needs.join(", "))),
            )
            .collect();
        let pipeline = airlock_model::load("t.yaml", &yaml, &airlock_model::NoLookup).expect("test pipeline parses");
        Dag::new(&pipeline)
    }

    fn pending(dag: &Dag) -> Vec<StepState> {
        vec![Pending; dag.len()]
    }

    /// Starts everything that may start, returning the indices.
    fn start_all(s: &mut Schedule, running: usize, jobs: usize) -> Vec<usize> {
        let mut started = Vec::new();
        while let Some(i) = s.start_next(running + started.len(), jobs) {
            started.push(i);
        }
        started
    }

    #[test]
    fn a_diamond_runs_in_waves() {
        let d = dag(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        let (mut s, skips) = Schedule::new(&d, pending(&d));
        assert!(skips.is_empty());
        assert_eq!(start_all(&mut s, 0, 8), vec![0]);
        assert!(s.finished(0, Succeeded).is_empty());
        assert_eq!(start_all(&mut s, 0, 8), vec![1, 2]);
        s.finished(1, Succeeded);
        assert_eq!(start_all(&mut s, 1, 8), Vec::<usize>::new(), "d waits for c too");
        s.finished(2, Succeeded);
        assert_eq!(start_all(&mut s, 0, 8), vec![3]);
        s.finished(3, Succeeded);
        assert!(s.unfinished().is_empty());
        assert_eq!(s.outcome(false), (RunState::Succeeded, None));
    }

    #[test]
    fn jobs_bound_what_runs_at_once_in_file_order() {
        let d = dag(&[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[])]);
        let (mut s, _) = Schedule::new(&d, pending(&d));
        assert_eq!(start_all(&mut s, 0, 2), vec![0, 1]);
        assert_eq!(s.start_next(2, 2), None);
        s.finished(1, Succeeded);
        assert_eq!(start_all(&mut s, 1, 2), vec![2]);
    }

    #[test]
    fn a_failure_skips_everything_downstream_and_nothing_else() {
        let d = dag(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("side", &[]), ("after", &["side"])]);
        let (mut s, _) = Schedule::new(&d, pending(&d));
        assert_eq!(start_all(&mut s, 0, 8), vec![0, 3]);
        let skips = s.finished(0, Failed);
        let reason = "`a`, which it needs, failed".to_owned();
        assert_eq!(skips, vec![Skip { index: 1, reason: reason.clone() }, Skip { index: 2, reason }]);
        // The independent branch goes on.
        s.finished(3, Succeeded);
        assert_eq!(start_all(&mut s, 0, 8), vec![4]);
        s.finished(4, Succeeded);
        assert!(s.unfinished().is_empty());
        assert_eq!(s.outcome(false), (RunState::Failed, Some("step `a` failed".into())));
    }

    #[test]
    fn the_first_failure_names_the_run() {
        let d = dag(&[("a", &[]), ("b", &[])]);
        let (mut s, _) = Schedule::new(&d, pending(&d));
        start_all(&mut s, 0, 8);
        s.finished(1, Failed);
        s.finished(0, Failed);
        assert_eq!(s.outcome(false).1.as_deref(), Some("step `b` failed"));
    }

    #[test]
    fn a_resumed_run_keeps_successes_and_skips_behind_failures_in_any_file_order() {
        // `late` needs `mid`, which needs `broken`; `late` comes first in
        // the file, so only a transitive walk finds it.
        let d = dag(&[("late", &["mid"]), ("mid", &["broken"]), ("broken", &[]), ("done", &[]), ("next", &["done"])]);
        let states = vec![Pending, Pending, Failed, Succeeded, Pending];
        let (mut s, skips) = Schedule::new(&d, states);
        let reason = "`broken`, which it needs, did not succeed".to_owned();
        assert_eq!(skips, vec![Skip { index: 0, reason: reason.clone() }, Skip { index: 1, reason }]);
        // `done` is not run again; `next` is ready at once.
        assert_eq!(start_all(&mut s, 0, 8), vec![4]);
        s.finished(4, Succeeded);
        assert!(s.unfinished().is_empty());
        assert_eq!(s.outcome(false), (RunState::Failed, Some("step `broken` failed".into())));
    }

    #[test]
    fn a_step_cancelled_before_the_engine_stopped_fails_the_resumed_run() {
        let d = dag(&[("a", &[]), ("b", &["a"])]);
        let (s, skips) = Schedule::new(&d, vec![Cancelled, Pending]);
        assert_eq!(skips.len(), 1);
        assert_eq!(s.outcome(false), (RunState::Failed, Some("step `a` was cancelled".into())));
    }

    #[test]
    fn cancelling_starts_nothing_more() {
        let d = dag(&[("a", &[]), ("b", &[]), ("c", &["a"])]);
        let (mut s, _) = Schedule::new(&d, pending(&d));
        assert_eq!(s.start_next(0, 1), Some(0));
        s.cancel();
        assert!(s.is_cancelled());
        assert_eq!(s.start_next(0, 8), None);
        s.finished(0, Succeeded);
        assert_eq!(s.start_next(0, 8), None, "c became ready, but the run is cancelled");
        assert_eq!(s.unfinished(), vec![1, 2]);
        assert_eq!(s.outcome(false).0, RunState::Cancelled);
    }

    #[test]
    fn a_cancellation_only_the_steps_saw_still_cancels_the_run() {
        let d = dag(&[("a", &[])]);
        let (mut s, _) = Schedule::new(&d, pending(&d));
        s.start_next(0, 1);
        s.finished(0, Cancelled);
        assert_eq!(s.outcome(true).0, RunState::Cancelled);
    }

    #[test]
    fn a_lost_step_fails_the_run_and_skips_its_dependants() {
        let d = dag(&[("a", &[]), ("b", &["a"])]);
        let (mut s, _) = Schedule::new(&d, pending(&d));
        s.start_next(0, 1);
        let skips = s.lost(0, "panicked");
        assert_eq!(skips.iter().map(|s| s.index).collect::<Vec<_>>(), vec![1]);
        assert!(s.unfinished().is_empty());
        let (state, reason) = s.outcome(false);
        assert_eq!(state, RunState::Failed);
        assert_eq!(reason.as_deref(), Some("internal error while running step `a`: panicked"));
    }
}
