//! Benchmarks of the manager (filled in below).
fn main() {}
