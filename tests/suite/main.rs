//! The integration tests, in one binary (a test binary per file compiled
//! and linked `tests/common` once each): every module talks to the
//! local-directory store and to the real S3 server `scripts/test.sh`
//! starts. `cargo test --test suite upload::` runs one module's tests.
//! `tests/memory.rs` stays a binary of its own: it measures a child's peak
//! RSS, which carries over its parent's across exec.

#[path = "../common/mod.rs"]
mod common;
#[path = "../sim/mod.rs"]
mod sim;

mod alibuild;
mod alibuild_versions;
mod check;
mod cli;
mod clock;
mod conformance;
mod connections;
mod containers;
mod faults;
mod fencing;
mod fetch;
mod https;
mod local_store;
mod many_journals;
mod not_s3;
mod races;
mod recovery;
mod serve;
mod simulation;
mod store_states;
mod timeouts;
mod upload;
mod verify;
mod wheel;
