//! `pipe knobs`: every knob with its default and documentation, as a commented pipe.toml.

use crate::project::Failure;

pub fn run() -> Result<u8, Failure> {
    print!("{}", workspace::config::example_toml(&pipelines::knobs::schema()));
    Ok(0)
}
