//! kiln-executor binary: parses flags, sets up logging, hands over to the library.
fn main() {}
