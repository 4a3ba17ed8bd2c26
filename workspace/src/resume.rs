//! Saved states a stage can resume from: the seam between a training stage and the
//! cache's resume index ([`cache::ResumeIndex`]). The engine hands each execution a
//! [`Resume`] scoped to its action's key inputs; the stage decides what to save and
//! whether a saved state is usable, the engine only stores and lists.
//!
//! How often a stage saves (`PIPE_CHECKPOINT_EVERY`, steps, 0 = never) is a setting
//! of the build, not a knob: saving reads the state and changes no result, so it must
//! not change any key.

use cache::{best_state, Cache, KeyInputs, PrefixKey, SavedState};

use crate::knob::KnobId;

/// Steps between saved states when `PIPE_CHECKPOINT_EVERY` is not set.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 500;

/// `PIPE_CHECKPOINT_EVERY`, or the default; an unreadable value is the default.
pub fn checkpoint_every() -> u64 {
    std::env::var("PIPE_CHECKPOINT_EVERY")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_CHECKPOINT_EVERY)
}

/// What an execution may save and find again. Every method has a default that saves
/// nothing and finds nothing ([`NoResume`]: `pipe verify`, tests).
pub trait Resume: Send + Sync {
    /// Steps between saved states; 0: do not save.
    fn checkpoint_every(&self) -> u64 {
        0
    }

    /// States saved by executions whose key inputs equal this one's except knob
    /// `varying`, by step.
    fn states(&self, _varying: KnobId) -> Vec<SavedState> {
        Vec::new()
    }

    /// The verified bytes of `state`, or `None` (its object is gone or damaged; the
    /// entry is then forgotten).
    fn load(&self, _varying: KnobId, _state: &SavedState) -> Option<Vec<u8>> {
        None
    }

    /// Stores `bytes` and registers them as the state after `step` steps; `only_for`:
    /// only a run of exactly that many steps may use it.
    fn save(&self, _varying: KnobId, _step: u64, _only_for: Option<u64>, _bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Saves nothing, finds nothing.
pub struct NoResume;

impl Resume for NoResume {}

/// The cache's resume index, scoped to one action's key inputs.
pub struct CacheResume<'a> {
    cache: &'a Cache,
    inputs: &'a KeyInputs,
    every: u64,
}

impl<'a> CacheResume<'a> {
    pub fn new(cache: &'a Cache, inputs: &'a KeyInputs) -> CacheResume<'a> {
        CacheResume { cache, inputs, every: checkpoint_every() }
    }
}

impl Resume for CacheResume<'_> {
    fn checkpoint_every(&self) -> u64 {
        self.every
    }

    fn states(&self, varying: KnobId) -> Vec<SavedState> {
        let prefix = PrefixKey::of(self.inputs, varying.as_str());
        self.cache.resume().states(&prefix).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the resume index");
            Vec::new()
        })
    }

    fn load(&self, varying: KnobId, state: &SavedState) -> Option<Vec<u8>> {
        match self.cache.store().get(&state.hash) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                tracing::info!(%error, step = state.step, "a saved state is gone; forgetting it");
                self.cache.resume().forget(&PrefixKey::of(self.inputs, varying.as_str()), state);
                None
            }
        }
    }

    fn save(&self, varying: KnobId, step: u64, only_for: Option<u64>, bytes: &[u8]) -> Result<(), String> {
        let hash = self.cache.store().put(bytes).map_err(|error| error.to_string())?;
        let prefix = PrefixKey::of(self.inputs, varying.as_str());
        self.cache.resume().record(&prefix, &SavedState { step, only_for, hash }).map_err(|error| error.to_string())
    }
}

/// The step a stale instance with key inputs `inputs` would resume from (`Some(step)`),
/// given its run length in knob `varying`: what `pipe status` shows. Reads only.
pub fn resume_point(cache: &Cache, inputs: &KeyInputs, varying: KnobId, steps: u64) -> Option<SavedState> {
    let states = cache.resume().states(&PrefixKey::of(inputs, varying.as_str())).ok()?;
    best_state(&states, steps).filter(|state| cache.store().verify(&state.hash))
}
