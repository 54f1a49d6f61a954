//! The run's report, for a person: the setup, every fault with its times,
//! counts per invariant (checked, expected losses by reason, violations),
//! and the first violations with their context.

use crate::check::Verdict;
use crate::nemesis::{Injected, Kind};
use std::fmt::Write;

/// What the report says about the run besides the verdict.
pub struct RunInfo<'a> {
    /// The seed.
    pub seed: u64,
    /// How faults reached the processes.
    pub mode: &'a str,
    /// Topology in words.
    pub topology: String,
    /// Seconds of faults, and of the whole run.
    pub nemesis_secs: f64,
    /// The run's length.
    pub total_secs: f64,
    /// Faults.
    pub faults: &'a [Injected],
    /// The wall-clock time (Unix seconds) of run time 0, to line the report
    /// up with the processes' logs.
    pub epoch_unix: f64,
}

/// The report's text.
pub fn render(info: &RunInfo, v: &Verdict) -> String {
    let mut out = String::new();
    let verdict = if v.ok() { "PASS" } else { "FAIL" };
    let _ = writeln!(out, "pgws chaos run — seed {} — {verdict}", info.seed);
    let _ = writeln!(out, "mode: {}", info.mode);
    let _ = writeln!(out, "topology: {}", info.topology);
    let _ = writeln!(
        out,
        "nemesis {:.0} s, run {:.0} s; run time 0 = Unix time {:.3}",
        info.nemesis_secs, info.total_secs, info.epoch_unix
    );
    let _ = writeln!(out, "\nfaults ({}):", info.faults.len());
    for f in info.faults {
        let _ = writeln!(out, "  {f}");
    }
    let _ = writeln!(out, "\nfaults by kind:");
    for kind in Kind::ALL {
        let n = info.faults.iter().filter(|f| f.kind == kind).count();
        let _ = writeln!(out, "  {n:4}  {kind}");
    }
    let _ = writeln!(out, "\nchecked:");
    for (what, n) in &v.checked {
        let _ = writeln!(out, "  {n:8}  {what}");
    }
    let _ = writeln!(out, "\nexpected losses (documented, not violations):");
    if v.expected.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (why, n) in &v.expected {
        let _ = writeln!(out, "  {n:8}  {why}");
    }
    let _ = writeln!(
        out,
        "\nv2 announced losses by the faults in force when sent:"
    );
    for (during, n) in &v.lost_during {
        let _ = writeln!(out, "  {n:8}  {during}");
    }
    let _ = writeln!(
        out,
        "\nannounced holes (channel: numbers, as v2 readers saw them; first 40):"
    );
    for ((ch, first, last), what) in v.holes.iter().take(40) {
        let _ = writeln!(out, "  {ch}: {first}–{last}  {what}");
    }
    let _ = writeln!(out, "\nviolations:");
    if v.violations.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (kind, n) in &v.violations {
        let _ = writeln!(out, "  {n:8}  {kind}");
        for line in v
            .first
            .get(kind)
            .into_iter()
            .flatten()
            .filter(|l| !l.is_empty())
        {
            let _ = writeln!(out, "              {line}");
        }
    }
    out
}
