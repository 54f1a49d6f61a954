//! Free ports on loopback.

/// A free TCP port on loopback (bound and released; the kernel does not
/// hand it out again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The first of `n` consecutive free ports, for scripts that need a fixed
/// layout (`deploy/local-cluster.sh`). Taken below Linux's ephemeral range
/// (32768 and up), where no outgoing connection nor any `free_port()` of a
/// parallel test can be holding one, and checked by binding each.
pub fn free_port_block(n: u16) -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    let span = 32_000 - 20_000 - n as u64;
    for attempt in 0..200u64 {
        let base =
            20_000 + ((seed.wrapping_mul(6364136223846793005) + attempt * 7919) % span) as u16;
        let all_free =
            (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no block of {n} free ports between 20000 and 32000");
}
