//! The commands behind the CLI, as library functions so tests can drive them directly.

pub mod diff;
pub mod enroll;
pub mod models_cmd;
pub mod scan;
pub mod serve;
pub mod slice_cmd;
pub mod token;
pub mod user;
