//! The integration suite: real redis-servers, Webdis and nginx with mutual
//! TLS, started by the tests themselves (see `integration/support`).
//! This file is a list of modules only.

#[path = "../support/mod.rs"]
mod support;

mod stack_tests;

mod admin_tests;
mod both_tests;
mod check_tests;
mod engine_tests;
mod fault_tests;
mod fuzz_tests;
mod reload_tests;
mod smoke_tests;
