//! Placeholder replaced by the crypto benchmark.
fn main() {}
