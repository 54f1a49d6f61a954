//! The shared harness (`pgws-testkit`), for every test binary here.

#![allow(unused_imports)]

pub use pgws_testkit::*;
pub use pgws_testkit::{certs, cluster, pg_server, raw, redis_server};
pub mod tls;
