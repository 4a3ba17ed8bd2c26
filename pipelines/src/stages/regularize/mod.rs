//! `regularize`: the recipe's fourth step. Its training-side knobs are read by
//! [`setup`]; the ladder stage itself comes with the engine's fan-in.

pub mod setup;
