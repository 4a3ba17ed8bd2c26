//! The scorecard: every recipe check (verdict) of the built stages, one line each,
//! with what to try for the ones that warn or fail. Printed after the stage lines of
//! `pipe build` and after `pipe show`, and rendered as a table by `pipe report`.
//! Generic over stages: it lists whatever verdicts the reports carry.

use workspace::{StageReport, StageStatus, Verdict, VerdictStatus};

use crate::output::{short, verdict_word};

/// A measured or expected value for people: whole numbers (counts) without decimals.
pub fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e9 {
        format!("{value:.0}")
    } else {
        short(value)
    }
}

/// The stage of `report` when a terminal may count it instead of listing it: an
/// instance with overrides (a tune's trial, an ensemble's seed) with checks, all
/// passing.
pub(crate) fn countable_stage(report: &StageReport) -> Option<&str> {
    let name = report.name.as_str();
    let passing = !report.verdicts.is_empty() && report.verdicts.iter().all(|v| v.status == VerdictStatus::Pass);
    name.split_once('[').filter(|_| passing).map(|(stage, _)| stage)
}

/// One judged check of one stage.
pub struct Check<'a> {
    pub stage: &'a str,
    pub verdict: &'a Verdict,
}

/// How many instances of one stage with overrides (a tune's trials, an ensemble's
/// seeds) a terminal lists when every check of theirs passes; the rest are counted.
pub const LISTED_INSTANCES: usize = 5;

/// Instances of one stage not listed because every check of theirs passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Collapsed<'a> {
    pub stage: &'a str,
    pub instances: usize,
    pub checks: usize,
}

/// The verdicts of a set of stage reports, in build order, plus the stages that
/// could not be judged.
pub struct Scorecard<'a> {
    pub checks: Vec<Check<'a>>,
    /// Passing instances counted, not listed ([`Scorecard::terminal`] only).
    pub collapsed: Vec<Collapsed<'a>>,
    /// Stages that errored (no artifacts, so no verdicts), with their error.
    pub errored: Vec<(&'a str, &'a str)>,
    /// Stages skipped because an earlier stage failed.
    pub skipped: Vec<&'a str>,
}

