//! kiln-operator (being written).
fn main() {}
