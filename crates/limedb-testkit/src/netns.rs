//! Network-namespace labs: real `limedb` processes on separate (virtual) hosts, with network
//! faults between them (partitions, isolation, delay) for process-level tests.
//!
//! A [`Lab`] owns everything it creates and removes it on drop (even after a panic):
//!
//! * a *switch* namespace `limedb-<pid>-<n>-<label>` holding a Linux bridge `br0`;
//! * one veth pair between the root namespace (the test process, a coordinator, ...) and the
//!   bridge: `lmdb<idx>` in the root namespace carries the gateway address `10.A.B.1/24`;
//! * per [`Host`] a namespace `limedb-<pid>-<n>-<label>-<host>` with `lo` up and a veth pair:
//!   `eth0` inside the host with `10.A.B.<i + 2>/24` and a default route via the gateway,
//!   `h<i>` enslaved to the bridge in the switch namespace.
//!
//! Hosts reach each other through the bridge and the root namespace through the gateway; the
//! root namespace reaches every host. Bridging happens in the switch namespace, so the root
//! namespace's firewall and `br_netfilter` settings (e.g. Docker's `FORWARD DROP`) do not see
//! host-to-host traffic, and no `ip_forward` is needed.
//!
//! Addressing: the subnet `10.A.B.0/24` comes from an index `idx < 8192` (`A = 200 + idx / 256`,
//! `B = idx % 256`), first tried at a hash of the process id and a per-process counter, skipping
//! subnets that overlap a route of the root namespace. The root-side interface name `lmdb<idx>`
//! (4 hex digits, within the 15-byte limit) is the lock: creating it fails if another lab, in
//! this or another process, holds the index, and the next one is tried.
//!
//! Faults (all idempotent; [`Lab::heal`] removes every one of them):
//!
//! * [`Lab::partition`]: every host of one group gets a permanent neighbour (ARP) entry with a
//!   dead MAC address for every host of the other group, and vice versa. Packets between the
//!   groups are silently dropped in both directions, as in a real partition: a connect times out
//!   (it does not fail fast), established connections stall. Each side still reaches the root
//!   namespace and the hosts of its own group. Cuts accumulate until `heal`. Limits: IPv4 only
//!   (IPv6 link-local addresses are not cut), and only between hosts of the lab.
//! * [`Lab::isolate`]: the host's bridge port is set to the `disabled` state, so the bridge drops
//!   every frame from and to it (ARP included): the host reaches nothing, not even the root
//!   namespace, and nothing reaches it. Its link stays up, so processes inside see no error,
//!   only silence.
//! * [`Lab::delay`]: a `netem` qdisc on the host's `eth0` delays every packet the host sends.
//!   It needs `sch_netem` (`CONFIG_NET_SCH_NETEM`) in the kernel, which not every kernel has:
//!   check [`netem_available`] first.
//!
//! Processes run inside a host with [`Host::command`] or [`Host::spawn_node`] (`ip netns exec`
//! execs the program in place, so the child's pid is the program's). On drop, the lab kills
//! (SIGKILL) every process still inside its namespaces, deletes the root-side interface and the
//! namespaces (which takes the bridge and the other veths with them). Namespaces left behind by
//! a test process that was killed (its pid is in their names) are reclaimed by the next lab.
//!
//! Requirements: root (or `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`), iproute2 (`ip`, `bridge`, `tc`),
//! `kill`, and a kernel with network namespaces, veth and bridge; see [`available`] and
//! [`skip_if_unavailable`].

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::Node;

/// Prefix of every namespace a lab creates; the owner's pid follows.
const NS_PREFIX: &str = "limedb-";
/// Prefix of the root-side interface; 4 hex digits of the subnet index follow.
const IF_PREFIX: &str = "lmdb";
/// Number of subnets `10.200.0.0/24` ..= `10.231.255.0/24`.
const SUBNETS: u32 = 32 * 256;
/// A locally administered unicast MAC address that no interface has: frames to it go nowhere.
const DEAD_MAC: &str = "02:00:00:00:00:00";
/// Upper bound for one `ip`/`tc`/`bridge` invocation.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long drop waits for killed processes to leave the namespaces.
const KILL_TIMEOUT: Duration = Duration::from_secs(3);
/// Environment variable that turns "skip" into "fail" in [`skip_if_unavailable`].
pub const REQUIRE_ENV: &str = "LIMEDB_REQUIRE_NETNS";

