#!/usr/bin/env python3
"""The body of bench/rebalance.sh (see its header for what it measures).

Runs real processes only: `limedb` (release build, path in $LIMEDB), Debian's `redis-server`
and `redis-cli`, and `limedb bench` as the load generator. Progress goes to stderr; stdout gets
a table and, as its very last line, one line of JSON.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replication as common  # noqa: E402  (process helpers shared with bench/replication.sh)

LIMEDB = os.environ["LIMEDB"]
MIB = 1 << 20


def log(msg):
    print(f"[rebalance.sh] {msg}", file=sys.stderr, flush=True)


class MetaGroup(common.Group):
    """The cluster-map group (`limedb meta`)."""

    def spawn(self, r):
        args = [LIMEDB, "--worker-threads", "1", "meta", "--replica", str(r), "--peers",
                self.peers, "--port", str(self.ports[r]), "--internal-port", "0",
                "--data-dir", self.data(r)]
        self.procs[r] = common.Proc(f"meta-replica{r}", args, self.work)
        self.procs[r].ready()


def key(i):
    return b"key:%012d" % i


def value(i, size):
    # Distinct per key, alphanumeric, the same in every run.
    seed = (b"%016x" % ((i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)) * (size // 16 + 1)
    return seed[:size]


def set_command(i, size):
    k, v = key(i), value(i, size)
    return b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v)


def pipe(port, path):
    """Sends the commands in `path` with `redis-cli --pipe`; fails unless every one succeeded."""
    with open(path, "rb") as f:
        out = subprocess.run(["redis-cli", "-p", str(port), "--pipe", "--pipe-timeout", "120"],
                             stdin=f, capture_output=True, text=True)
    if out.returncode != 0 or "errors: 0," not in out.stdout:
        raise SystemExit(f"loading through port {port} failed: {out.stdout[-1000:]} {out.stderr[-1000:]}")


def write_commands(path, indices, size):
    with open(path, "wb") as f:
        buf = []
        for i in indices:
            buf.append(set_command(i, size))
            if len(buf) >= 10000:
                f.write(b"".join(buf))
                buf = []
        f.write(b"".join(buf))


# Redis Cluster's key slot: CRC16 (XMODEM) of the key modulo 16384 (no hash tags in our keys).
CRC_TABLE = []
for _byte in range(256):
    _crc = _byte << 8
    for _ in range(8):
        _crc = ((_crc << 1) ^ 0x1021) if _crc & 0x8000 else (_crc << 1)
    CRC_TABLE.append(_crc & 0xFFFF)


def key_slot(k):
    crc = 0
    for b in k:
        crc = ((crc << 8) & 0xFFFF) ^ CRC_TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc % 16384


def get_json(url, timeout=5.0):
    status, body = common.http("GET", url, timeout=timeout)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def keys_held(group):
    leader = group.leader()
    doc = get_json(group.url(leader) + "/api/v1/keys?page=1&pageSize=1", timeout=60)
    if not doc or "total" not in doc:
        raise SystemExit(f"shard {group.shard} did not report its keys")
    return doc["total"]


def add_shard_and_wait(url, group):
    """Adds `group` through the coordinator at `url` and waits for the move to finish; the
    driver's last report and the seconds from the request to the end of the move."""
    body = {"shardId": group.shard, "replicas": {str(r): group.url(r) for r in group.ports}}
    started = time.time()
    status, answer = common.http("POST", url + "/api/v1/admin/shards", body, timeout=30)
    if status != 202:
        raise SystemExit(f"adding shard {group.shard} failed: {status} {answer[:500]!r}")

    def finished():
        doc = get_json(url + "/api/v1/admin/moves")
        return doc if doc is not None and doc.get("moving") is None else None

    moves = common.wait_until("the move to finish", finished, timeout=3600, pause=0.02)
    return moves, time.time() - started


def keys_moved(groups, a):
    """The keys the new shard (the last group) holds, after checking that each key is stored
    once: the sources deleted what they gave away."""
    held = [keys_held(g) for g in groups]
    if sum(held) != a.keys:
        raise SystemExit(f"after the move the shards hold {held} keys, {sum(held)} in all, "
                         f"not the {a.keys} loaded")
    return held[-1]


def bench_args(url, n, a):
    return [LIMEDB, "bench", "--url", url, "-c", str(a.connections), "-n", str(n),
            "-w", "mixed:50", "--keyspace", str(a.keys), "--value-size", str(a.value_size),
            "--no-prefill", "--timeout-ms", "10000", "--json"]


