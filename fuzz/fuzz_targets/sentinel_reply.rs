//! What a sentinel may answer to `SENTINEL get-master-addr-by-name`: any
//! RESP bytes, parsed by the redis crate, then by our reply parser; and the
//! majority rule over answers built from the input. Properties: nothing
//! panics; a parsed address has a non-empty host without spaces and a
//! non-zero port; a master is elected only with more than half of the
//! answers naming it, and it is one of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws_service::redis_client::quorum::{elect, master_address, Verdict};

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input: a RESP reply, then votes.
    let (split, rest) = match data.split_first() {
        Some((&split, rest)) => (usize::from(split).min(rest.len()), rest),
        None => return,
    };
    let (reply, votes) = rest.split_at(split);
    if let Ok(value) = redis::parse_redis_value(reply) {
        if let Ok(Some((host, port))) = master_address(&value) {
            assert!(!host.is_empty() && !host.contains(char::is_whitespace));
            assert_ne!(port, 0);
        }
    }
    // Each vote byte: 0 names no master, n names master `n % 4`.
    let answers: Vec<_> = votes
        .iter()
        .take(64)
        .map(|&b| (b != 0).then(|| (format!("h{}", b % 4), 6379)))
        .collect();
    match elect(&answers) {
        Verdict::Master(master) => {
            let votes = answers.iter().filter(|a| a.as_ref() == Some(&master)).count();
            assert!(votes * 2 > answers.len(), "{votes} of {}", answers.len());
        }
        Verdict::NoAnswer => assert!(answers.is_empty()),
        Verdict::NoMajority { answered, votes } => {
            assert_eq!(answered, answers.len());
            assert!(votes * 2 <= answered);
        }
    }
});
