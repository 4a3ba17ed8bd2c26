//! What a build is asked for: target names, stage ids and instances
//! (`overfit[train.lr=1e-3]`) expanded into instances, with everything upstream.

use crate::db::{Database, Db as _};
use crate::instance::{parse_instance, InstanceSpec, SpecSet};
use crate::knob::suggest;

/// Expands target names, stage ids and instances (`overfit[train.lr=1e-3]`) into
/// instances in recipe order, upstream instances included. An unknown name gets a
/// suggestion.
pub fn resolve_targets(db: &Database, names: &[String]) -> Result<Vec<InstanceSpec>, String> {
    let recipe = &db.engine().recipe;
    let mut wanted: Vec<InstanceSpec> = Vec::new();
    for name in names {
        if let Some(target) = recipe.targets.iter().find(|target| target.name == name) {
            wanted.extend(target.wanted());
        } else if let Some(instance) = parse_instance(recipe, name)? {
            wanted.push(instance);
        } else {
            let candidates = recipe.targets.iter().map(|t| t.name).chain(recipe.stages.iter().map(|s| s.spec().id.0));
            return Err(match suggest(name, candidates) {
                Some(close) => format!("unknown target or stage `{name}`, did you mean `{close}`?"),
                None => format!(
                    "unknown target or stage `{name}` (targets: {}; stages: {})",
                    recipe.targets.iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
                    recipe.stages.iter().map(|s| s.spec().id.0).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    Ok(closure(db, wanted))
}

/// `wanted` and every instance upstream of it, in recipe order (then by name).
pub fn closure(db: &Database, wanted: Vec<InstanceSpec>) -> Vec<InstanceSpec> {
    let engine = db.engine();
    let recipe = &engine.recipe;
    let mut needed: Vec<InstanceSpec> = Vec::new();
    let mut seen: SpecSet<InstanceSpec> = SpecSet::default();
    let mut stack = wanted;
    while let Some(instance) = stack.pop() {
        if seen.insert(instance.clone()) {
            if let Some(spec) = recipe.spec(instance.stage.0) {
                stack.extend(spec.upstream.iter().map(|up| engine.upstream_of(&instance, *up)));
            }
            needed.push(instance);
        }
    }
    needed.sort_by_cached_key(|instance| (recipe.position(instance.stage), instance.name()));
    needed
}