/// Per-process counter for lab and probe names.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this process can build labs: creates a throwaway namespace with a bridge and a veth
/// pair, and deletes it. `Err` explains why not (not root, no `CAP_NET_ADMIN`, no iproute2, ...).
/// The answer is computed once per process.
pub fn available() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            probe(|ns| {
                ip(&format!("-n {ns} link add br0 type bridge"))?;
                ip(&format!("-n {ns} link add v0 type veth peer name v1"))?;
                Ok(())
            })
            .map_err(|e| {
                format!("network namespaces unavailable (root or CAP_SYS_ADMIN+CAP_NET_ADMIN and iproute2 needed): {e}")
            })
        })
        .clone()
}

/// Whether [`Lab::delay`] can work: the kernel has the `netem` qdisc (`sch_netem`). Computed once
/// per process.
pub fn netem_available() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            available()?;
            probe(|ns| {
                ip(&format!("-n {ns} link set lo up"))?;
                tc(&format!("-n {ns} qdisc add dev lo root netem delay 1ms"))
            })
            .map_err(|e| format!("the netem qdisc is unavailable (kernel without sch_netem?): {e}"))
        })
        .clone()
}

/// For tests: returns `true` (after printing why) when network namespaces are unavailable and
/// the test should return early. If the environment variable [`REQUIRE_ENV`]
/// (`LIMEDB_REQUIRE_NETNS`) is set, panics instead, so that a CI machine that is meant to run
/// these tests cannot skip them silently.
pub fn skip_if_unavailable(test: &str) -> bool {
    match available() {
        Ok(()) => false,
        Err(e) if std::env::var_os(REQUIRE_ENV).is_some() => {
            panic!("{test}: {e} ({REQUIRE_ENV} is set, so this is an error)")
        }
        Err(e) => {
            // Straight to stderr: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(std::io::stderr(), "skipping {test}: {e}");
            true
        }
    }
}

/// Runs `check` in a fresh throwaway namespace, then deletes it.
fn probe(check: impl FnOnce(&str) -> Result<(), String>) -> Result<(), String> {
    let ns = format!(
        "{NS_PREFIX}{}-{}-probe",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    ip(&format!("netns add {ns}"))?;
    let result = check(&ns);
    let deleted = ip(&format!("netns del {ns}"));
    result.and(deleted.map(drop))
}

/// A set of hosts (network namespaces) on one bridge, reachable from the root namespace, with
/// faults between them. See the [module documentation](self). Dropping it removes everything.
#[derive(Debug)]
pub struct Lab {
    /// Distinguishes this lab's hosts from other labs' in the same process.
    id: u32,
    /// The switch namespace, also the prefix of the hosts' namespaces.
    switch: String,
    /// The root-side veth, once created.
    root_if: Option<String>,
    /// The root namespace's address on the lab's subnet.
    gateway: Ipv4Addr,
    state: Mutex<State>,
}

/// The mutable part of a lab.
#[derive(Debug, Default)]
struct State {
    hosts: Vec<Host>,
    /// Every namespace created (switch first), for deletion.
    namespaces: Vec<String>,
    /// Ordered pairs `(a, b)` of host indices: `a` holds a dead neighbour entry for `b`.
    cuts: BTreeSet<(usize, usize)>,
    /// Hosts whose bridge port is disabled.
    isolated: BTreeSet<usize>,
    /// Hosts with a netem qdisc.
    delayed: BTreeSet<usize>,
}

/// One host of a [`Lab`]: a network namespace with one interface `eth0`. A cheap handle (clone
/// it freely); the lab owns the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    lab: u32,
    index: usize,
    name: String,
    netns: String,
    ip: Ipv4Addr,
}

