//! What a panic does in a pgws process: one log line in the configured
//! format (`PGWS_LOG_FORMAT`) and one count (`pgws_panics_total`), instead of
//! the standard library's raw text on stderr.
//!
//! Panics unwind (the release profile keeps `panic = "unwind"`): tokio
//! catches a panic at the boundary of the task it happened in, so a bug met
//! while serving one connection ends that connection's task and nothing
//! else — the alternative, `panic = "abort"`, would drop every socket of
//! the node for one bad peer. Long-lived tasks (the listener, the bus, the
//! election) are awaited by their owners, which treat a task that ended
//! unexpectedly as the process failing. A panic is always a bug: alert on
//! any increase of `pgws_panics_total` (docs/security.md, "Panics").
//!
//! It also owns the process-wide registry ([`registry`]): the metrics every
//! process exports whatever its role, panics and the `process_*` family.

use prometheus::process_collector::ProcessCollector;
use prometheus::{IntCounter, Registry};
use std::sync::{LazyLock, Once};

/// Counts every panic of the process, whatever thread or task it is in.
static PANICS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "pgws_panics_total",
        "Panics caught (each one a bug; the task it happened in ended).",
    )
    .expect("a valid metric")
});

/// Metrics every process exports whatever its role: `pgws_panics_total`
/// and the `process_*` family (resident memory, open and maximum file
/// descriptors, CPU seconds, start time — read from `/proc` at each
/// scrape; empty on systems without it). The admin endpoint gathers these
/// beside the process's own registry, so this is the one place both
/// binaries get them from.
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
        let registry = Registry::new();
        registry
            .register(Box::new(PANICS.clone()))
            .expect("registered once");
        registry
            .register(Box::new(ProcessCollector::for_self()))
            .expect("registered once");
        registry
    });
    &REGISTRY
}

/// Panics counted so far.
pub fn count() -> u64 {
    PANICS.get()
}

/// Route panics to the log and the counter (once per process; later calls
/// do nothing). A backtrace is logged when `RUST_BACKTRACE` asks for one —
/// resolving it loads debug information, so it stays off by default.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            PANICS.inc();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            let location = info
                .location()
                .map(|l| l.to_string())
                .unwrap_or_else(|| "(unknown)".to_string());
            let thread = std::thread::current();
            let backtrace = std::backtrace::Backtrace::capture();
            tracing::error!(
                panic.message = %message,
                panic.location = %location,
                thread = thread.name().unwrap_or("(unnamed)"),
                backtrace = %backtrace,
                "panic: a bug; the task it happened in ended"
            );
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_counted_and_exported() {
        install_hook();
        let before = count();
        let caught = std::panic::catch_unwind(|| panic!("deliberate"));
        assert!(caught.is_err());
        assert_eq!(count(), before + 1);
        let families = registry().gather();
        let family = families
            .iter()
            .find(|f| f.name() == "pgws_panics_total")
            .expect("exported");
        assert!(family.get_metric()[0].get_counter().get_value() >= 1.0);
    }

    #[test]
    fn process_memory_and_descriptors_are_exported() {
        let families = registry().gather();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .unwrap_or_else(|| panic!("{name} not exported"))
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_open_fds") >= 1.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
    }
}
