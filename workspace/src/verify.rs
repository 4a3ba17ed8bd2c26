//! Re-executing built stages outside the action cache, for `pipe verify` (what
//! `nix build --check` does for derivations).
//!
//! Each stage is verified on its own: its upstream artifacts are the cached ones, so
//! its key is exactly the cached entry's key and a mismatch points at the stage that
//! is not reproducible, not at everything downstream of it. The execution reads the
//! store (verified reads) and writes nothing: the new bytes come back to the caller,
//! which compares them byte for byte with the cached objects as they are on disk.

use std::collections::BTreeMap;
use std::time::Instant;

use cache::{ArtifactHash, StageKey};

use crate::action::{run_action, Action};
use crate::db::{resolved_knobs, Database, Db};
use crate::instance::{InstanceName, InstanceSpec};
use crate::recipe::Cancel;
use crate::resume::NoResume;
use crate::snapshot::StageSnapshot;

/// One artifact: the cached object against the re-executed bytes.
#[derive(Debug, Clone)]
pub struct ArtifactCheck {
    pub name: String,
    /// What the cached manifest names (`None`: only the re-execution wrote it).
    pub cached: Option<ArtifactHash>,
    /// The cached object's bytes as they are on disk, unverified (`None`: missing).
    pub cached_bytes: Option<Vec<u8>>,
    /// The re-executed bytes (`None`: the re-execution did not write this artifact).
    pub rerun_bytes: Option<Vec<u8>>,
}

impl ArtifactCheck {
    pub fn rerun_hash(&self) -> Option<ArtifactHash> {
        self.rerun_bytes.as_deref().map(ArtifactHash::of)
    }

    /// The cached object exists but its bytes do not hash to its name.
    pub fn cached_corrupt(&self) -> bool {
        match (&self.cached, &self.cached_bytes) {
            (Some(hash), Some(bytes)) => ArtifactHash::of(bytes) != *hash,
            _ => false,
        }
    }

    /// Byte-for-byte identical, and named by the hash the manifest records.
    pub fn reproducible(&self) -> bool {
        match (&self.cached_bytes, &self.rerun_bytes) {
            (Some(cached), Some(rerun)) => cached == rerun && self.cached == Some(ArtifactHash::of(rerun)),
            _ => false,
        }
    }
}

/// The outcome of re-executing one instance.
#[derive(Debug, Clone)]
pub struct StageCheck {
    pub name: InstanceName,
    pub key: Option<StageKey>,
    pub secs: f64,
    pub artifacts: Vec<ArtifactCheck>,
    /// Metrics whose values differ bitwise: name, cached, re-executed.
    pub metrics: Vec<(String, Option<f64>, Option<f64>)>,
    /// Why the stage could not be re-executed.
    pub error: Option<String>,
}

impl StageCheck {
    pub fn reproducible(&self) -> bool {
        self.error.is_none() && self.metrics.is_empty() && self.artifacts.iter().all(ArtifactCheck::reproducible)
    }
}

