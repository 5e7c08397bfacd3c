//! `classguard::demux` and `classguard::mux`, compiled from the main package's own sources.
//! Nothing here may diverge from them: this file only points at them.

#[path = "../../src/demux/mod.rs"]
pub mod demux;
#[path = "../../src/mux/mod.rs"]
pub mod mux;
