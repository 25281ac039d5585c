//! Shared pieces of the pgmcp benchmarks (`make bench`).
