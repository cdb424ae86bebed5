//! How errors are reported.

/// An error and its sources on one line, `a: b: c`: how every Kelson crate
/// logs and reports an error chain.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
