#!/usr/bin/env python3
"""The body of bench/replication.sh (see its header for what it measures).

Runs real processes only: `limedb` (release build, path in $LIMEDB), `etcd` (Debian's
etcd-server 3.4) and `limedb bench` as the load generator for both. Progress goes to stderr;
stdout gets a table and, as its very last line, one line of JSON.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

LIMEDB = os.environ["LIMEDB"]


def log(msg):
    print(f"[replication.sh] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, timeout=2.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:
        return None, b""


def health(url):
    status, body = http("GET", url + "/api/v1/health", timeout=1.0)
    if status is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def wait_until(what, check, timeout=60.0, pause=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(pause)
    raise SystemExit(f"timed out waiting for {what}")


# Every process started, so that none outlives the benchmark whatever fails.
STARTED = []


class Proc:
    """A child process in its own session, its stderr in a log file."""

    def __init__(self, name, args, work):
        self.name, self.args, self.work = name, args, work
        self.p = None
        STARTED.append(self)
        self.start()

    def start(self):
        err = open(os.path.join(self.work, self.name + ".err"), "ab")
        out = open(os.path.join(self.work, self.name + ".out"), "wb")
        self.p = subprocess.Popen(self.args, stdout=out, stderr=err, start_new_session=True)

    def ready(self):
        path = os.path.join(self.work, self.name + ".out")

        def line():
            if self.p.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.work}/{self.name}.err")
            with open(path) as f:
                for l in f:
                    if l.startswith("LIMEDB_READY"):
                        return dict(kv.split("=", 1) for kv in l.split()[1:])
            return None

        return wait_until(f"{self.name} to be ready", line, timeout=60)

    def kill9(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()


class Group:
    """The replicas of one shard."""

    def __init__(self, work, shard, n, extra=()):
        self.work, self.shard, self.extra = work, shard, list(extra)
        self.ports = {r: free_port() for r in range(1, n + 1)}
        self.peers = ",".join(f"{r}=http://127.0.0.1:{p}" for r, p in self.ports.items())
        self.procs = {}
        for r in self.ports:
            self.spawn(r)

    def url(self, r):
        return f"http://127.0.0.1:{self.ports[r]}"

    def data(self, r):
        return os.path.join(self.work, f"s{self.shard}r{r}")

    def spawn(self, r):
        args = [LIMEDB, "--worker-threads", "1", "shard", "--id", str(self.shard),
                "--replica", str(r), "--peers", self.peers, "--port", str(self.ports[r]),
                "--internal-port", "0", "--data-dir", self.data(r)] + self.extra
        name = f"shard{self.shard}-replica{r}"
        if os.path.exists(os.path.join(self.work, name + ".out")):
            os.remove(os.path.join(self.work, name + ".out"))
        self.procs[r] = Proc(name, args, self.work)
        self.procs[r].ready()

    def leader(self, timeout=30.0):
        def find():
            for r in list(self.procs):
                h = health(self.url(r))
                if h and h.get("role") == "leader":
                    return r
            return None

        return wait_until(f"a leader of shard {self.shard}", find, timeout, 0.01)

    def caught_up(self, r, timeout=600.0):
        leader = self.leader()
        target = (health(self.url(leader)) or {}).get("commitIndex") or 0

        def done():
            h = health(self.url(r))
            return h and h.get("leaderId") and (h.get("appliedIndex") or 0) >= target

        wait_until(f"replica {r} of shard {self.shard} to catch up", done, timeout, 0.02)


def coordinator(work, name, shard_urls):
    port = free_port()
    shards = ",".join(f"{i + 1}={u}" for i, u in enumerate(shard_urls))
    proc = Proc(name, [LIMEDB, "coordinator", "--port", str(port), "--shards", shards], work)
    proc.ready()
    url = f"http://127.0.0.1:{port}"

    def healthy():
        h = health(url)
        return h and h.get("healthyShards") == len(shard_urls)

    wait_until(f"{name} to reach every shard", healthy)
    return proc, url


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(procs):
    """User + system CPU time the live processes `procs` have used, in seconds."""
    total = 0
    for proc in procs:
        try:
            with open(f"/proc/{proc.p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


def bench(url, workload, n, c, keyspace, value_size, target="limedb", prefill=True, extra=()):
    args = [LIMEDB, "bench", "--url", url, "--target", target, "-c", str(c), "-n", str(n),
            "-w", workload, "--keyspace", str(keyspace), "--value-size", str(value_size),
            "--json"] + list(extra)
    if not prefill:
        args.append("--no-prefill")
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"limedb bench failed: {out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def start_etcd(work):
    members = {f"e{i}": (free_port(), free_port()) for i in (1, 2, 3)}
    cluster = ",".join(f"{n}=http://127.0.0.1:{pp}" for n, (_, pp) in members.items())
    procs = []
    for name, (cp, pp) in members.items():
        args = ["etcd", "--name", name, "--data-dir", os.path.join(work, name),
                "--listen-client-urls", f"http://127.0.0.1:{cp}",
                "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                "--listen-peer-urls", f"http://127.0.0.1:{pp}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "limedb-bench"]
        procs.append(Proc("etcd-" + name, args, work))
    url = f"http://127.0.0.1:{members['e1'][0]}"

    def answers():
        status, _ = http("POST", url + "/v3/kv/put", {"key": "cHJvYmU=", "value": "eA=="})
        return status == 200

    wait_until("etcd to elect a leader and answer", answers, timeout=60)
    return procs, url


def probe_key(coord_url, group):
    """A key the coordinator routes to `group`."""
    for i in range(10000):
        key = f"probe-{i}"
        http("POST", coord_url + "/api/v1/set", {"key": key, "value": "p"})
        leader = group.leader()
        status, _ = http("GET", f"{group.url(leader)}/api/v1/get/{key}")
        if status == 200:
            return key
    raise SystemExit("no key of shard 1 found")


def failover(group, coord_url, kills, connections, work):
    key = probe_key(coord_url, group)
    load = subprocess.Popen([LIMEDB, "bench", "--url", coord_url, "-c", str(connections),
                             "-n", "1000000000", "-w", "mixed:50", "--keyspace", "20000",
                             "--no-prefill", "--timeout-ms", "3000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    times = []
    try:
        for k in range(kills):
            leader = group.leader()
            time.sleep(0.5)
            killed = time.time()
            group.procs[leader].kill9()
            while True:
                status, _ = http("POST", coord_url + "/api/v1/set", {"key": key, "value": str(k)},
                                 timeout=3.0)
                if status == 200:
                    break
                if time.time() - killed > 30:
                    raise SystemExit("shard 1 was not writable 30 s after a kill")
                time.sleep(0.005)
            took = time.time() - killed
            times.append(took)
            log(f"kill {k + 1}/{kills}: replica {leader}; writes to shard 1 again after {took * 1000:.0f} ms")
            group.spawn(leader)
            group.caught_up(leader)
    finally:
        load.send_signal(signal.SIGKILL)
        load.wait()
    return times


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def catch_up(work, mib, connections):
    value_size = 1000
    keys = mib * 1024 * 1024 // (value_size + 16)
    work = os.path.join(work, "catchup")
    os.makedirs(work, exist_ok=True)
    # Snapshots every 1000 entries, 100 kept behind them: the log is purged well before the
    # load ends, so the wiped replica can only catch up through a snapshot.
    group = Group(work, 1, 3, extra=["--raft-snapshot-entries", "1000", "--raft-keep-entries", "100"])
    proc, url = coordinator(work, "coordinator-catchup", [group.url(1)])
    group.leader()
    log(f"catch-up: loading {keys} keys of {value_size} bytes ({mib} MiB, incompressible)")
    started = time.time()
    # Every key once (sequential), each value distinct random alphanumerics: the engine holds
    # about what was loaded, not a few compressible windows.
    bench(url, "set", keys, connections, keys, value_size, prefill=False,
          extra=["--key-pattern", "sequential", "--values", "random"])
    log(f"catch-up: loaded in {time.time() - started:.1f} s")
    leader = group.leader()
    wiped = next(r for r in group.procs if r != leader)
    # The leader's newest snapshot is what the wiped replica will receive.
    snaps = os.path.join(group.data(leader), "snapshots")
    wait_until("a snapshot on the leader",
               lambda: any(d.startswith("snap-") for d in os.listdir(snaps)), timeout=120)
    snapshot_bytes = max(dir_bytes(os.path.join(snaps, d)) for d in os.listdir(snaps)
                         if d.startswith("snap-"))
    group.procs[wiped].kill9()
    shutil.rmtree(group.data(wiped))
    started = time.time()
    group.spawn(wiped)
    group.caught_up(wiped)
    took = time.time() - started
    h = health(group.url(wiped)) or {}
    received = h.get("raft", {}).get("snapshotsReceived", 0)
    if received < 1:
        raise SystemExit("catch-up: the wiped replica caught up without receiving a snapshot")
    proc.stop()
    for p in group.procs.values():
        p.stop()
    return {"loaded_mib": keys * value_size / 1048576,
            "snapshot_mib": snapshot_bytes / 1048576, "seconds": took,
            "mib_per_s": snapshot_bytes / 1048576 / took if took > 0 else None,
            "snapshots_received": received}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keyspace", type=int, default=20000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--catchup-mib", type=int, default=1024)
    ap.add_argument("--skip", default="", help="comma list of: etcd,failover,catchup")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    work = tempfile.mkdtemp(prefix="limedb-repl-bench.")
    try:
        log("starting 3 shards x 3 replicas + coordinator")
        groups = [Group(work, s, 3) for s in (1, 2, 3)]
        for g in groups:
            g.leader()
        c_repl, url_repl = coordinator(work, "coordinator-replicated", [g.url(1) for g in groups])
        log("starting 3 single-copy shards (--wal-sync always) + coordinator")
        singles = []
        for s in (1, 2, 3):
            port = free_port()
            p = Proc(f"single{s}", [LIMEDB, "--worker-threads", "1", "shard", "--id", str(s),
                                    "--port", str(port), "--internal-port", "0",
                                    "--data-dir", os.path.join(work, f"single{s}"),
                                    "--wal-sync", "always"], work)
            p.ready()
            singles.append((p, f"http://127.0.0.1:{port}"))
        c_single, url_single = coordinator(work, "coordinator-single", [u for _, u in singles])
        # Each system: its URL, the load generator's target mode, its server processes and
        # its coordinator (whose CPU time per request is reported apart).
        systems = [("replicated", url_repl, "limedb",
                    [p for g in groups for p in g.procs.values()], [c_repl]),
                   ("single", url_single, "limedb", [p for p, _ in singles], [c_single])]
        if "etcd" not in skip:
            log("starting etcd: 3 members")
            etcd_procs, url_etcd = start_etcd(work)
            systems.append(("etcd", url_etcd, "etcd", etcd_procs, []))
        cells = {name: {"set_ops": [], "set_p99_us": [], "get_ops": [], "get_p99_us": [],
                        "set_server_cpu_us": [], "set_coordinator_cpu_us": []}
                 for name, *_ in systems}
        for run in range(a.runs):
            for name, url, target, servers, coords in systems:
                for workload in ("set", "get"):
                    cpu_before = (cpu_seconds(servers), cpu_seconds(coords))
                    r = bench(url, workload, a.requests, a.connections, a.keyspace,
                              a.value_size, target=target, prefill=(workload == "get"))
                    cpu_after = (cpu_seconds(servers), cpu_seconds(coords))
                    if r.get("errors"):
                        raise SystemExit(f"{name} {workload}: {r['errors']} errors")
                    cells[name][f"{workload}_ops"].append(r["throughput_ops"])
                    cells[name][f"{workload}_p99_us"].append(r["latency_us"]["p99"])
                    note = ""
                    if workload == "set":
                        # CPU per SET, the prefill-free round: servers, coordinator.
                        per = [(after - before) * 1e6 / a.requests
                               for before, after in zip(cpu_before, cpu_after)]
                        cells[name]["set_server_cpu_us"].append(per[0])
                        cells[name]["set_coordinator_cpu_us"].append(per[1])
                        note = f", CPU per SET {per[0]:.0f} us servers + {per[1]:.0f} us coordinator"
                    log(f"run {run + 1}: {name:10} {workload}: {r['throughput_ops']:,.0f} ops/s, "
                        f"p99 {r['latency_us']['p99']:,.0f} us{note}")
        med = {name: {k: statistics.median(v) for k, v in c.items()} for name, c in cells.items()}
        result = {"bench": "replication", "connections": a.connections, "requests": a.requests,
                  "runs": a.runs, "value_size": a.value_size, "systems": med}
        failover_times = None
        if "failover" not in skip:
            log(f"failover: {a.kills} kills of shard 1's leader under load")
            failover_times = failover(groups[0], url_repl, a.kills, a.connections, work)
            result["failover_ms"] = {
                "median": statistics.median(failover_times) * 1000,
                "max": max(failover_times) * 1000,
                "all": [round(t * 1000) for t in failover_times],
            }
        for p in STARTED:
            p.stop()
        if "catchup" not in skip:
            result["catch_up"] = catch_up(work, a.catchup_mib, a.connections)
        rep, single = med["replicated"], med["single"]
        ratios = {
            "replicated_set_over_single": rep["set_ops"] / single["set_ops"],
            "replicated_get_over_single": rep["get_ops"] / single["get_ops"],
        }
        if "etcd" in med:
            ratios["replicated_set_over_etcd"] = rep["set_ops"] / med["etcd"]["set_ops"]
            ratios["replicated_get_over_etcd"] = rep["get_ops"] / med["etcd"]["get_ops"]
        result["ratios"] = ratios
        targets = {"set_over_etcd_min": 4.0, "set_over_single_min": 0.5,
                   "get_over_single_min": 0.8, "failover_median_ms_max": 1000,
                   "failover_max_ms_max": 2000, "catch_up_mib_per_s_min": 100}
        met = {
            "set_over_etcd": ratios.get("replicated_set_over_etcd", 0) >= 4.0 if "etcd" in med else None,
            "set_over_single": ratios["replicated_set_over_single"] >= 0.5,
            "get_over_single": ratios["replicated_get_over_single"] >= 0.8,
        }
        if failover_times:
            met["failover_median"] = result["failover_ms"]["median"] <= 1000
            met["failover_max"] = result["failover_ms"]["max"] <= 2000
        if "catch_up" in result and result["catch_up"]["mib_per_s"] is not None:
            met["catch_up"] = result["catch_up"]["mib_per_s"] >= 100
        result["targets"], result["met"] = targets, met
        print(f"\n{'system':<12}{'SET ops/s':>12}{'SET p99 us':>12}{'GET ops/s':>12}{'GET p99 us':>12}"
              f"{'SET CPU us (servers + coord)':>32}")
        for name, m in med.items():
            print(f"{name:<12}{m['set_ops']:>12,.0f}{m['set_p99_us']:>12,.0f}{m['get_ops']:>12,.0f}{m['get_p99_us']:>12,.0f}"
                  f"{m['set_server_cpu_us']:>22,.0f} + {m['set_coordinator_cpu_us']:>7,.0f}")
        for k, v in ratios.items():
            print(f"{k:<34}{v:>8.2f}")
        if failover_times:
            f = result["failover_ms"]
            print(f"failover (kill -9 of the leader to writes again): median {f['median']:.0f} ms, max {f['max']:.0f} ms")
        if "catch_up" in result:
            c = result["catch_up"]
            print(f"catch-up of a wiped replica ({c['loaded_mib']:.0f} MiB loaded): {c['snapshot_mib']:.0f} MiB snapshot, "
                  f"restarted to caught up in {c['seconds']:.1f} s = {c['mib_per_s']:.0f} MiB/s")
        print(json.dumps(result, separators=(",", ":")))
    finally:
        for p in STARTED:
            p.kill9()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