impl<'a> Scorecard<'a> {
    pub fn of(reports: &'a [StageReport]) -> Scorecard<'a> {
        let mut card = Scorecard::unjudged(reports);
        card.checks = reports
            .iter()
            .flat_map(|report| report.verdicts.iter().map(|verdict| Check { stage: report.name.as_str(), verdict }))
            .collect();
        card
    }

    /// No checks yet: only the stages that errored or were skipped.
    fn unjudged(reports: &'a [StageReport]) -> Scorecard<'a> {
        let errored = reports
            .iter()
            .filter(|report| report.status == Some(StageStatus::Failed))
            .map(|report| (report.name.as_str(), report.error.as_deref().unwrap_or("the stage failed")))
            .collect();
        let skipped =
            reports.iter().filter(|report| report.status.is_none()).map(|report| report.name.as_str()).collect();
        Scorecard { checks: Vec::new(), collapsed: Vec::new(), errored, skipped }
    }

    /// [`Scorecard::of`] for a terminal: of the instances with overrides of one stage
    /// whose checks all pass, the first [`LISTED_INSTANCES`] are listed and the rest
    /// counted on one line (a 1,000-trial tune's card is not 3,000 lines of `pass`).
    /// Any instance with a warning or a failure is listed in full.
    pub fn terminal(reports: &'a [StageReport]) -> Scorecard<'a> {
        let mut card = Scorecard::unjudged(reports);
        let mut listed: Vec<(&str, usize)> = Vec::new();
        for report in reports {
            let name = report.name.as_str();
            if let Some(stage) = countable_stage(report) {
                let shown = match listed.iter_mut().find(|(s, _)| *s == stage) {
                    Some((_, shown)) => shown,
                    None => {
                        listed.push((stage, 0));
                        &mut listed.last_mut().expect("just pushed").1
                    }
                };
                if *shown >= LISTED_INSTANCES {
                    match card.collapsed.iter_mut().find(|c| c.stage == stage) {
                        Some(c) => {
                            c.instances += 1;
                            c.checks += report.verdicts.len();
                        }
                        None => card.collapsed.push(Collapsed { stage, instances: 1, checks: report.verdicts.len() }),
                    }
                    continue;
                }
                *shown += 1;
            }
            card.checks.extend(report.verdicts.iter().map(|verdict| Check { stage: name, verdict }));
        }
        card
    }

    /// Checks of `status`, counted ones included.
    pub fn count(&self, status: VerdictStatus) -> usize {
        let counted = if status == VerdictStatus::Pass { self.collapsed.iter().map(|c| c.checks).sum() } else { 0 };
        self.checks.iter().filter(|check| check.verdict.status == status).count() + counted
    }

    /// Every check, counted ones included.
    pub fn total(&self) -> usize {
        self.checks.len() + self.collapsed.iter().map(|c| c.checks).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0 && self.errored.is_empty() && self.skipped.is_empty()
    }

    /// `18 checks: 16 pass, 1 warn, 1 fail; 1 stage errored, 2 skipped`.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "{} check{}: {} pass, {} warn, {} fail",
            self.total(),
            if self.total() == 1 { "" } else { "s" },
            self.count(VerdictStatus::Pass),
            self.count(VerdictStatus::Warn),
            self.count(VerdictStatus::Fail),
        );
        let mut unjudged = Vec::new();
        if !self.errored.is_empty() {
            unjudged.push(format!(
                "{} stage{} errored",
                self.errored.len(),
                if self.errored.len() == 1 { "" } else { "s" }
            ));
        }
        if !self.skipped.is_empty() {
            unjudged.push(format!(
                "{} stage{} skipped",
                self.skipped.len(),
                if self.skipped.len() == 1 { "" } else { "s" }
            ));
        }
        if !unjudged.is_empty() {
            text.push_str("; ");
            text.push_str(&unjudged.join(", "));
        }
        text
    }

    /// The block printed to a terminal: a header, one line per check (a `try:` line
    /// under each warning and failure), one line per errored stage.
    pub fn lines(&self) -> Vec<String> {
        let stage_width = self
            .checks
            .iter()
            .map(|check| check.stage.len())
            .chain(self.errored.iter().map(|(stage, _)| stage.len()))
            .max()
            .unwrap_or(0);
        let check_width = self.checks.iter().map(|check| check.verdict.check.len()).max().unwrap_or(0);
        let mut lines = vec![format!("scorecard: {}", self.summary())];
        for Check { stage, verdict } in &self.checks {
            // The verdict's own sentence says what was measured against what, and
            // which way (bare "measured X, expected Y" left the direction to guess).
            lines.push(format!(
                "  {:<5} {stage:<stage_width$}  {:<check_width$}  {}",
                verdict_word(verdict.status),
                verdict.check,
                verdict.message,
            ));
            if let (true, Some(hint)) = (verdict.status != VerdictStatus::Pass, &verdict.hint) {
                lines.push(format!("        try: {hint}"));
            }
        }
        for Collapsed { stage, instances, checks } in &self.collapsed {
            lines.push(format!(
                "  pass  {instances} more instance{} of {stage}: all {checks} of their checks pass (`--json` lists each)",
                if *instances == 1 { "" } else { "s" }
            ));
        }
        for (stage, error) in &self.errored {
            lines.push(format!("  {:<5} {stage:<stage_width$}  {error}", "ERROR"));
        }
        lines
    }
}

/// Prints the scorecard of `reports` to stdout (nothing when there is nothing to judge).
pub fn print(reports: &[StageReport]) {
    let scorecard = Scorecard::terminal(reports);
    if scorecard.is_empty() {
        return;
    }
    // One write for the whole card, not one per line (a tune's has thousands).
    let mut text = String::new();
    for line in scorecard.lines() {
        text.push_str(&line);
        text.push('\n');
    }
    // A closed stdout (`pipe build | head`) is not an error.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(check: &str, status: VerdictStatus, hint: Option<&str>) -> Verdict {
        Verdict {
            check: check.into(),
            status,
            value: 2.5,
            expected: 1.0,
            message: format!("{check}: measured 2.5, want at most 1"),
            hint: hint.map(String::from),
        }
    }

    fn report(stage: &'static str, status: Option<StageStatus>, verdicts: Vec<Verdict>) -> StageReport {
        StageReport {
            name: workspace::InstanceName(stage.into()),
            stage: workspace::StageId(stage),
            key: None,
            status,
            secs: 0.0,
            output: None,
            verdicts,
            error: (status == Some(StageStatus::Failed)).then(|| "loss is NaN at step 3".into()),
            bad_input: false,
            member: false,
        }
    }

    #[test]
    fn lists_every_check_with_what_to_try_for_the_bad_ones() {
        let reports = vec![
            report(
                "inspect",
                Some(StageStatus::Cached),
                vec![
                    verdict("class_balance", VerdictStatus::Pass, None),
                    verdict("duplicates", VerdictStatus::Warn, Some("deduplicate")),
                ],
            ),
            report("loss_at_init", Some(StageStatus::Ran), vec![verdict("loss_at_init", VerdictStatus::Fail, None)]),
            report("overfit", Some(StageStatus::Failed), vec![]),
            report("later", None, vec![]),
        ];
        let lines = Scorecard::of(&reports).lines();
        assert_eq!(
            lines,
            [
                "scorecard: 3 checks: 1 pass, 1 warn, 1 fail; 1 stage errored, 1 stage skipped",
                "  pass  inspect       class_balance  class_balance: measured 2.5, want at most 1",
                "  warn  inspect       duplicates     duplicates: measured 2.5, want at most 1",
                "        try: deduplicate",
                "  FAIL  loss_at_init  loss_at_init   loss_at_init: measured 2.5, want at most 1",
                "  ERROR overfit       loss is NaN at step 3",
            ]
        );
    }

    #[test]
    fn nothing_to_judge_is_empty() {
        let reports = vec![report("data", Some(StageStatus::Ran), vec![])];
        assert!(Scorecard::of(&reports).is_empty());
    }
}