impl Lab {
    /// Creates an empty lab: the switch namespace with its bridge and the root-side interface
    /// with the gateway address. `label` (ASCII letters, digits, `-`, `_`; at most 24 bytes)
    /// names its namespaces, for humans.
    pub fn new(label: &str) -> Result<Lab, String> {
        check_name("lab label", label, 24)?;
        available()?;
        static RECLAIM: Once = Once::new();
        RECLAIM.call_once(reclaim_stale);

        let pid = std::process::id();
        let id = COUNTER.fetch_add(1, Ordering::Relaxed);
        let switch = format!("{NS_PREFIX}{pid}-{id}-{label}");
        let mut lab = Lab {
            id,
            switch: switch.clone(),
            root_if: None,
            gateway: Ipv4Addr::UNSPECIFIED,
            state: Mutex::new(State::default()),
        };
        // Registered before creation: drop deletes it whatever happens next.
        lab.state().namespaces.push(switch.clone());
        ip(&format!("netns add {switch}"))?;
        ip(&format!("-n {switch} link add br0 type bridge"))?;
        ip(&format!("-n {switch} link set br0 up"))?;

        let taken = root_prefixes()?;
        let start = pid
            .wrapping_mul(2_654_435_761)
            .wrapping_add(id.wrapping_mul(40_503))
            % SUBNETS;
        let mut last_error = String::from("every candidate subnet overlaps a route");
        for k in 0..SUBNETS {
            let idx = (start + k) % SUBNETS;
            let net = subnet(idx);
            if taken
                .iter()
                .any(|&(addr, len)| overlaps(addr, len, net, 24))
            {
                continue;
            }
            let name = format!("{IF_PREFIX}{idx:04x}");
            match ip(&format!(
                "link add {name} type veth peer name root netns {switch}"
            )) {
                Ok(_) => {
                    lab.root_if = Some(name);
                    lab.gateway = host_addr(net, 1);
                    break;
                }
                // Another lab holds this index: try the next one.
                Err(e) if e.contains("exists") => last_error = e,
                Err(e) => return Err(e),
            }
        }
        let Some(root_if) = lab.root_if.clone() else {
            return Err(format!("no free subnet for a lab: {last_error}"));
        };
        ip(&format!("-n {switch} link set root master br0 up"))?;
        ip(&format!("addr add {}/24 dev {root_if}", lab.gateway))?;
        ip(&format!("link set {root_if} up"))?;
        Ok(lab)
    }

    /// Adds a host named `name` (ASCII letters, digits, `-`, `_`; at most 24 bytes; unique in
    /// the lab) with the next free address, reachable once this returns.
    pub fn add_host(&self, name: &str) -> Result<Host, String> {
        check_name("host name", name, 24)?;
        let mut st = self.state();
        if st.hosts.iter().any(|h| h.name == name) {
            return Err(format!("the lab already has a host named {name}"));
        }
        let index = st.hosts.len();
        let last = u8::try_from(index + 2)
            .ok()
            .filter(|&n| n < 255)
            .ok_or("a lab has at most 253 hosts")?;
        let [a, b, c, _] = self.gateway.octets();
        let host = Host {
            lab: self.id,
            index,
            name: name.to_string(),
            netns: format!("{}-{name}", self.switch),
            ip: Ipv4Addr::new(a, b, c, last),
        };
        let (ns, switch, port) = (host.netns.as_str(), &self.switch, host.port());
        st.namespaces.push(host.netns.clone());
        ip(&format!("netns add {ns}"))?;
        ip(&format!(
            "-n {switch} link add {port} type veth peer name eth0 netns {ns}"
        ))?;
        ip(&format!("-n {switch} link set {port} master br0 up"))?;
        ip(&format!("-n {ns} link set lo up"))?;
        ip(&format!("-n {ns} addr add {}/24 dev eth0", host.ip))?;
        ip(&format!("-n {ns} link set eth0 up"))?;
        ip(&format!("-n {ns} route add default via {}", self.gateway))?;
        st.hosts.push(host.clone());
        Ok(host)
    }

    /// The hosts, in the order they were added.
    pub fn hosts(&self) -> Vec<Host> {
        self.state().hosts.clone()
    }