def limedb_run(work, a, commands_path, run):
    log(f"run {run}: limedb: map group of 3, 4 shard groups of {a.replicas}, a coordinator")
    # Fresh data directories for every run.
    work = os.path.join(work, f"limedb-run{run}")
    os.makedirs(work)
    meta = MetaGroup(work, 0, 3)
    groups = [common.Group(work, s, a.replicas) for s in (1, 2, 3, 4)]
    for g in groups:
        g.leader()
    meta.leader()
    http_port, resp_port = common.free_port(), common.free_port()
    meta_urls = ",".join(meta.url(r) for r in meta.ports)
    shards = ",".join(f"{g.shard}={g.url(1)}" for g in groups[:3])
    coord = common.Proc(f"coordinator-{run}", [LIMEDB, "coordinator", "--port", str(http_port),
                                               "--resp-port", str(resp_port), "--meta", meta_urls,
                                               "--shards", shards], work)
    coord.ready()
    url = f"http://127.0.0.1:{http_port}"
    common.wait_until("the coordinator to reach every shard",
                      lambda: (common.health(url) or {}).get("healthyShards") == 3)

    log(f"run {run}: limedb: loading {a.keys:,} keys through the coordinator's RESP port")
    started = time.time()
    pipe(resp_port, commands_path)
    load_secs = time.time() - started
    held = sum(keys_held(g) for g in groups[:3])
    if held != a.keys:
        raise SystemExit(f"the shards hold {held} keys, not the {a.keys} loaded")
    log(f"run {run}: limedb: loaded in {load_secs:.1f} s")

    before = common.bench(url, "mixed:50", a.before_requests, a.connections, a.keys,
                          a.value_size, prefill=False, extra=["--timeout-ms", "10000"])
    log(f"run {run}: limedb: before the move {before['throughput_ops']:,.0f} ops/s, "
        f"p99 {before['latency_us']['p99']:,.0f} us, errors {before['errors']}")

    out_path = os.path.join(work, f"during-{run}.json")
    if a.no_load:
        return move_without_load(url, groups, a, run, load_secs, before)
    with open(out_path, "w") as out, open(os.path.join(work, f"during-{run}.err"), "w") as err:
        load = subprocess.Popen(bench_args(url, 10**10, a), stdout=out, stderr=err,
                                start_new_session=True)
    # The load runs before the move starts: wait until it has made 10,000 requests.
    def http_requests():
        status, body = common.http("GET", url + "/metrics")
        if status != 200:
            return 0
        return sum(float(l.rsplit(" ", 1)[1]) for l in body.decode().splitlines()
                   if l.startswith('limedb_requests_total{api="http"'))

    baseline = http_requests()
    common.wait_until("the load to start", lambda: http_requests() >= baseline + 10_000,
                      timeout=60, pause=0.05)
    try:
        moves, move_secs = add_shard_and_wait(url, groups[3])
    except SystemExit:
        load.kill()
        raise
    load.send_signal(signal.SIGTERM)
    if load.wait(timeout=60) != 0:
        raise SystemExit(f"the load failed during the move; see {work}/during-{run}.err")
    with open(out_path) as f:
        during = json.loads(f.read().strip().splitlines()[-1])
    moved = keys_moved(groups, a)
    driver = moves.get("driver") or {}
    result = {
        "load_secs": load_secs,
        "keys_moved": moved,
        "move_secs": move_secs,
        "keys_per_sec": moved / move_secs,
        "mib_per_sec": moved * (len(key(0)) + a.value_size) / MIB / move_secs,
        "longest_cut_over_ms": driver.get("longestCutOverMs"),
        "copies_restarted": driver.get("copiesRestarted"),
        "before_ops": before["throughput_ops"],
        "before_p99_us": before["latency_us"]["p99"],
        "during_ops": during["throughput_ops"],
        "during_p99_us": during["latency_us"]["p99"],
        "during_errors": during["errors"],
        "during_requests": during["requests"],
    }
    log(f"run {run}: limedb: {moved:,} keys moved in {move_secs:.1f} s "
        f"({result['keys_per_sec']:,.0f} keys/s), longest cut-over {result['longest_cut_over_ms']} ms; "
        f"during: {during['throughput_ops']:,.0f} ops/s, p99 {during['latency_us']['p99']:,.0f} us, "
        f"errors {during['errors']} of {during['requests']:,}")
    for p in list(common.STARTED):
        p.kill9()
    common.STARTED.clear()
    return result


