//! kelsonctl, Kelson's admin CLI. `gen` writes cluster folders offline;
//! `api` drives nodes over their mutual-TLS management API.

pub mod api;
pub mod cli;
pub mod gen;