    /// The root namespace's address on the lab's subnet (`10.A.B.1`): hosts reach services of
    /// the root namespace (e.g. a coordinator bound to it or to `0.0.0.0`) there.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The lab's subnet, `10.A.B.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c, _] = self.gateway.octets();
        format!("{a}.{b}.{c}.0/24")
    }

    /// The root-side interface (`lmdb<idx>`).
    pub fn interface(&self) -> &str {
        self.root_if.as_deref().unwrap_or_default()
    }

    /// Every namespace of the lab: the switch first, then the hosts.
    pub fn namespaces(&self) -> Vec<String> {
        self.state().namespaces.clone()
    }

    /// Cuts all traffic between every host of `left` and every host of `right`, in both
    /// directions (silent drops: connects time out). Both sides keep reaching the root namespace
    /// and the other hosts of their own group. Adds to earlier cuts; idempotent.
    pub fn partition(&self, left: &[&Host], right: &[&Host]) -> Result<(), String> {
        let mut st = self.state();
        let left = self.indices(&st, left)?;
        let right = self.indices(&st, right)?;
        if let Some(&i) = left.iter().find(|i| right.contains(i)) {
            return Err(format!(
                "host {} is on both sides of the partition",
                st.hosts[i].name
            ));
        }
        let mut pairs = Vec::new();
        for &a in &left {
            for &b in &right {
                pairs.push((a, b));
                pairs.push((b, a));
            }
        }
        // Recorded first, so that heal undoes even a half-applied partition.
        st.cuts.extend(pairs.iter().copied());
        for (a, b) in pairs {
            let peer = st.hosts[b].ip.to_string();
            let ns = st.hosts[a].netns.as_str();
            ip(&format!(
                "-n {ns} neigh replace {peer} lladdr {DEAD_MAC} dev eth0 nud permanent"
            ))?;
        }
        Ok(())
    }

    /// Cuts `host` from everyone, the root namespace included, in both directions (silent drops).
    /// Idempotent.
    pub fn isolate(&self, host: &Host) -> Result<(), String> {
        let mut st = self.state();
        let i = self.index(&st, host)?;
        st.isolated.insert(i);
        self.set_port_state(&st.hosts[i], 0)
    }

    /// Delays every packet `host` sends by `ms` milliseconds (so a round trip between `host` and
    /// anyone grows by `ms`); `0` removes the delay. Needs `sch_netem`: see [`netem_available`].
    pub fn delay(&self, host: &Host, ms: u32) -> Result<(), String> {
        let mut st = self.state();
        let i = self.index(&st, host)?;
        let ns = st.hosts[i].netns.clone();
        if ms == 0 {
            if st.delayed.remove(&i) {
                tc(&format!("-n {ns} qdisc del dev eth0 root"))?;
            }
            return Ok(());
        }
        netem_available()?;
        st.delayed.insert(i);
        tc(&format!(
            "-n {ns} qdisc replace dev eth0 root netem delay {ms}ms"
        ))
    }

    /// Removes every fault: partitions, isolation, delays. Full connectivity is back when it
    /// returns (the first packet between formerly cut hosts waits for an ARP exchange).
    /// Idempotent. Tries every removal, and reports the first failure.
    pub fn heal(&self) -> Result<(), String> {
        let mut st = self.state();
        let mut result: Result<(), String> = Ok(());
        let cut_hosts: BTreeSet<usize> = st.cuts.iter().map(|&(a, _)| a).collect();
        for i in cut_hosts {
            let ns = st.hosts[i].netns.as_str();
            let r = ip(&format!("-n {ns} neigh flush dev eth0 nud permanent"));
            result = result.and(r.map(drop));
        }
        st.cuts.clear();
        for &i in &st.isolated {
            result = result.and(self.set_port_state(&st.hosts[i], 3));
        }
        st.isolated.clear();
        for &i in &st.delayed {
            let ns = st.hosts[i].netns.as_str();
            result = result.and(tc(&format!("-n {ns} qdisc del dev eth0 root")));
        }
        st.delayed.clear();
        result
    }

    /// Sets the STP state of `host`'s bridge port: 0 disabled (drops everything), 3 forwarding.
    fn set_port_state(&self, host: &Host, state: u8) -> Result<(), String> {
        let args = format!(
            "-n {} link set dev {} state {state}",
            self.switch,
            host.port()
        );
        run("bridge", &args.split_whitespace().collect::<Vec<_>>()).map(drop)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The index of `host`, checked to belong to this lab.
    fn index(&self, st: &State, host: &Host) -> Result<usize, String> {
        match st.hosts.get(host.index) {
            Some(h) if host.lab == self.id && h == host => Ok(host.index),
            _ => Err(format!(
                "host {} ({}) is not part of this lab",
                host.name, host.netns
            )),
        }
    }

    fn indices(&self, st: &State, hosts: &[&Host]) -> Result<Vec<usize>, String> {
        hosts.iter().map(|h| self.index(st, h)).collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut self.state().namespaces);
        kill_all_in(&namespaces);
        // Deleting the root side takes its peer along at once; deleting the namespaces takes the
        // bridge and the hosts' veths along (asynchronously, in the kernel).
        if let Some(root_if) = self.root_if.take() {
            if let Err(e) = ip(&format!("link del dev {root_if}")) {
                eprintln!("netns lab cleanup: {e}");
            }
        }
        for ns in namespaces.iter().rev() {
            if let Err(e) = ip(&format!("netns del {ns}")) {
                // Namespaces that were registered but never created are expected here.
                if !e.contains("No such file") {
                    eprintln!("netns lab cleanup: {e}");
                }
            }
        }
    }
}

