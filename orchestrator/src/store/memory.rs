//! In-memory store for tests (filled in by the store owner).
