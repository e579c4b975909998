//! Benchmarks for Berth; see `make bench-*`.
