//! `regularize`: the recipe's fourth step. Its training-side knobs are read by
//! [`setup`]; [`rungs`] parses the ladder; [`ladder`] reports what each rung bought.
//! The stage itself plugs into the engine's fan-in (members).

pub mod ladder;
pub mod rungs;
pub mod setup;
