//! Fan-in stages: a stage that reads member instances (rungs, trials, members),
//! listed from its knobs and, for later members, from earlier members' outputs.

use super::*;

pub(super) const E_LRS: KnobId = KnobId("e.lrs");
pub(super) const E_PROMOTE: KnobId = KnobId("e.promote");

pub(super) fn schema() -> Vec<KnobSpec> {
    vec![
        KnobSpec::new("e.lrs", KnobKind::StrList, KnobValue::StrList(vec!["0.2".into(), "0.3".into()]), "trials"),
        KnobSpec::new("e.promote", KnobKind::Bool, KnobValue::Bool(false), "add a member from the best trial"),
    ]
}

/// One `b` instance per learning rate in `e.lrs`; with `e.promote`, once every
/// trial is known, one more at half the rate of the trial with the shortest output.
pub(super) struct FanIn {
    pub(super) spec: StageSpec,
    pub(super) log: Arc<Mutex<Vec<String>>>,
}

fn trial(lr: f64) -> InstanceSpec {
    InstanceSpec::new(StageId("b"), [(B_LR, KnobValue::Float(Float(lr)))])
}

impl Stage for FanIn {
    fn spec(&self) -> &StageSpec {
        &self.spec
    }

    fn member_stages(&self) -> Vec<StageId> {
        vec![StageId("b")]
    }

    fn members(
        &self,
        knobs: &BTreeMap<KnobId, KnobValue>,
        known: &dyn MemberLookup,
    ) -> Result<Vec<InstanceSpec>, String> {
        let lrs = knobs.get(&E_LRS).and_then(KnobValue::as_str_list).ok_or("no e.lrs")?;
        let mut members = Vec::new();
        for (index, text) in lrs.iter().enumerate() {
            let lr: f64 = text.parse().map_err(|_| format!("e.lrs[{index}]: `{text}` is not a number"))?;
            members.push(trial(lr));
        }
        if knobs.get(&E_PROMOTE).and_then(KnobValue::as_bool) == Some(true) {
            let outputs: Option<Vec<StageOutput>> = members.iter().map(|m| known.output(m)).collect();
            if let Some(outputs) = outputs {
                let best =
                    (0..members.len()).min_by(|&i, &j| outputs[i].metrics["len"].total_cmp(&outputs[j].metrics["len"]));
                if let Some(best) = best {
                    let lr = members[best].override_of(B_LR).and_then(KnobValue::as_f64).unwrap_or_default();
                    members.push(trial(lr / 2.0));
                }
            }
        }
        Ok(members)
    }

    fn execute(&self, ctx: &ExecContext<'_>) -> Result<ExecOutput, ExecError> {
        let names: Vec<String> = ctx.members.iter().map(|(member, _)| member.name().0).collect();
        self.log.lock().unwrap().push(format!("e({})", names.join(";")));
        let mut bytes = Vec::new();
        for (_, output) in ctx.members {
            let hash = output.artifacts["b.txt"].hash;
            bytes.extend(ctx.store.get(&hash).map_err(|e| ExecError::Failed(e.to_string()))?);
            bytes.push(b'|');
        }
        let len = bytes.len() as f64;
        Ok(ExecOutput { artifacts: vec![("e.txt".into(), bytes)], metrics: BTreeMap::from([("len".into(), len)]) })
    }

    fn verdicts(&self, _output: &StageOutput, _checks: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
        Ok(Vec::new())
    }
}

fn e_text(reports: &[StageReport], fx: &Fixture) -> String {
    let report = reports.iter().find(|r| r.stage == StageId("e")).unwrap();
    let hash = report.output.as_ref().unwrap().artifacts["e.txt"].hash;
    String::from_utf8(fx.db.engine().cache.store().get(&hash).unwrap()).unwrap()
}

fn options(jobs: usize) -> BuildOptions {
    BuildOptions { keep_going: false, jobs, ..BuildOptions::default() }
}

