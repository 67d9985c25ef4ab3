//! The etcd config source through the real `weir` binary and a real etcd
//! (Debian's `etcd-server`, one per test, on OS-chosen ports in a temp dir):
//! watched weights, flips under load, compaction, outages and the last-good
//! cache, invalid values, `weirctl`, and self-registering backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
mod support;

mod invalid;
mod limits;
mod lockout;
mod operating;
mod outage;
mod registration;
mod rollback;
mod secure;
mod watch;
mod weirctl;
