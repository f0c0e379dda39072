//! Distributed searches: a training whose `search.containers = N` runs as N activities of one
//! job (planned in `build.rs`), each on a slot of the recipe's configuration, reading the data
//! once and trying every Nth point of the grid; each stages the best of its points as a
//! candidate version. The part that ends last settles the search: when every part succeeded,
//! the data plane commits the best candidate as the saved model's one new version (with every
//! part's points in its metrics) and drops the others; when any part failed, was cancelled or
//! never ran, every candidate goes. A search's version is whole or absent.
//!
//! Parts end one at a time (`Inner::search_ends`), so the last one sees every other's final
//! state; a build sweeps, at its end, what a search left unsettled (a part skipped after a
//! cancel never ends through here).

use capstan_core::job::JobState;
use capstan_store::ActivityRow;

use crate::backend::{ActivityOutcome, ActivitySpec};
use crate::drive::{At, note};
use crate::{Engine, SearchEnd};

impl Engine {
    /// Records how a part of a distributed search ended (its own outputs already handled by
    /// `commit_outputs`, which keeps a succeeded part's candidate), and settles the search if
    /// it is the last part to end.
    pub(crate) fn finish_part(
        &self,
        at: At,
        recipe: &str,
        spec: Option<&ActivitySpec>,
        outcome: ActivityOutcome,
    ) {
        let _one_at_a_time = self
            .inner
            .search_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let outcome = self.settle(at, recipe, spec, outcome);
        self.finish_activity(at, &outcome);
    }

    fn settle(
        &self,
        at: At,
        recipe: &str,
        spec: Option<&ActivitySpec>,
        outcome: ActivityOutcome,
    ) -> ActivityOutcome {
        let acts = match self.store().activities(at.job_id) {
            Ok(a) => a,
            Err(error) => {
                return ActivityOutcome::failed(format!(
                    "cannot read the search's other parts: {error}"
                ));
            }
        };
        let parts: Vec<&ActivityRow> = acts
            .iter()
            .filter(|a| a.recipe == recipe && a.part.is_some())
            .collect();
        let others: Vec<&&ActivityRow> = parts.iter().filter(|a| a.idx != at.idx).collect();
        if !others.iter().all(|a| a.state.is_final()) {
            if outcome.state == JobState::Succeeded
                && let Some(spec) = spec
            {
                note(
                    spec,
                    "its best point is kept until the search's last part ends",
                );
            }
            return outcome;
        }
        let all_succeeded = outcome.state == JobState::Succeeded
            && others.iter().all(|a| a.state == JobState::Succeeded);
        match self.end_search(at, recipe, &parts, all_succeeded) {
            Ok(lines) => {
                for line in &lines {
                    tracing::info!(job_id = at.job_id, recipe, "{line}");
                    if let Some(spec) = spec {
                        note(spec, line);
                    }
                }
                outcome
            }
            Err(why) if all_succeeded => ActivityOutcome::failed(format!(
                "every part of the search succeeded, but their results could not be merged: {why}"
            )),
            Err(why) => {
                tracing::error!(job_id = at.job_id, recipe, %why, "cannot discard a search's candidates");
                outcome
            }
        }
    }

    /// Asks the data plane to merge (or discard) the candidates of `recipe`'s parts.
    fn end_search(
        &self,
        at: At,
        recipe: &str,
        parts: &[&ActivityRow],
        succeeded: bool,
    ) -> Result<Vec<String>, String> {
        let Some(dp) = &self.inner.data_plane else {
            return Ok(Vec::new());
        };
        let job = self
            .store()
            .job(at.job_id)
            .ok()
            .flatten()
            .ok_or_else(|| format!("job {} is gone", at.job_id))?;
        let home = self.inner.home.current();
        let Some((project, r)) = home.recipe(&job.project, recipe) else {
            return Err(format!(
                "recipe `{}/{recipe}` is no longer in the home",
                job.project
            ));
        };
        let Some(model) = r
            .outputs
            .iter()
            .find(|o| project.models.contains_key(&o.value))
        else {
            return Err(format!("recipe `{recipe}` writes no saved model"));
        };
        let provenance = self.provenance_of(at, recipe);
        dp.end_search(&SearchEnd {
            project: &job.project,
            model: &model.value,
            activation: crate::ml::activation(project, r),
            job_id: at.job_id,
            parts: parts.iter().map(|a| (a.idx, a.attempt)).collect(),
            succeeded,
            provenance: &provenance,
        })
    }

    /// At a build's end: discards the candidates of every search that did not end whole (a
    /// part skipped, or never settled before a restart). A committed search has nothing left.
    pub(crate) fn sweep_searches(&self, job_id: i64, acts: &[ActivityRow]) {
        let mut recipes: Vec<&str> = acts
            .iter()
            .filter(|a| a.part.is_some() && a.state != JobState::Succeeded)
            .map(|a| a.recipe.as_str())
            .collect();
        recipes.dedup();
        for recipe in recipes {
            let parts: Vec<&ActivityRow> = acts
                .iter()
                .filter(|a| a.recipe == recipe && a.part.is_some())
                .collect();
            let at = At {
                job_id,
                idx: parts[0].idx,
                build: true,
            };
            if let Err(why) = self.end_search(at, recipe, &parts, false) {
                tracing::warn!(job_id, recipe, %why, "cannot discard a search's candidates");
            }
        }
    }
}