#[test]
fn members_are_built_then_the_stage_reads_them_in_order() {
    let mut fx = Fixture::new("fanin");
    let (executed, reports) = fx.build_with(&["e"], options(2));
    assert_eq!(executed, ["a(a.x=11)", "b(b.lr=0.2)", "b(b.lr=0.3)", "e(b[b.lr=0.2];b[b.lr=0.3])"]);
    assert!(reports.iter().all(|r| r.status == Some(StageStatus::Ran)), "{:?}", statuses(&reports));
    assert_eq!(e_text(&reports, &fx), "a=1 b=0.2|a=1 b=0.3|");
    // Reports come in recipe order: a, the members, then e.
    let names: Vec<String> = reports.iter().map(|r| r.name.0.clone()).collect();
    assert_eq!(names, ["a", "b[b.lr=0.2]", "b[b.lr=0.3]", "e"]);

    // Unchanged: nothing runs.
    assert!(fx.build_with(&["e"], options(2)).0.is_empty());

    // One more trial: only it and the fan-in stage run; the others are cache hits.
    fx.db.apply_config(&fx.config_with(&["e.lrs=[\"0.2\", \"0.3\", \"0.4\"]"]));
    let (executed, reports) = fx.build_with(&["e"], options(1));
    assert_eq!(executed, ["b(b.lr=0.4)", "e(b[b.lr=0.2];b[b.lr=0.3];b[b.lr=0.4])"]);
    assert_eq!(e_text(&reports, &fx), "a=1 b=0.2|a=1 b=0.3|a=1 b=0.4|");

    // Status knows the members without building anything.
    let all = fx.instances(&["e"]);
    let report = status(&mut fx.db, &all);
    assert!(report.iter().all(|s| s.stale.is_none()), "{report:?}");
    assert_eq!(report.len(), 5, "a, three members, e: {report:?}");
}

#[test]
fn members_can_depend_on_earlier_members_results() {
    let mut fx = Fixture::new("fanin-promote");
    fx.db.apply_config(&fx.config_with(&["e.promote=true", "e.lrs=[\"0.2\", \"0.75\"]"]));
    let (executed, reports) = fx.build_with(&["e"], options(2));
    // "a=1 b=0.2" is the shortest output: the promoted member runs at half its rate.
    assert_eq!(
        executed,
        ["a(a.x=11)", "b(b.lr=0.1)", "b(b.lr=0.2)", "b(b.lr=0.75)", "e(b[b.lr=0.2];b[b.lr=0.75];b[b.lr=0.1])"]
    );
    assert_eq!(e_text(&reports, &fx), "a=1 b=0.2|a=1 b=0.75|a=1 b=0.1|");
    // A new process plans the promoted member from the cache alone.
    let all = fx.instances(&["e"]);
    let report = status(&mut fx.db, &all);
    assert!(report.iter().all(|s| s.stale.is_none()), "{report:?}");
    assert!(fx.build_with(&["e"], options(1)).0.is_empty());
}

#[test]
fn an_instance_passes_its_overrides_to_its_members() {
    let mut fx = Fixture::new("fanin-overrides");
    let (executed, reports) = fx.build_with(&["e[a.x=50]"], options(1));
    assert_eq!(executed, ["a(a.x=50)", "b(b.lr=0.2)", "b(b.lr=0.3)", "e(b[a.x=50,b.lr=0.2];b[a.x=50,b.lr=0.3])"]);
    assert_eq!(e_text(&reports, &fx), "a=5 b=0.2|a=5 b=0.3|");
}

#[test]
fn a_member_list_that_cannot_be_read_fails_as_bad_input() {
    let mut fx = Fixture::new("fanin-invalid");
    fx.db.apply_config(&fx.config_with(&["e.lrs=[\"0.2\", \"fast\"]"]));
    let (executed, reports) = fx.build_with(&["e"], options(1));
    assert!(executed.is_empty(), "{executed:?}");
    let e = reports.iter().find(|r| r.stage == StageId("e")).unwrap();
    assert!(e.failed() && e.bad_input, "{e:?}");
    assert!(e.error.as_deref().unwrap().contains("e.lrs[1]: `fast` is not a number"), "{e:?}");
}

#[test]
fn an_instance_with_a_list_override_is_built_by_its_own_name() {
    let mut fx = Fixture::new("fanin-list-name");
    let name = r#"e[e.lrs=["0.25", "0.5"]]"#;
    let instances = fx.instances(&[name]);
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].name().0, name, "the name parses back to the same instance");
    let (executed, _) = fx.build_with(&[name], options(1));
    assert_eq!(executed, ["a(a.x=11)", "b(b.lr=0.25)", "b(b.lr=0.5)", "e(b[b.lr=0.25];b[b.lr=0.5])"]);
}

