//! kelsonctl, Kelson's admin CLI. `gen` writes cluster folders offline;
//! the management API client verbs will live beside it.

pub mod cli;
pub mod gen;