def move_without_load(url, groups, a, run, load_secs, before):
    """The move alone (`--no-load`): how fast keys move when clients leave the machine to it."""
    moves, move_secs = add_shard_and_wait(url, groups[3])
    moved = keys_moved(groups, a)
    log(f"run {run}: limedb (no load): {moved:,} keys moved in {move_secs:.1f} s "
        f"({moved / move_secs:,.0f} keys/s)")
    for p in list(common.STARTED):
        p.kill9()
    common.STARTED.clear()
    return {"load_secs": load_secs, "keys_moved": moved, "move_secs": move_secs,
            "keys_per_sec": moved / move_secs,
            "mib_per_sec": moved * (len(key(0)) + a.value_size) / MIB / move_secs,
            "longest_cut_over_ms": (moves.get("driver") or {}).get("longestCutOverMs"),
            "before_ops": before["throughput_ops"], "before_p99_us": before["latency_us"]["p99"],
            "during_ops": 0, "during_p99_us": 0, "during_errors": 0, "during_requests": 0}


def redis_cli(*args, timeout=600):
    out = subprocess.run(["redis-cli", *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"redis-cli {' '.join(args)} failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    return out.stdout


def cluster_port():
    """A free port whose cluster bus port (+10000) is free too (so below 55536)."""
    while True:
        port = random.randrange(20000, 50000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


def redis_run(work, a, slot_files, run):
    log(f"run {run}: redis: 4 cluster-enabled redis-server, 3 masters")
    ports = [cluster_port() for _ in range(4)]
    for i, port in enumerate(ports):
        d = os.path.join(work, f"redis{run}-{i}")
        os.makedirs(d)
        common.Proc(f"redis{run}-{i}", ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                        "--dir", d, "--cluster-enabled", "yes",
                                        "--cluster-config-file", "nodes.conf",
                                        "--appendonly", "yes", "--appendfsync", "everysec",
                                        "--save", ""], work)
    for port in ports:
        common.wait_until(f"redis on {port}", lambda port=port: subprocess.run(
            ["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True).stdout.strip() == "PONG")
    redis_cli("--cluster", "create", *[f"127.0.0.1:{p}" for p in ports[:3]],
              "--cluster-replicas", "0", "--cluster-yes")

    def cluster_ok():
        out = subprocess.run(["redis-cli", "--cluster", "check", f"127.0.0.1:{ports[0]}"],
                             capture_output=True, text=True).stdout
        if "[OK] All 16384 slots covered." not in out or "[ERR]" in out:
            return False
        return all("cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(p), "CLUSTER", "INFO"], capture_output=True, text=True).stdout
            for p in ports[:3])

    common.wait_until("the Redis cluster to agree", cluster_ok, timeout=60, pause=0.2)
    # Which master serves which slot.
    owner = {}
    for line in redis_cli("-p", str(ports[0]), "CLUSTER", "NODES").splitlines():
        fields = line.split()
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for r in fields[8:]:
            lo, _, hi = r.partition("-")
            for s in range(int(lo), int(hi or lo) + 1):
                owner[s] = port
    log(f"run {run}: redis: loading {a.keys:,} keys, each to the master of its slot")
    started = time.time()
    by_port = {}
    for s, path in slot_files.items():
        by_port.setdefault(owner[s], []).append(path)
    for port, paths in by_port.items():
        merged = os.path.join(work, f"redis-load-{port}")
        with open(merged, "wb") as out:
            for p in paths:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out)
        pipe(port, merged)
        os.remove(merged)
    load_secs = time.time() - started
    total = sum(int(redis_cli("-p", str(p), "DBSIZE").strip()) for p in ports[:3])
    if total != a.keys:
        raise SystemExit(f"the Redis masters hold {total} keys, not {a.keys}")
    redis_cli("--cluster", "add-node", f"127.0.0.1:{ports[3]}", f"127.0.0.1:{ports[0]}")
    def joined():
        return all(len(subprocess.run(["redis-cli", "-p", str(p), "CLUSTER", "NODES"],
                                      capture_output=True, text=True).stdout.splitlines()) == 4
                   for p in ports) and cluster_ok() and "cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(ports[3]), "CLUSTER", "INFO"], capture_output=True,
            text=True).stdout

    common.wait_until("the new Redis master to join", joined, timeout=60, pause=0.2)
    log(f"run {run}: redis: rebalancing onto the new master")
    started = time.time()
    redis_cli("--cluster", "rebalance", f"127.0.0.1:{ports[0]}", "--cluster-use-empty-masters",
              timeout=7200)
    secs = time.time() - started
    moved = int(redis_cli("-p", str(ports[3]), "DBSIZE").strip())
    log(f"run {run}: redis: {moved:,} keys moved in {secs:.1f} s ({moved / secs:,.0f} keys/s)")
    for p in list(common.STARTED):
        p.kill9()
    common.STARTED.clear()
    return {"load_secs": load_secs, "keys_moved": moved, "move_secs": secs,
            "keys_per_sec": moved / secs,
            "mib_per_sec": moved * (len(key(0)) + a.value_size) / MIB / secs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=2_000_000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--before-requests", type=int, default=200_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--skip", default="", help="comma list of: redis")
    ap.add_argument("--no-load", action="store_true",
                    help="move without client load (the figures during the move are then 0)")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    work = tempfile.mkdtemp(prefix="limedb-rebalance-bench.")
    try:
        log(f"writing {a.keys:,} SET commands")
        commands = os.path.join(work, "load.resp")
        write_commands(commands, range(a.keys), a.value_size)
        slot_files = {}
        if "redis" not in skip:
            log("grouping them by Redis Cluster slot")
            per_slot = {}
            for i in range(a.keys):
                per_slot.setdefault(key_slot(key(i)), []).append(i)
            slot_dir = os.path.join(work, "slots")
            os.makedirs(slot_dir)
            for s, indices in per_slot.items():
                path = os.path.join(slot_dir, str(s))
                write_commands(path, indices, a.value_size)
                slot_files[s] = path
        runs = {"limedb": [], "redis": []}
        for run in range(1, a.runs + 1):
            runs["limedb"].append(limedb_run(work, a, commands, run))
            if "redis" not in skip:
                runs["redis"].append(redis_run(work, a, slot_files, run))
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]
                      if all(isinstance(r[k], (int, float)) for r in rs)}
               for name, rs in runs.items() if rs}
        lime = med["limedb"]
        ratios, met = {}, {
            "cut_over_at_most_100_ms": max((r["longest_cut_over_ms"] or 0) for r in runs["limedb"]) <= 100,
        }
        if not a.no_load:
            ratios["during_p99_over_before"] = lime["during_p99_us"] / lime["before_p99_us"]
            ratios["during_ops_over_before"] = lime["during_ops"] / lime["before_ops"]
            met["client_errors_zero"] = max(r["during_errors"] for r in runs["limedb"]) == 0
            met["p99_during_at_most_3x_before"] = ratios["during_p99_over_before"] <= 3.0
        if "redis" in med:
            ratios["keys_per_sec_over_redis"] = lime["keys_per_sec"] / med["redis"]["keys_per_sec"]
            met["keys_per_sec_at_least_10x_redis"] = ratios["keys_per_sec_over_redis"] >= 10.0
        result = {"bench": "rebalance", "keys": a.keys, "value_size": a.value_size,
                  "connections": a.connections, "replicas": a.replicas, "runs": a.runs,
                  "systems": med, "all_runs": runs, "ratios": ratios, "met": met}
        print(f"{'':<10}{'keys moved':>12}{'seconds':>10}{'keys/s':>12}{'MiB/s':>8}")
        for name, m in med.items():
            print(f"{name:<10}{m['keys_moved']:>12,.0f}{m['move_secs']:>10.1f}"
                  f"{m['keys_per_sec']:>12,.0f}{m['mib_per_sec']:>8.1f}")
        if not a.no_load:
            print(f"limedb client load (mixed 50/50, {a.connections} connections): before "
                  f"{lime['before_ops']:,.0f} ops/s p99 {lime['before_p99_us']:,.0f} us; during "
                  f"{lime['during_ops']:,.0f} ops/s p99 {lime['during_p99_us']:,.0f} us, "
                  f"{lime['during_errors']:.0f} errors")
        print(f"longest cut-over {lime.get('longest_cut_over_ms', 0):.0f} ms (median of the runs)")
        for k, v in ratios.items():
            print(f"{k:<34}{v:>8.2f}")
        for k, v in met.items():
            print(f"{k:<34}{'yes' if v else 'NO':>8}")
        print(json.dumps(result, separators=(",", ":")))
    finally:
        for p in common.STARTED:
            p.kill9()
        if os.environ.get("BENCH_KEEP_WORK"):
            log(f"logs and data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