/// A no-op build settles members from the member record in `.pipe/out` (no entry
/// reads, no key re-derived from entries); a new process must still notice a changed
/// trial knob, a deleted or corrupted member object, and a raised member count.
#[test]
fn a_no_op_from_the_member_record_still_notices_every_change() {
    let mut fx = Fixture::new("fanin-noop");
    let (_, first) = fx.build_with(&["e"], options(1));
    let member = |reports: &[StageReport], name: &str| {
        let report = reports.iter().find(|r| r.name.0 == name).unwrap_or_else(|| panic!("no {name}"));
        report.output.as_ref().unwrap().artifacts["b.txt"].hash
    };
    let object = fx.db.engine().cache.store().path(&member(&first, "b[b.lr=0.3]"));
    let dir = fx.keep();
    let reopen = |assignments: &[&str]| {
        let mut config = Config::defaults(&schema());
        for assignment in assignments {
            config.set(&schema(), assignment).unwrap();
        }
        Fixture::reopen(dir.clone(), &config)
    };
    let cached = |reports: &[StageReport], name: &str| {
        reports.iter().find(|r| r.name.0 == name).and_then(|r| r.status) == Some(StageStatus::Cached)
    };

    // Unchanged: nothing runs, every member and the stage are cached, and the stage
    // lists its members twice (to find them, then with their outputs), not once more
    // per pass while they settle.
    let mut fx = reopen(&[]);
    fx.db.take_executed("instance_members");
    let (executed, reports) = fx.build_with(&["e"], options(1));
    assert!(executed.is_empty(), "{executed:?}");
    assert!(reports.iter().all(|r| r.status == Some(StageStatus::Cached)), "{:?}", statuses(&reports));
    let listed: Vec<String> = fx.db.take_executed("instance_members").into_iter().filter(|name| name == "e").collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    fx.keep();

    // A member's object deleted: the member is made again (the same bytes), the stage
    // keeps its key and is cached.
    std::fs::remove_file(&object).unwrap();
    let mut fx = reopen(&[]);
    let (executed, reports) = fx.build_with(&["e"], options(1));
    assert_eq!(executed, ["b(b.lr=0.3)"]);
    assert!(cached(&reports, "e") && cached(&reports, "b[b.lr=0.2]"), "{:?}", statuses(&reports));
    assert_eq!(std::fs::read(&object).unwrap(), b"a=1 b=0.3");
    fx.keep();

    // Corrupted in place (same size, new bytes): found by its stat, made again.
    let mut permissions = std::fs::metadata(&object).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&object, permissions).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&object, b"a=1 b=0.9").unwrap();
    let mut fx = reopen(&[]);
    let (executed, reports) = fx.build_with(&["e"], options(1));
    assert_eq!(executed, ["b(b.lr=0.3)"]);
    assert!(cached(&reports, "e"), "{:?}", statuses(&reports));
    assert_eq!(std::fs::read(&object).unwrap(), b"a=1 b=0.3");
    fx.keep();

    // One trial's knob (after the record was rewritten above) changed: that trial and the stage run, the other is cached.
    let mut fx = reopen(&["e.lrs=[\"0.2\", \"0.35\"]"]);
    let (executed, reports) = fx.build_with(&["e"], options(1));
    assert_eq!(executed, ["b(b.lr=0.35)", "e(b[b.lr=0.2];b[b.lr=0.35])"]);
    assert!(cached(&reports, "b[b.lr=0.2]"), "{:?}", statuses(&reports));
    fx.keep();

    // One more trial: only it and the stage run.
    let mut fx = reopen(&["e.lrs=[\"0.2\", \"0.3\", \"0.4\"]"]);
    let (executed, reports) = fx.build_with(&["e"], options(1));
    assert_eq!(executed, ["b(b.lr=0.4)", "e(b[b.lr=0.2];b[b.lr=0.3];b[b.lr=0.4])"]);
    assert!(cached(&reports, "b[b.lr=0.2]") && cached(&reports, "b[b.lr=0.3]"), "{:?}", statuses(&reports));
    assert_eq!(e_text(&reports, &fx), "a=1 b=0.2|a=1 b=0.3|a=1 b=0.4|");
}

/// `out/.members.txt` holds the members of the latest build that had members: a
/// changed trial replaces its entry, and a build without members leaves it alone.
#[test]
fn the_member_record_keeps_only_the_latest_members() {
    let mut fx = Fixture::new("fanin-record-prune");
    fx.build_with(&["e"], options(1));
    let dir = fx.keep();
    let recorded = |dir: &std::path::Path| {
        let cache = cache::Cache::open(dir).unwrap();
        let mut names: Vec<String> = cache.out().members().names().map(str::to_string).collect();
        names.sort();
        names
    };
    // (`a` is met through the members: upstream of them only.)
    assert_eq!(recorded(&dir), ["a", "b[b.lr=0.2]", "b[b.lr=0.3]"]);
    let reopen = |assignments: &[&str]| {
        let mut config = Config::defaults(&schema());
        for assignment in assignments {
            config.set(&schema(), assignment).unwrap();
        }
        Fixture::reopen(dir.clone(), &config)
    };
    let mut fx = reopen(&["e.lrs=[\"0.2\", \"0.35\"]"]);
    fx.build_with(&["e"], options(1));
    fx.keep();
    assert_eq!(recorded(&dir), ["a", "b[b.lr=0.2]", "b[b.lr=0.35]"]);
    let mut fx = reopen(&[]);
    fx.build_with(&["a"], options(1));
    fx.keep();
    assert_eq!(recorded(&dir), ["a", "b[b.lr=0.2]", "b[b.lr=0.35]"], "a build without members prunes nothing");
    std::fs::remove_dir_all(&dir).ok();
}
