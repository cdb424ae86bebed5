//! The management API of a Kelson node: what PID 1 serves on port 50000 to
//! `kelsonctl` (and curl, and generated clients), over mutual TLS.
//!
//! - [`types`]: the wire types, JSON in camelCase; shared by the server and
//!   kelsonctl, and the source of the OpenAPI document.
//! - [`backend::Node`]: what a node must provide to be served. PID 1
//!   implements it over its status, supervisor, pods, config store and
//!   power; tests implement it with fakes.

pub mod backend;
pub mod types;

/// The TCP port the API listens on.
pub const PORT: u16 = 50000;
/// The organisation (O=) of a client certificate that may do everything.
pub const ROLE_ADMIN: &str = "kelson:admin";
/// The organisation of a client certificate that may read all but secrets.
pub const ROLE_READ_ONLY: &str = "kelson:read-only";
