//! The contract crate.
