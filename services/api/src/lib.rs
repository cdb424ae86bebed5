//! The management API of a Kelson node: what PID 1 serves on port 50000 to
//! `kelsonctl` (and curl, and generated clients), over mutual TLS.
//!
//! - [`types`]: the wire types, JSON in camelCase; shared by the server and
//!   kelsonctl, and the source of the OpenAPI document.
//! - [`backend::Node`]: what a node must provide to be served. PID 1
//!   implements it over its status, supervisor, pods, config store and
//!   power; tests implement it with fakes.
//! - [`serve`]: the server (hyper + rustls, TLS 1.3, client-certificate
//!   roles, an audit line per write); [`openapi`]: its document.

mod audit;
pub mod backend;
mod body;
#[cfg(feature = "fake")]
pub mod fake;
mod handlers;
mod openapi;
mod routes;
mod server;
mod tls;
pub mod types;

pub use openapi::openapi;
pub use server::{serve, ServerSettings};
pub use tls::{TlsConfigError, TlsMaterial};

/// The TCP port the API listens on.
pub const PORT: u16 = 50000;
/// The organisation (O=) of a client certificate that may do everything.
pub const ROLE_ADMIN: &str = "kelson:admin";
/// The organisation of a client certificate that may read all but secrets.
pub const ROLE_READ_ONLY: &str = "kelson:read-only";

/// The routes the server answers, as (method, path template): what the
/// OpenAPI document must describe, no more and no less.
pub fn served_routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    routes::ROUTES.iter().map(|route| (route.method.as_str(), route.template))
}

/// An error and its sources, `: `-separated, for a log line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