impl Host {
    /// The host's name in its lab.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace's name (for `ip netns exec`, `ip -n`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's address (on `eth0`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host's address with `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// The command prefix that runs a program inside the host: `ip netns exec <netns>`. It execs
    /// the program in place (same pid).
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.netns]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// A command that runs `program` inside the host (`ip netns exec <netns> program`); add
    /// arguments, environment, stdio as usual. The spawned child's pid is `program`'s.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// [`Node::spawn`] inside the host: starts `bin args...` there and waits for its readiness
    /// line. Bind it to the host's address or `0.0.0.0` to be reachable.
    pub fn spawn_node(&self, bin: &Path, args: &[&str], log: &Path) -> Result<Node, String> {
        self.spawn_node_in(bin, args, log, None, &[])
    }

    /// [`Node::spawn_in`] inside the host.
    pub fn spawn_node_in(
        &self,
        bin: &Path,
        args: &[&str],
        log: &Path,
        cwd: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Node, String> {
        Node::spawn_wrapped(&self.wrapper(), bin, args, log, cwd, env)
    }

    /// The host's bridge port in the switch namespace.
    fn port(&self) -> String {
        format!("h{}", self.index)
    }
}

/// Kills every process inside `namespaces` and waits (boundedly) until they are gone.
fn kill_all_in(namespaces: &[String]) {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids: Vec<String> = namespaces
            .iter()
            .filter_map(|ns| ip(&format!("netns pids {ns}")).ok())
            .flat_map(|out| {
                out.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        if pids.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("netns lab cleanup: processes {pids:?} survived SIGKILL");
            return;
        }
        let mut args = vec!["-9"];
        args.extend(pids.iter().map(String::as_str));
        let _ = run("kill", &args);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deletes namespaces left behind by labs of processes that no longer exist (a test binary
/// killed before its labs were dropped), and kills what still runs inside them. Best effort.
fn reclaim_stale() {
    let Ok(list) = ip("netns list") else {
        return;
    };
    let stale: Vec<String> = list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(str::to_string)
        .collect();
    if stale.is_empty() {
        return;
    }
    kill_all_in(&stale);
    for ns in &stale {
        let _ = ip(&format!("netns del {ns}"));
    }
}

/// The IPv4 destinations of every route of the root namespace (all tables), except default.
fn root_prefixes() -> Result<Vec<(Ipv4Addr, u8)>, String> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "throw",
        "unreachable",
        "prohibit",
        "blackhole",
        "nat",
        "anycast",
    ];
    let out = ip("-4 -o route show table all")?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let mut dst = words.next()?;
            if TYPES.contains(&dst) {
                dst = words.next()?;
            }
            let (addr, len) = dst.split_once('/').unwrap_or((dst, "32"));
            Some((addr.parse().ok()?, len.parse().ok()?))
        })
        .collect())
}

/// Whether `a/alen` and `b/blen` share an address.
fn overlaps(a: Ipv4Addr, alen: u8, b: Ipv4Addr, blen: u8) -> bool {
    let len = u32::from(alen.min(blen).min(32));
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// The network address of subnet `idx`.
fn subnet(idx: u32) -> Ipv4Addr {
    // idx < SUBNETS = 8192, so both octets fit.
    Ipv4Addr::new(10, (200 + idx / 256) as u8, (idx % 256) as u8, 0)
}

/// Host `n` of the /24 at `net`.
fn host_addr(net: Ipv4Addr, n: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, n)
}

fn check_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {name:?}: 1 to {max} ASCII letters, digits, '-' or '_'"
        ))
    }
}

