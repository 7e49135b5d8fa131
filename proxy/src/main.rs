//! The `netward` command.
fn main() {}
