//! One module per command, each with a `run` function.

pub mod build;
pub mod diff;
mod diff_instance;
pub mod exec_action;
pub mod fsck;
pub mod gc;
pub mod init;
pub mod knobs;
pub mod report;
pub mod runs;
pub mod show;
pub mod status;
pub mod verify;