/// Runs `ip` with the whitespace-separated arguments `args` (no argument contains whitespace:
/// names are validated).
fn ip(args: &str) -> Result<String, String> {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// Runs `tc` like [`ip`].
fn tc(args: &str) -> Result<(), String> {
    run("tc", &args.split_whitespace().collect::<Vec<_>>()).map(drop)
}

/// Runs `program args...` to completion (at most [`COMMAND_TIMEOUT`], then SIGKILL); its stdout,
/// or an error with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let shown = || format!("`{program} {}`", args.join(" "));
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", shown()))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => Err(format!(
            "{} failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Err(e)) => Err(format!("{} failed: {e}", shown())),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            Err(format!(
                "{} did not finish within {COMMAND_TIMEOUT:?}",
                shown()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Tells [`child_process_helper`] what to do when this test binary runs inside a host.
    const CHILD_ENV: &str = "LIMEDB_NETNS_TEST_CHILD";
    /// Connect and echo timeout of a reachability probe.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

    /// Not a test: the code this test binary runs when started inside a host (with
    /// [`CHILD_ENV`] set). `echo <ip>`: an echo server on `<ip>:0` that prints a `LIMEDB_READY`
    /// line; `connect <addr>`: exits 0 iff an echo round trip with `<addr>` works. Without the
    /// variable (a normal test run) it does nothing.
    #[test]
    fn child_process_helper() {
        let Ok(mode) = std::env::var(CHILD_ENV) else {
            return;
        };
        match mode.split_once(' ') {
            Some(("echo", ip)) => {
                let listener = TcpListener::bind((ip, 0)).expect("bind the echo server");
                let addr = listener.local_addr().expect("local address");
                println!("LIMEDB_READY role=echo http={addr}");
                std::io::stdout().flush().expect("flush stdout");
                serve_echo(listener);
            }
            Some(("connect", addr)) => {
                let addr = addr.parse().expect("a socket address");
                std::process::exit(if echo_roundtrip(addr) { 0 } else { 1 });
            }
            _ => panic!("bad {CHILD_ENV}: {mode:?}"),
        }
    }

    fn serve_echo(listener: TcpListener) {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    }

    fn echo_roundtrip(addr: SocketAddr) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
            return false;
        };
        let mut reply = [0u8; 4];
        stream.set_read_timeout(Some(PROBE_TIMEOUT)).is_ok()
            && stream.set_write_timeout(Some(PROBE_TIMEOUT)).is_ok()
            && stream.write_all(b"ping").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"ping"
    }

    /// This test binary and the helper's test name, for running it inside a host.
    fn helper_command(host: &Host, mode: &str) -> Command {
        let exe = std::env::current_exe().expect("current exe");
        let module = module_path!().split_once("::").expect("crate::module").1;
        let mut command = host.command(exe);
        command
            .args(["--exact", &format!("{module}::child_process_helper")])
            .args(["--nocapture", "--test-threads=1", "-q"])
            .env(CHILD_ENV, mode);
        command
    }

    /// An echo server inside `host`, as a [`Node`] (exercising [`Node::spawn_wrapped`]).
    fn echo_in(host: &Host, dir: &Path) -> (Node, SocketAddr) {
        let exe = std::env::current_exe().expect("current exe");
        let module = module_path!().split_once("::").expect("crate::module").1;
        let name = format!("{module}::child_process_helper");
        let mode = format!("echo {}", host.ip());
        let log = dir.join(format!("echo-{}.log", host.name()));
        let node = host
            .spawn_node_in(
                &exe,
                &["--exact", &name, "--nocapture", "--test-threads=1", "-q"],
                &log,
                None,
                &[(CHILD_ENV, &mode)],
            )
            .expect("echo server in the host");
        let addr = node.http_addr().parse().expect("echo address");
        (node, addr)
    }

    /// An echo server in the root namespace on the lab's gateway address.
    fn echo_in_root(lab: &Lab) -> SocketAddr {
        let listener = TcpListener::bind((lab.gateway(), 0)).expect("bind on the gateway");
        let addr = listener.local_addr().expect("local address");
        std::thread::spawn(move || serve_echo(listener));
        addr
    }

    /// Checks every `(from, to, expected)` at once (`from == None`: the root namespace) and
    /// fails listing every mismatch.
    fn assert_reach(when: &str, checks: &[(Option<&Host>, SocketAddr, bool)]) {
        let results: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = checks
                .iter()
                .map(|&(from, to, _)| {
                    s.spawn(move || match from {
                        None => echo_roundtrip(to),
                        Some(host) => helper_command(host, &format!("connect {to}"))
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .expect("run the probe")
                            .success(),
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        });
        let wrong: Vec<String> = checks
            .iter()
            .zip(results)
            .filter(|((_, _, expected), got)| expected != got)
            .map(|((from, to, expected), _)| {
                let from = from.map_or("root", |h| h.name());
                format!("{from} -> {to}: expected reachable={expected}")
            })
            .collect();
        assert!(wrong.is_empty(), "{when}: {}", wrong.join("; "));
    }

    fn ns_list() -> String {
        ip("netns list").expect("ip netns list")
    }

    #[test]
    fn subnet_arithmetic() {
        let net = |s: &str| s.parse::<Ipv4Addr>().expect("address");
        assert_eq!(subnet(0), net("10.200.0.0"));
        assert_eq!(subnet(SUBNETS - 1), net("10.231.255.0"));
        assert!(overlaps(net("10.200.3.0"), 24, net("10.200.3.7"), 32));
        assert!(overlaps(net("10.0.0.0"), 8, net("10.200.3.0"), 24));
        assert!(overlaps(net("0.0.0.0"), 0, net("10.200.3.0"), 24));
        assert!(!overlaps(net("10.200.4.0"), 24, net("10.200.3.0"), 24));
        assert!(!overlaps(net("192.0.2.0"), 24, net("10.200.3.0"), 24));
    }

    #[test]
    fn partition_isolate_and_heal() {
        if skip_if_unavailable("partition_isolate_and_heal") {
            return;
        }
        let dir = crate::temp_dir();
        let lab = Lab::new("faults").expect("lab");
        let a = lab.add_host("a").expect("host a");
        let b = lab.add_host("b").expect("host b");
        let c = lab.add_host("c").expect("host c");
        let (node_a, to_a) = echo_in(&a, dir.path());
        let (_node_b, to_b) = echo_in(&b, dir.path());
        let (_node_c, to_c) = echo_in(&c, dir.path());
        let to_root = echo_in_root(&lab);

        // The node's pid is the program's, inside the namespace.
        let pid = node_a.pid().expect("pid").to_string();
        let identified = ip(&format!("netns identify {pid}")).expect("ip netns identify");
        assert_eq!(identified.trim(), a.netns());

        let all_up = |when: &str| {
            assert_reach(
                when,
                &[
                    (None, to_a, true),
                    (None, to_b, true),
                    (None, to_c, true),
                    (Some(&b), to_a, true),
                    (Some(&c), to_a, true),
                    (Some(&a), to_b, true),
                    (Some(&b), to_c, true),
                    (Some(&a), to_root, true),
                ],
            )
        };
        all_up("before any fault");

        lab.partition(&[&a], &[&b, &c]).expect("partition");
        lab.partition(&[&a], &[&b, &c]).expect("partition again");
        assert_reach(
            "after partition([a], [b, c])",
            &[
                (Some(&b), to_a, false),
                (Some(&c), to_a, false),
                (Some(&a), to_b, false),
                (Some(&a), to_c, false),
                (Some(&b), to_c, true),
                (Some(&c), to_b, true),
                (None, to_a, true),
                (None, to_b, true),
                (Some(&a), to_root, true),
                (Some(&b), to_root, true),
            ],
        );

        lab.isolate(&a).expect("isolate");
        lab.isolate(&a).expect("isolate again");
        assert_reach(
            "after isolate(a)",
            &[
                (None, to_a, false),
                (Some(&a), to_root, false),
                (Some(&b), to_a, false),
                (None, to_b, true),
                (Some(&b), to_c, true),
            ],
        );

        lab.heal().expect("heal");
        lab.heal().expect("heal again");
        all_up("after heal");

        // Isolation alone, then heal, also restores everything.
        lab.isolate(&b).expect("isolate b");
        assert_reach(
            "after isolate(b)",
            &[(None, to_b, false), (Some(&a), to_b, false)],
        );
        lab.heal().expect("heal");
        all_up("after the second heal");
    }

    #[test]
    fn bad_fault_arguments_are_rejected() {
        if skip_if_unavailable("bad_fault_arguments_are_rejected") {
            return;
        }
        let lab = Lab::new("args").expect("lab");
        let other = Lab::new("other").expect("other lab");
        let a = lab.add_host("a").expect("host a");
        let b = lab.add_host("b").expect("host b");
        let stranger = other.add_host("a").expect("host of the other lab");
        assert!(lab.partition(&[&a], &[&a, &b]).is_err());
        assert!(lab.partition(&[&a], &[&stranger]).is_err());
        assert!(lab.isolate(&stranger).is_err());
        assert!(lab.add_host("a").is_err(), "duplicate host name");
        assert!(lab.add_host("has space").is_err());
        assert!(Lab::new("").is_err());
        assert_ne!(lab.subnet(), other.subnet());
        assert_ne!(lab.interface(), other.interface());
        lab.heal().expect("heal without faults");
    }

    #[test]
    fn concurrent_labs_get_distinct_subnets() {
        if skip_if_unavailable("concurrent_labs_get_distinct_subnets") {
            return;
        }
        let labs: Vec<Lab> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| s.spawn(move || Lab::new(&format!("par{i}")).expect("lab")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let subnets: BTreeSet<String> = labs.iter().map(Lab::subnet).collect();
        let interfaces: BTreeSet<&str> = labs.iter().map(Lab::interface).collect();
        assert_eq!(subnets.len(), labs.len(), "{subnets:?}");
        assert_eq!(interfaces.len(), labs.len(), "{interfaces:?}");
        for lab in &labs {
            assert!(lab.interface().len() <= 15);
        }
    }

    #[test]
    fn dropping_the_lab_removes_everything() {
        if skip_if_unavailable("dropping_the_lab_removes_everything") {
            return;
        }
        let lab = Lab::new("drop").expect("lab");
        let a = lab.add_host("a").expect("host a");
        let b = lab.add_host("b").expect("host b");
        lab.partition(&[&a], &[&b]).expect("partition");
        lab.isolate(&b).expect("isolate");
        // A stray process the test does not clean up itself.
        let mut stray = a
            .command("sleep")
            .arg("600")
            .stdout(Stdio::null())
            .spawn()
            .expect("sleep in host a");
        crate::wait_until(Duration::from_secs(5), "the stray in the namespace", || {
            ip(&format!("netns pids {}", a.netns())).is_ok_and(|pids| !pids.trim().is_empty())
        });
        let namespaces = lab.namespaces();
        let interface = lab.interface().to_string();
        assert_eq!(namespaces.len(), 3);
        let listed = ns_list();
        assert!(
            namespaces.iter().all(|ns| listed.contains(ns.as_str())),
            "{listed}"
        );

        let started = Instant::now();
        drop(lab);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "drop took {:?}",
            started.elapsed()
        );

        let listed = ns_list();
        for ns in &namespaces {
            assert!(
                !listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(ns)),
                "{ns} left: {listed}"
            );
        }
        assert!(
            ip(&format!("link show dev {interface}")).is_err(),
            "{interface} left"
        );
        let status = stray.try_wait().expect("try_wait");
        assert!(status.is_some(), "the stray process survived the lab");
    }

    #[test]
    fn delay_slows_a_host_when_netem_exists() {
        if skip_if_unavailable("delay_slows_a_host_when_netem_exists") {
            return;
        }
        if let Err(e) = netem_available() {
            let _ = writeln!(
                std::io::stderr(),
                "skipping delay_slows_a_host_when_netem_exists: {e}"
            );
            return;
        }
        let dir = crate::temp_dir();
        let lab = Lab::new("delay").expect("lab");
        let a = lab.add_host("a").expect("host a");
        let (_node, to_a) = echo_in(&a, dir.path());
        let timed = || {
            let started = Instant::now();
            assert!(echo_roundtrip(to_a), "a unreachable");
            started.elapsed()
        };
        lab.delay(&a, 150).expect("delay");
        lab.delay(&a, 150).expect("delay again");
        let slow = timed();
        assert!(
            slow >= Duration::from_millis(150),
            "round trip took {slow:?}"
        );
        lab.heal().expect("heal");
        let fast = timed();
        assert!(
            fast < Duration::from_millis(100),
            "round trip took {fast:?} after heal"
        );
    }
}
