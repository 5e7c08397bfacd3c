//! The commands behind the CLI, as library functions so tests can drive them directly.

pub mod slice_cmd;
