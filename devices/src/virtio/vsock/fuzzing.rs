//! placeholder
pub fn run(_input: &[u8]) {}