/// Re-executes instance `target` of `snapshots` (which must hold its upstream
/// instances) against the cached upstream artifacts and compares what it writes with
/// its cached entry.
pub fn verify_stage(db: &Database, snapshots: &[StageSnapshot], target: &InstanceSpec) -> StageCheck {
    let engine = db.engine();
    let name = target.name();
    let _span = tracing::info_span!("verify", id = %name).entered();
    let find = |instance: &InstanceSpec| snapshots.iter().find(|snapshot| snapshot.instance == *instance);
    let mut check = StageCheck {
        name: name.clone(),
        key: find(target).and_then(StageSnapshot::key),
        secs: 0.0,
        artifacts: Vec::new(),
        metrics: Vec::new(),
        error: None,
    };
    let (Some(cached), Some(inputs)) =
        (find(target).and_then(|s| s.manifest.clone()), find(target).and_then(|s| s.inputs.clone()))
    else {
        check.error = Some(format!("`{name}` is not built for this config; run `pipe build {name}` first"));
        return check;
    };
    let stage = engine.stage(target.stage.0).spec();
    let mut upstream = BTreeMap::new();
    for up in &stage.upstream {
        let up_instance = engine.upstream_of(target, *up);
        match find(&up_instance).and_then(StageSnapshot::output) {
            Some(output) => {
                upstream.insert(up.0.to_string(), output);
            }
            None => {
                check.error = Some(format!("upstream `{}` is not built", up_instance.name()));
                return check;
            }
        }
    }
    let mut members = Vec::new();
    match crate::db::instance_members(db, crate::db::Instance::new(db, target.clone())) {
        Err(error) => {
            check.error = Some(error.clone());
            return check;
        }
        Ok(found) => {
            for (member, output) in found {
                let Some(output) = output else {
                    check.error = Some(format!("member `{}` is not built", member.name()));
                    return check;
                };
                members.push(crate::action::MemberOutput::new(member, output.clone()));
            }
        }
    }
    let action = Action {
        name: name.0.clone(),
        inputs,
        knobs: resolved_knobs(db, target, &stage.knobs).into_iter().map(|(id, v)| (id.0.to_string(), v)).collect(),
        upstream,
        members,
        base_dir: engine.base_dir.clone(),
        device: crate::db::device_name(db),
    };
    let progress = engine.progress.action(&name.0);
    let started = Instant::now();
    let result =
        run_action(&engine.recipe, engine.cache.store(), &action, progress.as_ref(), &Cancel::default(), &NoResume);
    check.secs = started.elapsed().as_secs_f64();
    let output = match result {
        Ok(output) => output,
        Err(err) => {
            check.error = Some(format!("re-execution failed: {err}"));
            return check;
        }
    };
    let mut rerun: BTreeMap<String, Vec<u8>> = output.artifacts.into_iter().collect();
    for (name, artifact) in &cached.artifacts {
        check.artifacts.push(ArtifactCheck {
            name: name.clone(),
            cached: Some(artifact.hash),
            cached_bytes: std::fs::read(engine.cache.store().path(&artifact.hash)).ok(),
            rerun_bytes: rerun.remove(name),
        });
    }
    for (name, bytes) in rerun {
        check.artifacts.push(ArtifactCheck { name, cached: None, cached_bytes: None, rerun_bytes: Some(bytes) });
    }
    let names: std::collections::BTreeSet<&String> = cached.metrics.keys().chain(output.metrics.keys()).collect();
    for name in names {
        let (before, after) = (cached.metrics.get(name).copied(), output.metrics.get(name).copied());
        if before.map(f64::to_bits) != after.map(f64::to_bits) {
            check.metrics.push((name.clone(), before, after));
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use cache::Cache;

    use super::*;
    use crate::recipe::*;
    use crate::*;

    /// `a` is deterministic; `b` appends a counter, as an unseeded shuffle would.
    struct Flaky {
        spec: StageSpec,
        calls: Arc<AtomicU64>,
    }

    impl Stage for Flaky {
        fn spec(&self) -> &StageSpec {
            &self.spec
        }

        fn execute(&self, ctx: &ExecContext<'_>) -> Result<ExecOutput, ExecError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let bytes = match self.spec.id.0 {
                "a" => format!("a={}", ctx.knob(KnobId("a.x"))?).into_bytes(),
                _ => [ctx.artifact(StageId("a"), "a.txt")?, format!(" b#{n}").into_bytes()].concat(),
            };
            Ok(ExecOutput {
                artifacts: vec![(format!("{}.txt", self.spec.id), bytes)],
                metrics: BTreeMap::from([("len".to_string(), 1.0)]),
            })
        }

        fn verdicts(&self, _: &StageOutput, _: &Checks<'_>) -> Result<Vec<Verdict>, VerdictError> {
            Ok(Vec::new())
        }
    }

    fn database(dir: &std::path::Path) -> Database {
        let calls = Arc::new(AtomicU64::new(0));
        let stage = |id, knobs: Vec<KnobId>, upstream: Vec<StageId>| {
            let spec = StageSpec {
                id: StageId(id),
                version: 1,
                doc: "fake",
                knobs,
                checks: vec![],
                upstream,
                fingerprints: vec![],
                device_dependent: false,
            };
            Arc::new(Flaky { spec, calls: calls.clone() }) as Arc<dyn Stage>
        };
        let schema = vec![KnobSpec::new("a.x", KnobKind::Int { min: 0, max: 9 }, KnobValue::Int(1), "x")];
        let recipe = Recipe {
            stages: vec![stage("a", vec![KnobId("a.x")], vec![]), stage("b", vec![], vec![StageId("a")])],
            targets: vec![],
            schema,
        };
        let config = Config::defaults(&recipe.schema);
        Database::new(recipe, Cache::open(dir).unwrap(), &config, BTreeMap::new(), "cpu")
    }

    #[test]
    fn verify_finds_the_nondeterministic_stage_and_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("pipe-workspace-test-verify-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let mut db = database(&dir);
        let stages = resolve_targets(&db, &["b".to_string()]).unwrap();
        let (a, b) = (&stages[0], &stages[1]);
        let before = snapshot(&mut db, &stages);
        assert!(before.iter().all(|s| s.manifest.is_none()) && before[1].inputs.is_none(), "nothing built yet");
        let not_built = verify_stage(&db, &before, a);
        assert!(not_built.error.unwrap().contains("run `pipe build a` first"));

        let runner = Arc::new(db.local_runner());
        build(&mut db, &stages, &BuildOptions::default(), runner, |_| {});
        let built = snapshot(&mut db, &stages);
        let check_a = verify_stage(&db, &built, a);
        assert!(check_a.reproducible(), "{check_a:?}");
        let check_b = verify_stage(&db, &built, b);
        assert!(!check_b.reproducible());
        assert_eq!(check_b.artifacts.len(), 1);
        assert_eq!(check_b.artifacts[0].cached_bytes.as_deref(), Some(&b"a=1 b#1"[..]));
        assert_eq!(check_b.artifacts[0].rerun_bytes.as_deref(), Some(&b"a=1 b#3"[..]));
        assert!(!check_b.artifacts[0].cached_corrupt());

        // Nothing was replaced: the same entries, the same objects, under the same keys.
        let after = snapshot(&mut db, &stages);
        for (x, y) in built.iter().zip(&after) {
            assert_eq!(x.manifest, y.manifest);
        }
        let object = db.engine().cache.store().path(&built[1].manifest.as_ref().unwrap().artifacts["b.txt"].hash);
        assert_eq!(std::fs::read(&object).unwrap(), b"a=1 b#1");

        // A corrupt cached object is a mismatch even though the stage is deterministic.
        let a_object = db.engine().cache.store().path(&built[0].manifest.as_ref().unwrap().artifacts["a.txt"].hash);
        let mut permissions = std::fs::metadata(&a_object).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        permissions.set_readonly(false);
        std::fs::set_permissions(&a_object, permissions).unwrap();
        std::fs::write(&a_object, b"a=7").unwrap();
        let snapshots = snapshot(&mut db, &stages);
        let check_a = verify_stage(&db, &snapshots, a);
        assert!(!check_a.reproducible());
        assert!(check_a.artifacts[0].cached_corrupt());
        assert_eq!(
            check_a.artifacts[0].rerun_hash(),
            check_a.artifacts[0].cached,
            "the re-execution matches the manifest"
        );
        assert_eq!(std::fs::read(&a_object).unwrap(), b"a=7", "verify does not repair the cache");
        std::fs::remove_dir_all(&dir).ok();
    }
}
