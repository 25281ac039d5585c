//! Shared pieces of the pgmcp benchmarks (`make bench`).

pub mod mcp;
pub mod operator;
