//! Shared helpers for the end-to-end suites live in the test files.
