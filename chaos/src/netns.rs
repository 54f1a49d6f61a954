//! Network namespaces for one run (root only): a bridge in the root
//! namespace on a private /24 (`10.199.<x>.0/24`, `x` chosen unused), the
//! servers (PostgreSQL, Redis) on addresses of the bridge, and one
//! namespace per pgws process, joined to the bridge by a veth pair. A link
//! is cut by a `blackhole` route in the process's namespace: its packets to
//! that server are dropped silently (established connections hang until a
//! timeout notices; new ones fail), which is what a real partition does —
//! unlike the fault proxy's resets. Only `ip` is needed (no nft/iptables).
//! Everything is named `pgc<pid>…`, deleted when dropped, and a run
//! first deletes what a dead earlier run (its pid gone) left behind.

use std::net::Ipv4Addr;
use std::process::Command;

/// The `ip` program.
const IP: &str = "/usr/sbin/ip";

/// Run `ip` with `args`; an error naming the command when it fails.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(IP).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Run `ip` and ignore failure (cleanup of what may already be gone).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new(IP).args(args).output();
}

/// Whether namespaces can be made here: root, and `ip netns` works.
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new(IP).exists() {
        return false;
    }
    Command::new(IP)
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One process's namespace.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name.
    pub ns: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
}

impl Host {
    /// The wrapper that runs a program in this namespace.
    pub fn wrapper(&self) -> Vec<String> {
        vec![IP.into(), "netns".into(), "exec".into(), self.ns.clone()]
    }
}

/// The run's network: bridge, server addresses, namespaces.
pub struct Net {
    bridge: String,
    /// PostgreSQL's address (on the bridge).
    pub pg: Ipv4Addr,
    /// Redis's address (on the bridge).
    pub redis: Ipv4Addr,
    hosts: Vec<Host>,
}

/// Delete namespaces and bridges of earlier runs whose process is gone.
fn sweep() {
    let alive = |pid: &str| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let pid_of = |name: &str| -> Option<String> {
        let rest = name.strip_prefix("pgc")?;
        Some(
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .to_string(),
        )
    };
    if let Ok(out) = Command::new(IP).args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if pid_of(name).is_some_and(|p| !p.is_empty() && !alive(&p)) {
                ip_quiet(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new(IP)
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            if pid_of(name).is_some_and(|p| !p.is_empty() && !alive(&p)) {
                ip_quiet(&["link", "del", name]);
            }
        }
    }
}

/// A /24 under 10.199 that no interface uses yet.
fn free_subnet(seed: u32) -> anyhow::Result<u8> {
    let out = Command::new(IP)
        .args(["-o", "-4", "addr", "show"])
        .output()?;
    let used = String::from_utf8_lossy(&out.stdout).to_string();
    for k in 0..250u32 {
        let x = ((seed + k) % 250 + 1) as u8;
        if !used.contains(&format!("10.199.{x}.")) {
            return Ok(x);
        }
    }
    anyhow::bail!("no free /24 under 10.199.0.0/16")
}

impl Net {
    /// A bridge, the two server addresses, and `hosts` namespaces; `run`
    /// tells this run's names apart from the process's other runs.
    pub fn create(run: u32, hosts: usize) -> anyhow::Result<Net> {
        anyhow::ensure!(hosts <= 10, "at most 10 namespaces per run");
        sweep();
        let pid = std::process::id();
        let x = free_subnet(pid.wrapping_mul(7).wrapping_add(run))?;
        let mut net = Net {
            bridge: format!("pgc{pid}b{run}"),
            pg: Ipv4Addr::new(10, 199, x, 2),
            redis: Ipv4Addr::new(10, 199, x, 3),
            hosts: Vec::new(),
        };
        anyhow::ensure!(
            net.bridge.len() <= 15,
            "interface name {} too long",
            net.bridge
        );
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        for last in [1, 2, 3] {
            ip(&[
                "addr",
                "add",
                &format!("10.199.{x}.{last}/24"),
                "dev",
                &net.bridge,
            ])?;
        }
        ip(&["link", "set", &net.bridge, "up"])?;
        for h in 0..hosts {
            let index = run as usize * 10 + h;
            let ns = format!("pgc{pid}n{index}");
            let outer = format!("pgc{pid}v{index}");
            anyhow::ensure!(outer.len() <= 15, "interface name {outer} too long");
            let addr = Ipv4Addr::new(10, 199, x, 10 + h as u8);
            ip(&["netns", "add", &ns])?;
            net.hosts.push(Host {
                ns: ns.clone(),
                addr,
            });
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &outer, "master", &net.bridge, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.199.{x}.1"),
            ])?;
        }
        Ok(net)
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Host `i`'s address.
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].addr
    }

    /// The index of the host with namespace `ns`.
    pub fn index_of(&self, ns: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h.ns == ns)
            .unwrap_or(usize::MAX)
    }

    /// Cut (or heal) host `i`'s traffic to `server`: a blackhole route in
    /// its namespace.
    pub fn cut(&self, i: usize, server: Ipv4Addr, cut: bool) -> anyhow::Result<()> {
        let ns = &self
            .hosts
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("no host {i}"))?
            .ns;
        let dest = format!("{server}/32");
        if cut {
            ip(&["-n", ns, "route", "replace", "blackhole", &dest])
        } else {
            ip(&["-n", ns, "route", "del", "blackhole", &dest]).or_else(|e| {
                // Already healed.
                if e.to_string().contains("No such process") {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        }
    }

    /// The bridge's name, for the report.
    pub fn describe(&self) -> String {
        format!(
            "bridge {} (PostgreSQL {}, Redis {}), namespaces {}",
            self.bridge,
            self.pg,
            self.redis,
            self.hosts
                .iter()
                .map(|h| format!("{} {}", h.ns, h.addr))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            ip_quiet(&["netns", "del", &h.ns]);
        }
        ip_quiet(&["link", "del", &self.bridge]);
    }
}
