#!/usr/bin/env python3
"""The driver of parlor's benchmark; `make bench` runs it.

It starts a redis-server of its own, then for each server under test (parlor,
Socket.IO with the Pub/Sub adapter, Socket.IO with the Streams adapter) two
instances over that Redis, runs examples/bench.rs against them scenario by
scenario; then it starts Redis Clusters of one and three shards (a replica per
master) and runs parlor on them, with and without WAIT for the replica,
counting which master serves each room's shard channel; and it runs parlor
on its memory store, one instance, against the floor (bench/floor.rs: a
plain epoll server that only writes each delivery), the two taking turns at
each fixed rate; last, a reconnect storm (bench/storm.py, examples/storm.rs)
against parlor and Socket.IO with the Streams adapter, each on a fresh
Redis. It writes
BENCHMARKS.md and bench-latency.svg from the JSON lines the bench prints: into
docs/ for a full run, into target/bench/ for a quick one (three shards only),
so that a development run does not replace the published numbers. Every
process it starts is stopped on the way out, whether the run succeeds, fails
or is interrupted.

    python3 bench/run.py [--quick]

BENCH_REDIS_PORT (6400), BENCH_PORT (19000, the first of the 22 ports the
servers take) and BENCH_CLUSTER_PORT (6410, the first of the 6 cluster nodes'
ports, and of their bus ports 10000 above) choose the ports. Logs and the raw
results (results.jsonl) go to target/bench/. Python 3 standard library only.
"""

import argparse
import datetime
import html
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import storm

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench"
PARLOR = "./target/release/parlor"
# Threads of each parlor instance: two instances share the two cores, as
# Socket.IO's two single-threaded Node processes do, and README's advice
# for several instances on one machine says (a share of the cores each).
PARLOR_THREADS = 1
BENCH = "./target/release/examples/bench"
FLOOR = "./target/release/examples/floor"
SOCKETIO = "bench/socketio"

# The full run takes about 13 minutes on 2 cores (the Redis Clusters about 3
# of them, the floor's comparison about 3); the quick one goes through every
# step in 3 to 4 minutes. Where other work keeps
# the machine busy, runs are retried until `patience_minutes` have passed.
SIZES = {
    "full": {
        "idle": 19000,
        "rooms": 50,
        "subscribers": 40,
        "publishers": 10,
        "saturation_seconds": 10,
        "rate_seconds": 15,
        "rates": [10000, 20000, 40000, 80000],
        "warmup_seconds": 3,
        "ingest_seconds": 10,
        "ceiling_requests": 500000,
        "replays": 50,
        "cluster_shards": [1, 3],
        "cluster_rate": 20000,
        # parlor on its memory store against the floor, one instance each.
        "floor": {"rooms": 10, "subscribers": 100, "publishers": 10, "rates": [10000, 20000, 40000, 80000]},
        "patience_minutes": 18,
    },
    "quick": {
        "idle": 2000,
        "rooms": 10,
        "subscribers": 20,
        "publishers": 4,
        "saturation_seconds": 3,
        "rate_seconds": 3,
        "rates": [10000, 40000],
        "warmup_seconds": 1,
        "ingest_seconds": 3,
        "ceiling_requests": 100000,
        "replays": 10,
        "cluster_shards": [3],
        "cluster_rate": 10000,
        "floor": {"rooms": 5, "subscribers": 40, "publishers": 4, "rates": [10000, 40000]},
        "patience_minutes": 5,
    },
}
# The fixed rate at which parlor's CPU and latency targets are stated.
# The targets of the table: parlor's CPU per delivery at a fixed rate and at
# its maximum, its p99, and its Redis CPU per message, each against
# Socket.IO's; ingest against redis-benchmark's ceiling.
SOCKETIO_CPU_TARGET = 0.6
SATURATION_TARGET = 0.35
P99_TARGET = 0.5
REDIS_TARGET = 1.5
INGEST_TARGET = 0.6
# Idle connections go to 127.0.0.1 .. 127.0.0.SPREAD (see --spread in bench.rs).
SPREAD = 8
WINDOW = 64
MISSED = 1000

SERVERS = [
    {"key": "parlor", "name": "parlor", "target": "parlor"},
    {"key": "pubsub", "name": "Socket.IO, Pub/Sub adapter", "target": "socketio", "adapter": "pubsub"},
    {"key": "streams", "name": "Socket.IO, Streams adapter", "target": "socketio", "adapter": "streams"},
]
COLORS = {"parlor": "#1b7837", "pubsub": "#c2185b", "streams": "#1f5fa8"}
# The comparison with the floor: parlor without --redis (its embedded memory
# store) and bench/floor.rs, one instance each, on ports BENCH_PORT + 18 and
# + 19. Both speak parlor's protocol, so the bench drives both as parlor.
FLOOR_SERVERS = [
    {"key": "memory", "name": "parlor, memory store", "target": "parlor", "pid_name": "$MEMORY_PID"},
    {"key": "floor", "name": "the floor", "target": "parlor", "pid_name": "$FLOOR_PID"},
]
# Most parlor's CPU per 1,000 deliveries may be, as a multiple of the floor's.
FLOOR_TARGET = 1.25
# parlor on Redis Clusters started by the run, one replica per master: each
# configuration runs on the cluster of its number of shards, with
# --redis-replicas as given (1, the default, WAITs for the replica).
CLUSTERS = [
    {"key": "cluster1", "name": "parlor, 1 shard", "column": "1 shard",
     "target": "parlor", "shards": 1, "replicas": 1},
    {"key": "cluster3", "name": "parlor, 3 shards", "column": "3 shards",
     "target": "parlor", "shards": 3, "replicas": 1},
    {"key": "cluster3-r0", "name": "parlor, 3 shards, --redis-replicas 0", "column": "3 shards, `--redis-replicas 0`",
     "target": "parlor", "shards": 3, "replicas": 0},
]

# The shape of parlor's store step (src/lua/append.lua) for redis-benchmark:
# read the epoch, look the ref up in the room's refs hash, take the next id,
# append to the stream with MAXLEN, remember the ref (hash field and order
# entry), publish the frame, and at every 16th id forget the refs older than
# five minutes by Redis's clock. One room, since redis-benchmark cannot give
# the meta and stream keys the same random number; fresh refs.
CEILING_SCRIPT = """\
local epoch = redis.call('HGET', KEYS[1], 'epoch') or 'e0000000'
if redis.call('HGET', KEYS[3], ARGV[8]) then return 0 end
local id = redis.call('HINCRBY', KEYS[1], 'head', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], id .. '-0', 'user', ARGV[1], 'ts', ARGV[3], 'n', ARGV[9], 'text', ARGV[2])
redis.call('HSET', KEYS[3], ARGV[8], id .. ' ' .. ARGV[3])
redis.call('XADD', KEYS[4], '*', 'f', ARGV[8])
redis.call('PUBLISH', ARGV[5], epoch .. ' ' .. id .. ' ' .. ARGV[9] .. ' ' .. ARGV[6] .. id .. ARGV[7])
if id % 16 == 0 then
  local clock = redis.call('TIME')
  local cutoff = clock[1] * 1000 + math.floor(clock[2] / 1000) - 300000
  local old = redis.call('XRANGE', KEYS[4], '-', string.format('%d', cutoff), 'COUNT', 1000)
  if #old > 0 then
    local fields = {}
    for i, entry in ipairs(old) do fields[i] = entry[2][2] end
    redis.call('HDEL', KEYS[3], unpack(fields))
    redis.call('XTRIM', KEYS[4], 'MINID', string.format('%d', cutoff + 1))
  end
end
return id
"""
CEILING_KEYS = ["bench:meta", "bench:stream", "bench:refs", "bench:ref-order"]
# A message as big as the bench's: its text is a send time in microseconds;
# then its ref's field and its nonce.
CEILING_ARGS = [
    "pub0", "1234567890123456", "1795000000000", "10000", "parlor:bench",
    '{"type":"message","room":"bench-ingest-0","id":',
    ',"user":"pub0","text":"1234567890123456","ts":1795000000000}',
    "4:pub0:__rand_int__", "1234567890",
]


class BenchError(Exception):
    pass


class Run:
    """The processes one benchmark run started, and the commands it ran."""

    def __init__(self, redis_port, patience):
        self.redis_port = redis_port
        # Until when it waits for a quiet machine and runs disturbed runs
        # again; past it, the run goes on as it can, to end in bounded time.
        self.patient_until = time.monotonic() + patience
        self.processes = []
        self.commands = []
        # Process ids are shown by name in the commands, so that they read as
        # something one can run again.
        self.pid_names = {}
        self.failures = []
        self.reports = []

    def own_ticks(self):
        """Clock ticks used by the processes this run started, the finished
        bench runs included."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        running = sum(cpu_ticks(process.pid) for process in self.processes if process.poll() is None)
        return running + (children.ru_utime + children.ru_stime) * 100

    def settle(self, seconds=60):
        """Waits, up to `seconds`, for the machine to fall quiet: the servers
        done with the previous run's disconnects, and nothing else busy, such
        as a build, which would distort the next run's figures."""
        deadline = min(time.monotonic() + seconds, self.patient_until)
        while time.monotonic() < deadline:
            before = busy_ticks()
            time.sleep(1)
            if busy_ticks() - before <= 20:
                return

    def note(self, argv, env=None):
        words = [f"{k}={v}" for k, v in (env or {}).items()]
        words += [self.pid_names.get(word, word) for word in map(str, argv)]
        self.commands.append(
            " ".join(word if re.fullmatch(r"\$[A-Z][A-Z_0-9]*", word) else shlex.quote(word) for word in words)
        )

    def start(self, name, argv, env=None):
        (OUT / "logs").mkdir(parents=True, exist_ok=True)
        env = {k: str(v) for k, v in (env or {}).items()}
        self.note(argv, env)
        with open(OUT / "logs" / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                list(map(str, argv)),
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                # Outside the terminal's process group, so that Ctrl-C reaches
                # the driver alone, which then stops everything in order.
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop(self, process):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.remove(process)

    def stop_all(self):
        self.stop_since(set())

    def stop_since(self, before):
        """Stops every process started since `before` (a set of them), newest first."""
        for process in reversed(self.processes[:]):
            if process not in before:
                self.stop(process)

    def redis_cli(self, *words):
        return subprocess.run(
            ["redis-cli", "-p", str(self.redis_port), *words],
            capture_output=True, text=True, check=True,
        ).stdout.strip()

    def start_redis(self):
        (OUT / "redis").mkdir(parents=True, exist_ok=True)
        redis = self.start("redis", [
            "redis-server", "--port", self.redis_port, "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", "target/bench/redis",
        ])
        self.pid_names[str(redis.pid)] = "$REDIS_PID"

        def answers():
            try:
                return self.redis_cli("ping") == "PONG"
            except subprocess.CalledProcessError:
                return False

        wait_until(answers, redis, "redis")
        return redis

    def start_pair(self, server, ports, redis_url=None, flags=()):
        """Two instances of `server` over the bench's Redis (or `redis_url`,
        with parlor's extra `flags`), ready to serve."""
        redis_url = redis_url or f"redis://127.0.0.1:{self.redis_port}"
        pair = []
        for label, port in zip("AB", ports):
            name = f"{server['key']}-{label}-{port}"
            if server["target"] == "parlor":
                process = self.start(name, [
                    PARLOR, "--port", port, "--redis", redis_url, "--threads", PARLOR_THREADS,
                    "--rate", 1000000, "--burst", 1000000, "--max-connections", 30000, *flags,
                ])
                probe = f"http://127.0.0.1:{port}/readyz"
            else:
                env = {"PORT": port, "REDIS_URL": redis_url, "ADAPTER": server["adapter"]}
                process = self.start(name, ["node", f"{SOCKETIO}/server.js"], env)
                probe = f"http://127.0.0.1:{port}/healthz"
            self.pid_names[str(process.pid)] = f"${label}_PID"
            wait_until(lambda: http_ok(probe), process, name)
            pair.append((process, port))
        return pair

    def start_single(self, server, port):
        """One instance of a FLOOR_SERVERS entry, ready to serve: parlor on
        its memory store, or the floor (which has no HTTP, so a connection
        accepted says it is ready)."""
        name = f"{server['key']}-{port}"
        if server["key"] == "floor":
            process = self.start(name, [FLOOR, "--port", port])
            wait_until(lambda: tcp_ok(port), process, name)
        else:
            process = self.start(name, [
                PARLOR, "--port", port, "--threads", PARLOR_THREADS,
                "--rate", 1000000, "--burst", 1000000, "--max-connections", 30000,
            ])
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), process, name)
        self.pid_names[str(process.pid)] = server["pid_name"]
        return process, port

    def bench(self, server, instances, redis, scenario, options, spread=1, timeout=300, tries=2):
        """Runs examples/bench.rs against `instances` (with the CPU of
        `redis`, one redis-server or a list of them, summed) once the machine is
        quiet, and again (up to `tries` in all) while other work on the
        machine disturbs the run; returns the JSON report of the least
        disturbed try, which has an `error` when the run failed."""
        argv = [BENCH, "--target", server["target"]]
        if spread > 1:
            argv += ["--spread", spread]
        for process, port in instances:
            argv += ["--url", f"ws://127.0.0.1:{port}", "--server-pid", process.pid]
        # No Redis at all for the floor's comparison: an empty list.
        for node in redis if isinstance(redis, list) else [redis]:
            argv += ["--redis-pid", node.pid]
        argv += [scenario, *options]
        self.note(argv)
        done = []
        while len(done) < tries:
            self.settle()
            report = self.bench_once(argv, timeout)
            report["server"] = server["key"]
            done.append(report)
            if "error" in report or not report["disturbed"] or time.monotonic() > self.patient_until:
                break
            print(f"bench: other processes used {report['other_cpu_s']:.1f} s of CPU meanwhile",
                  file=sys.stderr, flush=True)
        report = min(done, key=lambda r: r["other_cpu_s"] / r["wall_s"])
        for other in done:
            other["kept"] = other is report
        self.reports += done
        if "error" in report:
            self.failures.append(f"{server['name']}, {scenario}: {report['error']}")
        return report

    def bench_once(self, argv, timeout):
        busy, ours, started = busy_ticks(), self.own_ticks(), time.monotonic()
        try:
            done = subprocess.run(
                list(map(str, argv)), cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout
            )
            lines = done.stdout.strip().splitlines()
            report = json.loads(lines[-1]) if lines else {"error": f"exit code {done.returncode}, no report"}
        except subprocess.TimeoutExpired:
            report = {"error": f"no report within {timeout} s"}
        except json.JSONDecodeError:
            report = {"error": f"exit code {done.returncode}, unreadable report"}
        report["wall_s"] = time.monotonic() - started
        # What the rest of the machine used meanwhile; more than a tenth of a
        # core on average means something else competed for the cores.
        report["other_cpu_s"] = max(0, (busy_ticks() - busy) - (self.own_ticks() - ours)) / 100
        report["disturbed"] = report["other_cpu_s"] > 0.1 * report["wall_s"]
        return report

    def failed(self, what, error, keep=None):
        """Records a failed step; with `keep`, stops every process of the run
        but those, so that the next step starts clean."""
        self.failures.append(f"{what}: {error}")
        print(f"bench: {what}: {error}", file=sys.stderr)
        if keep is not None:
            for process in self.processes[:]:
                if process not in keep:
                    self.stop(process)

    def fanout(self, server, pair, redis, sizes, seconds, rate, tries):
        """A fanout run at the sizes of this run: `rate` deliveries/s (0 for
        maximum) for `seconds`."""
        options = [
            "--rooms", sizes["rooms"], "--subscribers", sizes["subscribers"],
            "--publishers", sizes["publishers"], "--seconds", seconds, "--rate", rate, "--window", WINDOW,
        ]
        return self.bench(server, pair, redis, "fanout", options, timeout=seconds + 300, tries=tries)

    def ceiling(self, requests):
        """redis-benchmark's rate for parlor's script shape on the same Redis."""
        self.settle()
        sha = self.redis_cli("script", "load", CEILING_SCRIPT)
        self.commands.append(
            f"redis-cli -p {self.redis_port} script load \"$CEILING_SCRIPT\"   # the script below; prints $SHA"
        )
        argv = [
            "redis-benchmark", "-p", self.redis_port, "-n", requests, "-c", 50, "-P", 16,
            "-r", 1000000000, "--csv", "EVALSHA", sha, len(CEILING_KEYS),
            *CEILING_KEYS, *CEILING_ARGS,
        ]
        self.note([word if word != sha else "$SHA" for word in argv])
        done = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=600)
        # The last line is the result; its first quoted field (the command)
        # holds quotes of its own, so take the numbers from the end.
        numbers = re.findall(r'"([0-9.]+)"', done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "")
        if done.returncode != 0 or len(numbers) < 7:
            self.failures.append(f"redis-benchmark: {done.stderr.strip() or done.stdout.strip()}")
            return {"error": "redis-benchmark failed"}
        report = {"scenario": "ceiling", "requests": requests, "rate": float(numbers[-7])}
        self.reports.append(report)
        return report

    def start_cluster(self, shards, first_port):
        """A Redis Cluster of `shards` masters with one replica each, on
        ports from `first_port`, its nodes children of this run; returns it
        once every node agrees the cluster is ok and every replica is in sync."""
        ports = [first_port + i for i in range(2 * shards)]
        directory = OUT / f"cluster-{shards}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        nodes = []
        for port in ports:
            # redis-server changes into --dir first, so the node's cluster
            # file lands there.
            node = self.start(f"cluster-{shards}-{port}", [
                "redis-server", "--port", port, "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", 5000,
                "--save", "", "--appendonly", "no", "--dir", directory.relative_to(ROOT), "--daemonize", "no",
            ])
            self.pid_names[str(node.pid)] = f"$REDIS_{port}_PID"
            nodes.append(node)
        for port, node in zip(ports, nodes):
            wait_until(lambda port=port: cli_answer(port, "ping") == "PONG", node, f"cluster-{shards}-{port}")

        if shards >= 3:
            argv = ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{port}" for port in ports],
                    "--cluster-replicas", 1, "--cluster-yes"]
            self.note(argv)
            done = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=120)
            (OUT / "logs" / f"cluster-{shards}-create.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                raise BenchError(f"redis-cli --cluster create failed; see target/bench/logs/cluster-{shards}-create.log")
        else:
            # `redis-cli --cluster create` wants three masters at least: one
            # shard is put together by hand.
            master, replicas = ports[0], ports[1:]
            for words in [(master, "cluster", "addslotsrange", 0, 16383)] + [
                (replica, "cluster", "meet", "127.0.0.1", master) for replica in replicas
            ]:
                self.note(["redis-cli", "-p", *words])
                cli(*words)
            master_id = cli(master, "cluster", "myid")
            for replica, node in zip(replicas, nodes[1:]):
                wait_until(lambda replica=replica: master_id in cli_answer(replica, "cluster", "nodes"), node,
                           f"cluster-{shards}-{replica}")
                self.commands.append(
                    f"redis-cli -p {replica} cluster replicate $(redis-cli -p {master} cluster myid)"
                )
                cli(replica, "cluster", "replicate", master_id)
        self.commands.append(
            "# then wait until every node's CLUSTER INFO says cluster_state:ok and every replica's "
            "INFO replication says master_link_status:up"
        )

        def ready():
            for port in ports:
                info = cli_answer(port, "cluster", "info")
                wanted = ["cluster_state:ok", f"cluster_known_nodes:{len(ports)}", f"cluster_size:{shards}"]
                if not all(line in info.splitlines() for line in wanted):
                    return False
                replication = cli_answer(port, "info", "replication").splitlines()
                if "role:slave" in replication and "master_link_status:up" not in replication:
                    return False
            return True

        deadline = time.monotonic() + 60
        while not ready():
            for port, node in zip(ports, nodes):
                if node.poll() is not None:
                    raise BenchError(f"cluster node {port} exited with code {node.returncode}; "
                                     f"see target/bench/logs/cluster-{shards}-{port}.log")
            if time.monotonic() > deadline:
                raise BenchError(f"the {shards}-shard cluster was not ready after 60 s")
            time.sleep(0.2)
        masters, replica_of = cluster_nodes(cli(ports[0], "cluster", "nodes"))
        urls = ",".join(f"redis://127.0.0.1:{port}" for port in ports)
        # The commands show the seed URLs as $SEEDS.
        self.commands.append(f"SEEDS={urls}")
        self.pid_names[urls] = "$SEEDS"
        if len(masters) != shards or len(replica_of) != len(ports) - shards:
            raise BenchError(f"the {shards}-shard cluster has {len(masters)} masters and {len(replica_of)} replicas")
        return {
            "shards": shards, "ports": ports, "nodes": nodes, "masters": masters, "replica_of": replica_of,
            "urls": urls,
        }


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def tcp_ok(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_until(ready, process, name, seconds=30):
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None:
            raise BenchError(f"{name} exited with code {process.returncode}; see target/bench/logs/{name}.log")
        if time.monotonic() > deadline:
            raise BenchError(f"{name} was not ready after {seconds} s")
        time.sleep(0.1)


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def busy_ticks():
    """Clock ticks (1/100 s) the whole machine has been busy, all cores."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal


def cli(port, *words):
    """redis-cli's answer to one command on the node at `port`."""
    return subprocess.run(
        ["redis-cli", "-p", str(port), *map(str, words)],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.strip()


def cli_answer(port, *words):
    """As `cli`, but "" while the node does not answer."""
    try:
        return cli(port, *words)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return ""


def cluster_nodes(text):
    """From CLUSTER NODES: the masters' slot ranges by port, and each
    replica's master, both by port."""
    port_of, masters, master_id_of = {}, {}, {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags, master_id = fields[:4]
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        port_of[node_id] = port
        if "master" in flags.split(","):
            ranges = []
            for slots in fields[8:]:
                if not slots.startswith("["):  # a slot on its way in or out
                    low, _, high = slots.partition("-")
                    ranges.append((int(low), int(high or low)))
            masters[port] = ranges
        else:
            master_id_of[port] = master_id
    return masters, {port: port_of.get(master_id) for port, master_id in master_id_of.items()}


def crc16(data):
    """CRC-16/XMODEM, the hash of Redis Cluster's key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def key_slot(key):
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key.encode()) % 16384


class RedisError(Exception):
    pass


class RespLink:
    """A connection to one Redis node, for a few commands without a client
    process each."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("rb")

    def call(self, *words):
        words = [str(word).encode() for word in words]
        self.sock.sendall(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words))
        return self.reply()

    def reply(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise OSError("connection closed")
        kind, rest = line[:1], line[1:-2].decode()
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisError(rest)
        if kind == b":":
            return int(rest)
        if kind == b"$":
            return None if int(rest) < 0 else self.reader.read(int(rest) + 2)[:-2].decode()
        if kind == b"*":
            return None if int(rest) < 0 else [self.reply() for _ in range(int(rest))]
        raise OSError(f"unexpected reply {line!r}")

    def close(self):
        self.reader.close()
        self.sock.close()


class ShardWatch(threading.Thread):
    """Asks every node of a cluster, twice a second while a run goes on,
    which shard channels of parlor it serves (`PUBSUB SHARDCHANNELS`) and
    how many subscribers each has (`PUBSUB SHARDNUMSUB`); keeps the moment
    with the most channels, when every room of the run had its members."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.done = threading.Event()
        self.best, self.best_total, self.polls, self.error = None, -1, 0, None

    def run(self):
        links = {}
        try:
            links = {port: RespLink(port) for port in self.cluster["ports"]}
            while not self.done.is_set():
                channels = {port: link.call("PUBSUB", "SHARDCHANNELS", "parlor:*") for port, link in links.items()}
                self.polls += 1
                total = sum(map(len, channels.values()))
                if total > self.best_total:
                    best = {}
                    for port, names in channels.items():
                        counts = links[port].call("PUBSUB", "SHARDNUMSUB", *names) if names else []
                        best[port] = dict(zip(counts[::2], counts[1::2]))
                    self.best, self.best_total = best, total
                self.done.wait(0.5)
        except (OSError, RedisError, ValueError) as e:
            self.error = str(e) or type(e).__name__
        finally:
            for link in links.values():
                link.close()

    def stop(self):
        self.done.set()
        self.join(15)

    def summary(self):
        """Channels per node, and whether each is on one master only, the
        one that owns its slot."""
        if not self.best:
            return {"error": self.error or "no poll answered"}
        masters, nodes_of = self.cluster["masters"], {}
        nodes = []
        for port in self.cluster["ports"]:
            channels = self.best.get(port, {})
            for channel in channels:
                nodes_of.setdefault(channel, []).append(port)
            node = {"port": port, "role": "master" if port in masters else "replica", "channels": len(channels),
                    "subscribers": sorted(set(channels.values()))}
            if port in masters:
                node["slots"] = sum(high - low + 1 for low, high in masters[port])
            nodes.append(node)
        misplaced = sum(
            1 for channel, ports in nodes_of.items() for port in ports
            if not any(low <= key_slot(channel) <= high for low, high in masters.get(port, []))
        )
        return {
            "scenario": "shard-channels", "polls": self.polls, "channels": len(nodes_of),
            "on_several_nodes": sum(1 for ports in nodes_of.values() if len(ports) > 1),
            "not_on_slot_owner": misplaced, "nodes": nodes,
            **({"error": self.error} if self.error else {}),
        }


def run_server(run, server, sizes, ports, redis):
    """Every scenario against one server: idle on a fresh pair of instances,
    then fanout (and, for parlor, ingest and replay) on another fresh pair."""
    results = {"rates": {}}
    print(f"== {server['name']}", file=sys.stderr, flush=True)
    run.redis_cli("flushall")
    pair = run.start_pair(server, ports[:2])
    # Once only: a second try on the same instance would find memory the
    # first one freed.
    results["idle"] = run.bench(
        server, pair[:1], redis, "idle", ["--connections", sizes["idle"]], spread=SPREAD, timeout=900, tries=1
    )
    for process, _ in pair:
        run.stop(process)

    run.redis_cli("flushall")
    pair = run.start_pair(server, ports[2:])

    def fanout(seconds, rate, tries=2):
        return run.fanout(server, pair, redis, sizes, seconds, rate, tries)

    # A first run lets Node's JIT and every allocator warm up; it is not reported.
    fanout(sizes["warmup_seconds"], 10000, tries=1)["warmup"] = True
    results["saturation"] = fanout(sizes["saturation_seconds"], 0)
    for rate in sizes["rates"]:
        results["rates"][rate] = fanout(sizes["rate_seconds"], rate)
    if server["target"] == "parlor":
        results["ingest"] = run.bench(
            server, pair[:1], redis, "ingest",
            ["--seconds", sizes["ingest_seconds"], "--publishers", 8, "--rooms", 100, "--window", WINDOW],
        )
        results["ceiling"] = run.ceiling(sizes["ceiling_requests"])
        results["replay"] = run.bench(
            server, pair, redis, "replay", ["--missed", MISSED, "--repeats", sizes["replays"]]
        )
    for process, _ in pair:
        run.stop(process)
    return results


def run_clusters(run, sizes, base_port, cluster_port):
    """parlor on Redis Clusters of each shape in sizes["cluster_shards"]:
    per configuration of that shape (CLUSTERS), a fresh pair of instances
    for fanout at a fixed rate (while the shard channels are counted), at
    maximum rate, and ingest. Every node and instance is stopped after its
    shape, also when something fails."""
    results = {}
    for shards in sizes["cluster_shards"]:
        print(f"== parlor on a Redis Cluster of {shards} shard(s)", file=sys.stderr, flush=True)
        before = set(run.processes)
        try:
            cluster = run.start_cluster(shards, cluster_port)
            for index, config in enumerate(CLUSTERS):
                if config["shards"] != shards:
                    continue
                ports = [base_port + 12 + 2 * index + i for i in range(2)]
                try:
                    results[config["key"]] = run_cluster_config(run, config, sizes, cluster, ports)
                except BenchError as e:
                    run.failed(config["name"], e, keep=before | set(cluster["nodes"]))
        except BenchError as e:
            run.failed(f"parlor on {shards} shard(s)", e)
        finally:
            run.stop_since(before)
    return results


def run_cluster_config(run, config, sizes, cluster, ports):
    results = {"nodes": len(cluster["ports"])}
    for port in cluster["masters"]:
        cli(port, "flushall")
    pair = run.start_pair(config, ports, cluster["urls"], ["--redis-replicas", config["replicas"]])
    nodes = cluster["nodes"]

    def fanout(seconds, rate, tries=2):
        return run.fanout(config, pair, nodes, sizes, seconds, rate, tries)

    fanout(sizes["warmup_seconds"], 10000, tries=1)["warmup"] = True
    watch = ShardWatch(cluster)
    watch.start()
    try:
        results["rate"] = fanout(sizes["rate_seconds"], sizes["cluster_rate"])
    finally:
        watch.stop()
    results["shard_channels"] = {**watch.summary(), "server": config["key"]}
    run.reports.append(results["shard_channels"])
    sharded = results["shard_channels"]
    if "error" in sharded:
        run.failures.append(f"{config['name']}: shard channels not counted: {sharded['error']}")
    elif sharded["on_several_nodes"] or sharded["not_on_slot_owner"]:
        run.failures.append(f"{config['name']}: live channels not on their slot's master alone "
                            f"({sharded['on_several_nodes']} on several nodes, "
                            f"{sharded['not_on_slot_owner']} elsewhere)")
    results["saturation"] = fanout(sizes["saturation_seconds"], 0)
    results["ingest"] = run.bench(
        config, pair[:1], nodes, "ingest",
        ["--seconds", sizes["ingest_seconds"], "--publishers", 8, "--rooms", 100, "--window", WINDOW],
    )
    for process, _ in pair:
        run.stop(process)
    return results


def run_floor(run, sizes, first_port):
    """parlor on its memory store and the floor, one instance each, both
    started at once: a warm-up run of each, then at each fixed rate a run of
    one and then of the other, so that both meet the machine as it is then."""
    print("== parlor, memory store, against the floor", file=sys.stderr, flush=True)
    shape = sizes["floor"]
    results = {server["key"]: {"rates": {}} for server in FLOOR_SERVERS}
    instances = {}
    try:
        for offset, server in enumerate(FLOOR_SERVERS):
            instances[server["key"]] = [run.start_single(server, first_port + offset)]

        def fanout(server, seconds, rate, tries=2):
            return run.fanout(server, instances[server["key"]], [], shape, seconds, rate, tries)

        for server in FLOOR_SERVERS:
            fanout(server, sizes["warmup_seconds"], 10000, tries=1)["warmup"] = True
        for rate in shape["rates"]:
            for server in FLOOR_SERVERS:
                results[server["key"]]["rates"][rate] = fanout(server, sizes["rate_seconds"], rate)
    finally:
        for started in instances.values():
            for process, _ in started:
                run.stop(process)
    return results


def command_output(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def package_version(name):
    try:
        path = ROOT / SOCKETIO / "node_modules" / name / "package.json"
        return json.loads(path.read_text())["version"]
    except (OSError, KeyError, json.JSONDecodeError):
        return "unknown"


def machine():
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )
    memory = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    head = command_output("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = command_output("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", "src")
    return {
        "cores (nproc)": command_output("nproc"),
        "CPU": cpu,
        "memory": f"{memory / 1024 / 1024:.0f} GiB",
        "kernel": f"Linux {platform.release()}",
        "parlor": f"commit {head}" + (" with uncommitted changes in src/" if dirty else ""),
        "rustc": command_output("rustc", "--version"),
        "node": command_output("node", "--version"),
        "redis": command_output("redis-server", "--version").split(" sha=")[0],
        "socket.io": package_version("socket.io"),
        "@socket.io/redis-adapter": package_version("@socket.io/redis-adapter"),
        "@socket.io/redis-streams-adapter": package_version("@socket.io/redis-streams-adapter"),
        "redis (node client)": package_version("redis"),
        "open files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


# Figures from the reports; each is None where the run failed or has no such
# figure.

def good(report):
    return bool(report) and "error" not in report


def per_1k(report, field):
    """Milliseconds of CPU per 1,000 deliveries (= microseconds per delivery)."""
    if not good(report) or not report.get("deliveries"):
        return None
    return report[field] * 1e6 / report["deliveries"]


def latency(report, percentile):
    return report["latency_ms"][percentile] if good(report) and report.get("deliveries") else None


def field(report, name, scale=1):
    return report[name] * scale if good(report) else None


def correct(report):
    if not good(report):
        return None
    if report["ok"]:
        return "yes"
    faults = ", ".join(f"{n:,} {kind}" for kind, n in report["faults"].items() if n)
    return f"NO ({report['deliveries']:,} of {report['expected']:,} delivered; subscribers with faults: {faults})"


def number(value, digits=0):
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def ratio(mine, theirs):
    if mine is None or theirs is None or isinstance(mine, str) or not theirs:
        return ""
    return f"{mine / theirs:.2f}×"


# Rows of the results table: label, figure of one server's results, digits,
# and what the Socket.IO columns show: "ratio" (figures and parlor ÷ them),
# "plain" (figures only) or "parlor" (parlor-only scenarios).
def fanout_rows(title, pick):
    return [
        (f"{title}: deliveries/s", lambda r: field(pick(r), "delivery_rate"), 0, "ratio"),
        (f"{title}: latency p50 (ms)", lambda r: latency(pick(r), "p50"), 2, "ratio"),
        (f"{title}: latency p99 (ms)", lambda r: latency(pick(r), "p99"), 2, "ratio"),
        (f"{title}: latency p99.9 (ms)", lambda r: latency(pick(r), "p999"), 2, "ratio"),
        (f"{title}: server CPU ms per 1,000 deliveries", lambda r: per_1k(pick(r), "server_cpu_s"), 2, "ratio"),
        (f"{title}: Redis CPU ms per 1,000 deliveries", lambda r: per_1k(pick(r), "redis_cpu_s"), 2, "ratio"),
        (f"{title}: nothing lost, duplicated or reordered", lambda r: correct(pick(r)), 0, "plain"),
    ]


def results_table(results, sizes):
    def replay(percentile):
        return lambda r: r["replay"]["ms"][percentile] if good(r.get("replay")) else None

    rows = [
        ("Idle: connections held on one instance", lambda r: field(r.get("idle"), "connections"), 0, "plain"),
        ("Idle: connect rate (connections/s, joined)", lambda r: field(r.get("idle"), "connect_rate"), 0, "ratio"),
        ("Idle: RSS per connection (KiB)",
         lambda r: field(r.get("idle"), "rss_per_connection_bytes", 1 / 1024), 2, "ratio"),
    ]
    rows += fanout_rows("Fanout, maximum rate", lambda r: r.get("saturation"))
    for rate in sizes["rates"]:
        rows += fanout_rows(f"Fanout at {rate:,}/s", lambda r, rate=rate: r["rates"].get(rate))
    rows += [
        ("Ingest through one instance: messages/s stored", lambda r: field(r.get("ingest"), "rate"), 0, "parlor"),
        ("redis-benchmark, same script shape: calls/s (the ceiling)",
         lambda r: field(r.get("ceiling"), "rate"), 0, "parlor"),
        (f"Replay of {MISSED:,} missed messages: p50 (ms)", replay("p50"), 2, "parlor"),
        (f"Replay of {MISSED:,} missed messages: p99 (ms)", replay("p99"), 2, "parlor"),
    ]
    names = [server["name"] for server in SERVERS]
    lines = [
        f"| | {' | '.join(names)} | parlor ÷ {names[1]} | parlor ÷ {names[2]} |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, pick, digits, others in rows:
        values = [pick(results.get(server["key"], {"rates": {}})) for server in SERVERS]
        if others == "parlor":
            cells = [number(values[0], digits), "n/a", "n/a", "", ""]
        else:
            cells = [number(value, digits) for value in values]
            if others == "ratio":
                cells += [ratio(values[0], values[1]), ratio(values[0], values[2])]
            else:
                cells += ["", ""]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def targets_table(results, floor, sizes):
    parlor = results.get("parlor", {"rates": {}})
    pubsub = results.get("pubsub", {"rates": {}})
    streams = results.get("streams", {"rates": {}})
    saturation, their_saturation = parlor.get("saturation"), pubsub.get("saturation")

    def checked(report, value):
        """A figure from a parlor run counts only if the run was correct."""
        return value if good(report) and report.get("ok", True) else None

    def compare(mine, theirs):
        return mine / theirs if mine is not None and theirs else None

    rss = field(parlor.get("idle"), "rss_per_connection_bytes", 1 / 1024)
    ingest = compare(field(parlor.get("ingest"), "rate"), field(parlor.get("ceiling"), "rate"))
    replay = parlor["replay"]["ms"]["p99"] if good(parlor.get("replay")) else None
    held = field(parlor.get("idle"), "connections")
    # Each target: label, goal, measured value, test, unit, and the runs it
    # comes from, so that a verdict from a disturbed run says so.
    targets = [
        (f"RSS per idle connection ({number(held)} held)", "≤ 4 KiB", rss, lambda v: v <= 4, " KiB",
         [parlor.get("idle")]),
    ]

    def per_rate(label, goal, limit, measure, other):
        """A target at each fixed rate: parlor's `measure` ÷ the `other`
        server's, at most `limit`."""
        for rate in sizes["rates"]:
            mine, theirs = parlor["rates"].get(rate), other["rates"].get(rate)
            targets.append((
                label.format(rate=f"{rate:,}"), goal,
                compare(checked(mine, measure(mine)), measure(theirs)),
                lambda v: v <= limit, "×", [mine, theirs],
            ))

    per_rate("Server CPU per 1,000 deliveries at {rate}/s, ÷ Socket.IO (Pub/Sub adapter)",
             f"≤ {SOCKETIO_CPU_TARGET}", SOCKETIO_CPU_TARGET, lambda r: per_1k(r, "server_cpu_s"), pubsub)
    targets.append((
        "Server CPU per 1,000 deliveries at maximum rate, ÷ Socket.IO (Pub/Sub adapter)", f"≤ {SATURATION_TARGET}",
        compare(checked(saturation, per_1k(saturation, "server_cpu_s")), per_1k(their_saturation, "server_cpu_s")),
        lambda v: v <= SATURATION_TARGET, "×", [saturation, their_saturation],
    ))
    per_rate("Latency p99 at {rate}/s, ÷ Socket.IO (Pub/Sub adapter)", f"≤ {P99_TARGET}", P99_TARGET,
             lambda r: latency(r, "p99"), pubsub)
    per_rate("Latency p99.9 at {rate}/s, ÷ Socket.IO (Pub/Sub adapter)", "≤ 1", 1,
             lambda r: latency(r, "p999"), pubsub)
    # The same deliveries per message for both, so the ratio per delivery
    # is the ratio per stored message.
    per_rate("Redis CPU per stored message at {rate}/s, ÷ Socket.IO (Streams adapter)",
             f"≤ {REDIS_TARGET}", REDIS_TARGET, lambda r: per_1k(r, "redis_cpu_s"), streams)
    targets += [
        ("Ingest, ÷ the redis-benchmark ceiling", f"≥ {INGEST_TARGET}", ingest, lambda v: v >= INGEST_TARGET, "×",
         [parlor.get("ingest")]),
        (f"Replay of {MISSED:,} missed messages, p99", "< 20 ms", replay, lambda v: v < 20, " ms",
         [parlor.get("replay")]),
    ]
    memory, the_floor = (floor.get(key, {"rates": {}})["rates"] for key in ("memory", "floor"))
    for rate in sizes["floor"]["rates"]:
        mine, theirs = memory.get(rate), the_floor.get(rate)
        targets.append((
            f"CPU per 1,000 deliveries at {rate:,}/s, ÷ the floor's (memory store)", f"≤ {FLOOR_TARGET}",
            compare(checked(mine, per_1k(mine, "server_cpu_s")), checked(theirs, per_1k(theirs, "server_cpu_s"))),
            lambda v: v <= FLOOR_TARGET, "×", [mine, theirs],
        ))
    lines = ["| target | goal | measured | |", "| --- | --- | ---: | --- |"]
    for label, goal, value, met, unit, sources in targets:
        if value is None:
            lines.append(f"| {label} | {goal} | — | no result |")
            continue
        verdict = "met" if met(value) else "**not met**"
        if any(source and source.get("disturbed") for source in sources):
            verdict += " (from a disturbed run)"
        lines.append(f"| {label} | {goal} | {value:.3g}{unit} | {verdict} |")
    lines.append(storm.target_row(results.get("storm")))
    return "\n".join(lines)


def per_1k_messages(report, field):
    """Milliseconds of CPU per 1,000 messages stored (ingest)."""
    if not good(report) or not report.get("messages"):
        return None
    return report[field] * 1e6 / report["messages"]


def cluster_columns(results, clusters, sizes):
    """The columns of the cluster table: parlor's runs on the standalone
    Redis, then each cluster configuration that ran."""
    parlor = results.get("parlor", {"rates": {}})
    columns = [("standalone Redis", {
        "nodes": 1, "shards": 0, "replicas": None, "ingest": parlor.get("ingest"),
        "rate": parlor["rates"].get(sizes["cluster_rate"]), "saturation": parlor.get("saturation"),
    })]
    for config in CLUSTERS:
        if config["shards"] in sizes["cluster_shards"]:
            mine = clusters.get(config["key"], {})
            columns.append((config["column"], {
                **mine, "nodes": 2 * config["shards"], "shards": config["shards"], "replicas": config["replicas"],
            }))
    return columns


def channels_per_master(report):
    if not good(report):
        return None
    return " / ".join(f"{node['channels']:,}" for node in report["nodes"] if node["role"] == "master")


def cluster_table(results, clusters, sizes):
    rate = sizes["cluster_rate"]

    def nodes(c):
        if not c["shards"]:
            return "1"
        masters = f"{c['shards']} master" + ("s" if c["shards"] > 1 else "")
        return f"{c['nodes']} ({masters}, {c['nodes'] - c['shards']} replica{'s' if c['shards'] > 1 else ''})"

    def fanout(title, key):
        return [
            (f"{title}: deliveries/s", lambda c: field(c.get(key), "delivery_rate"), 0),
            (f"{title}: latency p50 (ms)", lambda c: latency(c.get(key), "p50"), 2),
            (f"{title}: latency p99 (ms)", lambda c: latency(c.get(key), "p99"), 2),
            (f"{title}: latency p99.9 (ms)", lambda c: latency(c.get(key), "p999"), 2),
            (f"{title}: parlor CPU ms per 1,000 deliveries", lambda c: per_1k(c.get(key), "server_cpu_s"), 2),
            (f"{title}: Redis CPU ms per 1,000 deliveries (all nodes)",
             lambda c: per_1k(c.get(key), "redis_cpu_s"), 2),
            (f"{title}: nothing lost, duplicated or reordered", lambda c: correct(c.get(key)), 0),
        ]

    rows = [
        ("Redis nodes", nodes, 0),
        ("Acks wait for a replica (`WAIT`)",
         lambda c: "no (none)" if c["replicas"] is None else ("yes" if c["replicas"] else "no"), 0),
        ("Ingest through one instance: messages/s stored", lambda c: field(c.get("ingest"), "rate"), 0),
        ("Ingest: parlor CPU ms per 1,000 messages", lambda c: per_1k_messages(c.get("ingest"), "server_cpu_s"), 2),
        ("Ingest: Redis CPU ms per 1,000 messages (all nodes)",
         lambda c: per_1k_messages(c.get("ingest"), "redis_cpu_s"), 2),
    ]
    rows += fanout(f"Fanout at {rate:,}/s", "rate")
    rows += fanout("Fanout, maximum rate", "saturation")
    rows.append((f"Fanout at {rate:,}/s: shard channels on each master",
                 lambda c: channels_per_master(c.get("shard_channels")) if c["shards"] else "n/a", 0))
    columns = cluster_columns(results, clusters, sizes)
    lines = [
        f"| | {' | '.join(name for name, _ in columns)} |",
        f"| --- |{' ---: |' * len(columns)}",
    ]
    for label, pick, digits in rows:
        lines.append(f"| {label} | {' | '.join(number(pick(c), digits) for _, c in columns)} |")
    return "\n".join(lines)


def shard_paragraph(clusters, sizes):
    """What the shard channel counts show, from the counts themselves."""
    sentences = []
    for config in CLUSTERS:
        report = clusters.get(config["key"], {}).get("shard_channels")
        if config["shards"] not in sizes["cluster_shards"]:
            continue
        if not good(report):
            sentences.append(f"{config['name']}: not counted ({(report or {}).get('error', 'no run')}).")
            continue
        masters = [n for n in report["nodes"] if n["role"] == "master"]
        replicas = [n for n in report["nodes"] if n["role"] == "replica"]
        counts = ", ".join(
            f"{n['channels']:,} on the master on port {n['port']} ({n['slots']:,} slots)" for n in masters
        )
        subscribers = sorted({count for n in masters for count in n["subscribers"]})
        on_replicas = sum(n["channels"] for n in replicas)
        sentences.append(
            f"{config['column'].capitalize()}: {report['channels']:,} channels: {counts}; "
            f"{on_replicas:,} on the replicas; {report['on_several_nodes']:,} on more than one node; "
            f"{report['not_on_slot_owner']:,} on a node other than the master of its slot; subscribers per "
            f"channel: {' or '.join(map(str, subscribers)) or 'none'}."
        )
    return sentences


def wait_paragraph(clusters, sizes):
    """What WAIT costs on three shards, in the run's own numbers."""
    with_wait, without = clusters.get("cluster3", {}), clusters.get("cluster3-r0", {})
    ingest = field(with_wait.get("ingest"), "rate"), field(without.get("ingest"), "rate")
    rate = sizes["cluster_rate"]
    p50 = latency(with_wait.get("rate"), "p50"), latency(without.get("rate"), "p50")
    p99 = latency(with_wait.get("rate"), "p99"), latency(without.get("rate"), "p99")
    top = field(with_wait.get("saturation"), "delivery_rate"), field(without.get("saturation"), "delivery_rate")
    cpu = per_1k_messages(with_wait.get("ingest"), "redis_cpu_s"), per_1k_messages(without.get("ingest"), "redis_cpu_s")
    parts = []
    if None not in ingest:
        parts.append(f"ingest through one instance stores {ingest[0]:,.0f} messages/s with it against "
                     f"{ingest[1]:,.0f} without ({ingest[0] / ingest[1]:.2f}×)")
    if None not in cpu:
        parts.append(f"Redis CPU per 1,000 messages stored is {cpu[0]:.2f} ms against {cpu[1]:.2f}")
    if None not in p50 and None not in p99:
        parts.append(f"at {rate:,} deliveries/s, latency p50 is {p50[0]:.2f} ms against {p50[1]:.2f} "
                     f"and p99 {p99[0]:.2f} ms against {p99[1]:.2f}")
    if None not in top:
        parts.append(f"fanout at maximum rate delivers {top[0]:,.0f}/s against {top[1]:,.0f}/s")
    if not parts:
        return ""
    return paragraph(f"""
        **What `WAIT` costs**, on three shards (the `--redis-replicas 1` column against the
        `--redis-replicas 0` one): {'; '.join(parts)}.""")


def cluster_section(results, clusters, sizes):
    shapes = sizes["cluster_shards"]
    if not shapes:
        return ""
    described = {
        1: "one shard (a master and its replica: the cluster is made by hand, with `CLUSTER ADDSLOTSRANGE`, "
           "`CLUSTER MEET` and `CLUSTER REPLICATE`, since `redis-cli --cluster create` wants three masters "
           "at least)",
        3: "three shards (three masters with a replica each, made with `redis-cli --cluster create … "
           "--cluster-replicas 1`)",
    }
    cores = os.cpu_count()
    setup = paragraph(f"""
        Here parlor runs alone, on Redis Clusters the run starts itself:
        {' and '.join(described[s] for s in shapes)}.
        Every node is a redis-server on 127.0.0.1 with `--cluster-node-timeout 5000` and, like the
        standalone Redis, no persistence; the runs start once every node reports `cluster_state:ok`
        and every replica `master_link_status:up`. Two parlor instances get every node's URL as
        seeds (`--redis redis://127.0.0.1:P1,redis://127.0.0.1:P2,…`) and the other flags of the
        runs above. By default (`--redis-replicas 1`) each message is stored, `WAIT`ed for on the
        replica of its room's master, and only then published and acked; the last column runs the
        three shards with `--redis-replicas 0`, which acks what the master stored. Sizes as above:
        ingest through one instance (8 publishers, 100 rooms, {WINDOW} sends in flight each),
        fanout over {sizes['rooms']} rooms × {sizes['subscribers']} subscribers with
        {sizes['publishers']} publishers, at {sizes['cluster_rate']:,} deliveries/s for
        {sizes['rate_seconds']} s and at maximum rate for {sizes['saturation_seconds']} s. The
        standalone column repeats parlor's runs above; Redis CPU is summed over every node of the
        cluster, replicas included.""")
    honest = paragraph(f"""
        All the nodes, both instances and the load generator share the machine's {cores} cores, so
        three shards cannot show more throughput than one here: each shard also runs a replica that
        applies every write, and more nodes only divide the same cores further. What the run can
        show is that live traffic stays on the shard of its room, and what waiting for a replica
        costs.""")
    counted = paragraph(f"""
        **Live traffic by shard.** While the fanout at {sizes['cluster_rate']:,}/s runs, the driver
        asks every node twice a second for `PUBSUB SHARDCHANNELS parlor:*` (the rooms' live
        channels, `parlor:{{room}}:live`) and `PUBSUB SHARDNUMSUB` of each, and keeps the count
        with the most channels, when all {sizes['rooms']} rooms have their members:""")
    shards = "\n".join("- " + paragraph(s).replace("\n", "\n  ") for s in shard_paragraph(clusters, sizes))
    wait = wait_paragraph(clusters, sizes)
    return "\n\n".join(part for part in [
        "## On a Redis Cluster", setup, cluster_table(results, clusters, sizes), honest, counted, shards, wait,
    ] if part) + "\n"


def floor_table(floor, sizes):
    """Per fixed rate: parlor on its memory store, the floor, and parlor ÷
    the floor."""
    memory, the_floor = (floor.get(server["key"], {"rates": {}}) for server in FLOOR_SERVERS)
    lines = [
        f"| | {FLOOR_SERVERS[0]['name']} | {FLOOR_SERVERS[1]['name']} | parlor ÷ floor |",
        "| --- | ---: | ---: | ---: |",
    ]
    for rate in sizes["floor"]["rates"]:
        title = f"At {rate:,}/s"
        rows = [
            (f"{title}: deliveries/s", lambda r: field(r, "delivery_rate"), 0, True),
            (f"{title}: CPU ms per 1,000 deliveries", lambda r: per_1k(r, "server_cpu_s"), 2, True),
            (f"{title}: of which user", lambda r: per_1k(r, "server_user_s"), 2, True),
            (f"{title}: of which system", lambda r: per_1k(r, "server_system_s"), 2, True),
            (f"{title}: latency p50 (ms)", lambda r: latency(r, "p50"), 2, True),
            (f"{title}: latency p99 (ms)", lambda r: latency(r, "p99"), 2, True),
            (f"{title}: latency p99.9 (ms)", lambda r: latency(r, "p999"), 2, True),
            (f"{title}: nothing lost, duplicated or reordered", correct, 0, False),
        ]
        for label, pick, digits, divide in rows:
            mine, theirs = pick(memory["rates"].get(rate)), pick(the_floor["rates"].get(rate))
            cells = [number(mine, digits), number(theirs, digits), ratio(mine, theirs) if divide else ""]
            lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def floor_section(floor, sizes):
    shape = sizes["floor"]
    rates = ", ".join(f"{rate:,}" for rate in shape["rates"])
    setup = paragraph(f"""
        The floor is a program of the project's own (bench/floor.rs, built as an example): one thread,
        one level-triggered epoll, nonblocking sockets, a WebSocket handshake and framing of its own,
        and just enough of parlor's protocol for this scenario (`welcome`; `join`, answered by `joined`
        and `replayed`; `send`, answered by `ack`; `message` to every member). For each message it
        takes the room's next id, encodes the frame once and writes it to each member's socket with
        one `send(2)`; it stores nothing, keeps no history and uses no Redis. A member whose socket
        would not take a whole frame keeps the rest, and what follows, in a buffer of its own until
        the socket drains. What it spends is about what the deliveries alone cost on this machine.
        parlor runs here without `--redis`, on its embedded memory store, with the other flags of
        the runs above (see the commands); each is one instance, started together on ports of their own and driven by the same
        load generator as parlor (`--target parlor`): {shape['rooms']} rooms × {shape['subscribers']}
        subscribers ({shape['rooms'] * shape['subscribers']:,} connections), {shape['publishers']}
        publishers, sends paced by the clock at {rates} deliveries/s for {sizes['rate_seconds']} s each.
        After a warm-up run of each (not counted), the two take turns at each rate, so that both meet
        the machine as it is then. CPU is the server process's utime and stime from
        `/proc/<pid>/stat` (user and system time, in ticks of 10 ms), from the first send to the last
        delivery; "parlor ÷ floor" is parlor's figure divided by the floor's.""")
    return f"## Against the floor\n\n{setup}\n\n{floor_table(floor, sizes)}\n"


def runs_table(reports):
    lines = [
        "| server | scenario | offered | messages | delivered/s | p50 ms | p99 ms | p99.9 ms | max ms "
        "| server CPU s | Redis CPU s | others' CPU s | correct |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    names = {server["key"]: server["name"] for server in SERVERS + CLUSTERS + FLOOR_SERVERS}
    for report in reports:
        if report.get("scenario") != "fanout" and "error" not in report:
            continue
        name = names.get(report.get("server"), report.get("server"))
        if "error" in report:
            lines.append(f"| {name} | {report.get('scenario', '')} | | | | | | | | | | | failed: {report['error']} |")
            continue
        offered = f"{report['rate']:,}/s" if report["rate"] else "maximum"
        if report.get("warmup"):
            offered += " (warm-up)"
        if not report["kept"]:
            offered += " (disturbed: run again)"
        elif report["disturbed"]:
            offered += " (disturbed)"
        ms = report["latency_ms"]
        lines.append(
            f"| {name} | fanout | {offered} | {report['messages']:,} | {report['delivery_rate']:,.0f} "
            f"| {ms['p50']:.2f} | {ms['p99']:.2f} | {ms['p999']:.2f} | {ms['max']:.2f} "
            f"| {report['server_cpu_s']:.2f} | {report['redis_cpu_s']:.2f} | {report['other_cpu_s']:.2f} "
            f"| {correct(report)} |"
        )
    return "\n".join(lines)


def chart(results, path):
    """docs/bench-latency.svg: p50 and p99 latency against delivered rate,
    one colour per server; a log scale, since the servers differ by orders of
    magnitude at the top end."""
    width, height = 820, 470
    left, right, top, bottom = 70, 250, 50, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    series = []
    for server in SERVERS:
        mine = results.get(server["key"], {"rates": {}})
        points = sorted(
            (r["delivery_rate"], r["latency_ms"]["p50"], r["latency_ms"]["p99"])
            for r in mine["rates"].values() if good(r) and r["deliveries"]
        )
        saturation = mine.get("saturation")
        top_point = None
        if good(saturation) and saturation["deliveries"]:
            ms = saturation["latency_ms"]
            top_point = (saturation["delivery_rate"], ms["p50"], ms["p99"])
        series.append((server, points, top_point))
    everything = [p for _, points, top_point in series for p in points + ([top_point] if top_point else [])]
    if not everything:
        path.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="400" height="40">'
                        '<text x="10" y="25">no fanout results</text></svg>\n')
        return
    x_step = nice_step(max(p[0] for p in everything) / 5)
    x_max = math.ceil(max(p[0] for p in everything) * 1.02 / x_step) * x_step
    values = [v for p in everything for v in p[1:] if v > 0]
    y_low = 10 ** math.floor(math.log10(min(values)))
    y_high = 10 ** math.ceil(math.log10(max(values)))
    if y_high <= y_low:
        y_high = y_low * 10

    def x(rate):
        return left + rate / x_max * plot_w

    def y(ms):
        ms = max(ms, y_low)
        return top + plot_h - (math.log10(ms) - math.log10(y_low)) / (math.log10(y_high) - math.log10(y_low)) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="24" font-size="15" font-weight="bold">'
        'End-to-end latency against delivered rate (fanout, two instances, one Redis)</text>',
    ]
    decade = y_low
    while decade <= y_high * 1.0001:
        for step in (1, 2, 5):
            tick = decade * step
            if y_low <= tick <= y_high * 1.0001:
                strong = step == 1
                out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                           f'stroke="{"#bbb" if strong else "#e4e4e4"}"/>')
                out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
        decade *= 10
    for i in range(round(x_max / x_step) + 1):
        rate = x_step * i
        out.append(f'<line x1="{x(rate):.1f}" x2="{x(rate):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{x(rate):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{rate / 1000:g}k</text>')
    out += [
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>',
        f'<text x="{left + plot_w / 2}" y="{height - 15}" text-anchor="middle">delivered messages per second</text>',
        f'<text transform="translate(18 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
        'latency, ms (log scale)</text>',
    ]
    for server, points, top_point in series:
        color = COLORS[server["key"]]
        for index, dash in ((1, ""), (2, ' stroke-dasharray="6 4"')):
            if len(points) > 1:
                line = " ".join(f"{x(p[0]):.1f},{y(p[index]):.1f}" for p in points)
                out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for p in points:
                out.append(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[index]):.1f}" r="3.5" fill="{color}"/>')
            if top_point:
                out.append(f'<rect x="{x(top_point[0]) - 4:.1f}" y="{y(top_point[index]) - 4:.1f}" '
                           f'width="8" height="8" fill="white" stroke="{color}" stroke-width="2"/>')
    legend_x, legend_y = left + plot_w + 20, top + 10
    for i, (server, _, _) in enumerate(series):
        row = legend_y + i * 22
        out.append(f'<line x1="{legend_x}" x2="{legend_x + 24}" y1="{row}" y2="{row}" '
                   f'stroke="{COLORS[server["key"]]}" stroke-width="3"/>')
        out.append(f'<text x="{legend_x + 32}" y="{row + 4}">{html.escape(server["name"])}</text>')
    row = legend_y + len(series) * 22 + 14
    out += [
        f'<line x1="{legend_x}" x2="{legend_x + 24}" y1="{row}" y2="{row}" stroke="#444" stroke-width="2"/>',
        f'<text x="{legend_x + 32}" y="{row + 4}">p50, fixed rates</text>',
        f'<line x1="{legend_x}" x2="{legend_x + 24}" y1="{row + 22}" y2="{row + 22}" stroke="#444" '
        'stroke-width="2" stroke-dasharray="6 4"/>',
        f'<text x="{legend_x + 32}" y="{row + 26}">p99, fixed rates</text>',
        f'<rect x="{legend_x + 8}" y="{row + 40}" width="8" height="8" fill="white" stroke="#444" stroke-width="2"/>',
        f'<text x="{legend_x + 32}" y="{row + 48}">p50 and p99 at maximum rate</text>',
        "</svg>",
    ]
    path.write_text("\n".join(out) + "\n")


def nice_step(value):
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above value."""
    power = 10 ** math.floor(math.log10(value))
    return next(power * m for m in (1, 2, 2.5, 5, 10) if power * m >= value)


def paragraph(text):
    return textwrap.fill(" ".join(text.split()), 78)


def document(run, results, clusters, floor, sizes, mode, about, minutes):
    when = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
    rates = ", ".join(f"{rate:,}" for rate in sizes["rates"])
    intro = paragraph(f"""
        Generated by `make bench` (bench/run.py driving examples/bench.rs) on {when}, in {minutes:.1f} minutes.
        Every figure comes from this one run; run `make bench` again to replace them.""")
    if mode == "quick":
        intro += "\n\n" + paragraph("""
            **A quick run** (`make bench QUICK=1`), with smaller sizes than the targets are stated for;
            the published figures come from `make bench`.""")
    compared = paragraph(f"""
        Compared: parlor, and Socket.IO {about['socket.io']} with `@socket.io/redis-adapter` (Redis Pub/Sub,
        the usual setup) and with `@socket.io/redis-streams-adapter` plus connection state recovery
        (Socket.IO's closest equivalent to parlor's stored, replayable rooms). Each server runs as two
        instances over one Redis, each on one thread (parlor with `--threads {PARLOR_THREADS}`, Node as it
        is); Socket.IO's clients use the WebSocket transport only. A section
        puts parlor, on its memory store, against the floor: a plain epoll server of the project's
        own that does nothing but write each delivery. A last section runs parlor on Redis
        Clusters.""")
    machine_lines = "\n".join(f"- {name}: {value}" for name, value in about.items())
    shared = paragraph("""
        Servers, Redis and the load generator share these cores; at maximum rate the load generator
        itself needs a good part of them, so the saturation figures say what this machine does with
        all three on it. Redis runs without persistence (`--save "" --appendonly no`) for every
        server alike.""")
    setup = paragraph(f"""
        Ratios are parlor's figure divided by Socket.IO's: below 1 means parlor uses less (memory,
        CPU, time), above 1 that it does more (connections, deliveries). Fanout:
        {sizes['rooms']} rooms × {sizes['subscribers']} subscribers ({sizes['rooms'] * sizes['subscribers']:,}
        connections, alternating between the two instances, so that every room has members on both),
        {sizes['publishers']} publishers sending to the rooms in turn. At maximum rate each publisher
        keeps {WINDOW} sends in flight for {sizes['saturation_seconds']} s; at the fixed rates ({rates}
        deliveries/s) the sends are paced by the clock for {sizes['rate_seconds']} s each, whatever
        the acks do, so that a server that cannot keep up shows it as latency. A run starts once the
        subscribers have read nothing for a second: parlor announces each join to the room's members
        (Socket.IO announces none), and the figures are of message deliveries, not of those
        announcements.""")
    failures = "".join(f"\n- {failure}" for failure in run.failures)
    failures = f"\n## Failures\n{failures}\n" if failures else ""
    notes = "\n".join(
        "- " + paragraph(note).replace("\n", "\n  ")
        for note in [
            """**Acks differ.** A Socket.IO ack means "handed to the adapter"; parlor's means "stored in
            Redis". At maximum rate Socket.IO's publishers are acked at once and run ahead of its
            deliveries, so its latency there is mostly queueing; deliveries/s counts only what reached
            subscribers, from the first send to the last delivery. Parlor's sends carry a `ref`, as its
            web page's do, which costs it one more Redis write per message.""",
            """**Latency** is end to end: each message carries its send time (the load generator's
            monotonic clock, in microseconds), which the subscriber subtracts from the arrival time.
            Publishers and subscribers are one process, so the clocks agree. With servers, Redis and
            load generator on two cores, p99 and p99.9 at the higher fixed rates vary a lot from one
            run to the next (several times over, for every server): weigh a tail-latency ratio from
            one run accordingly.""",
            """**CPU** is utime + stime of both instances (from `/proc/<pid>/stat`), from the first
            send to the last delivery, in milliseconds per 1,000 deliveries (that is, microseconds
            per delivery); Redis's CPU is shown apart. Before each
            run the driver waits (up to a minute) for the whole machine to fall quiet, and a first
            warm-up run is not counted. "others' CPU" is what processes outside the benchmark used
            during a run (`/proc/stat`): above a tenth of a core on average, something else
            competed for the cores; such a run is marked disturbed and run once more, and the
            tables take the less disturbed try.""",
            """**RSS** is VmRSS (`/proc/<pid>/status`) of the instance holding the idle connections
            after all are joined and 3 s have passed, minus VmRSS before the first, divided by the
            connections. Each server starts fresh for it.""",
            """**Correctness.** Every subscriber checks, as messages arrive, that each is the next of
            its sequence: parlor's room ids, from 1; Socket.IO's per-publisher sequence numbers in the
            payload. At the end each must have reached what its publishers had acked. "gaps" are
            deliveries that skipped ahead, "repeats" ones at or below a number already seen, "short"
            subscribers that ended with less than was acked, "disconnected" ones whose connection
            ended early. The Streams adapter keeps about 10,000 entries in its stream (its `maxLen`
            default): an instance that falls further behind than that loses messages without a
            word.""",
            f"""**Addresses.** The idle connections go to 127.0.0.1 to 127.0.0.{SPREAD}: the servers
            listen on every address, and each destination address has an ephemeral port range of its
            own, which is what several source addresses would give. Binding source addresses would
            need the `socket2` crate, which is not a dependency of the project.""",
            """**The ceiling** is redis-benchmark calling, by SHA as parlor does, a script of the same
            shape as parlor's store step, on one room with fresh refs:""",
        ]
    )
    commands_intro = paragraph("""
        Run from the repository root, in this order, after raising `ulimit -n` to the hard limit;
        `$A_PID`, `$B_PID` and `$REDIS_PID` stand for the process ids of the two instances started
        last and of redis-server, `$REDIS_<port>_PID` for that of the cluster node on that port,
        `$MEMORY_PID` and `$FLOOR_PID` for those of parlor on its memory store and of the floor.""")
    commands = "\n".join(run.commands)
    return f"""# Benchmarks

{intro}

{compared}

## Machine

{machine_lines}

{shared}

## Results

{setup}

{results_table(results, sizes)}

## Targets

{targets_table(results, floor, sizes)}

## Latency against delivered rate

![p50 and p99 latency against delivered rate](bench-latency.svg)

{floor_section(floor, sizes)}
{cluster_section(results, clusters, sizes)}
{storm.section(results.get("storm"), mode)}
## Every fanout run

{runs_table(run.reports)}
{failures}
## How the figures are taken

{notes}

```lua
{CEILING_SCRIPT.rstrip()}
```

## Commands

{commands_intro}

```sh
{commands}
```
"""


def main():
    parser = argparse.ArgumentParser(description="Run parlor's benchmark and write BENCHMARKS.md.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for development (3 to 4 minutes)")
    mode = "quick" if parser.parse_args().quick else "full"
    sizes = SIZES[mode]
    redis_port = int(os.environ.get("BENCH_REDIS_PORT", "6400"))
    base_port = int(os.environ.get("BENCH_PORT", "19000"))
    cluster_port = int(os.environ.get("BENCH_CLUSTER_PORT", "6410"))
    for needed in (PARLOR, BENCH, FLOOR, f"{SOCKETIO}/node_modules"):
        if not (ROOT / needed).exists():
            sys.exit(f"{needed} is missing: run `make bench`, which builds and installs it")
    # ~19,000 idle connections need as many descriptors in the bench and in
    # the server holding them.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # SIGTERM and SIGHUP end the run through the same `finally` as Ctrl-C.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: sys.exit(128 + signum))

    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run = Run(redis_port, sizes["patience_minutes"] * 60)
    results, clusters, floor = {}, {}, {}
    try:
        redis = run.start_redis()
        for index, server in enumerate(SERVERS):
            ports = [base_port + 4 * index + i for i in range(4)]
            try:
                results[server["key"]] = run_server(run, server, sizes, ports, redis)
            except BenchError as e:
                run.failed(server["name"], e, keep={redis})
        run.stop(redis)
        try:
            floor = run_floor(run, sizes, base_port + 18)
        except BenchError as e:
            run.failed("parlor against the floor", e, keep=set())
        clusters = run_clusters(run, sizes, base_port, cluster_port)
        results["storm"] = storm.run_storms(run, mode, SERVERS, [base_port + 20, base_port + 21], BenchError)
    finally:
        run.stop_all()

    minutes = (time.monotonic() - started) / 60
    (OUT / "results.jsonl").write_text("".join(json.dumps(report) + "\n" for report in run.reports))
    docs = ROOT / "docs" if mode == "full" else OUT
    (docs / "BENCHMARKS.md").write_text(document(run, results, clusters, floor, sizes, mode, machine(), minutes))
    chart(results, docs / "bench-latency.svg")
    print(f"wrote {(docs / 'BENCHMARKS.md').relative_to(ROOT)} and bench-latency.svg in {minutes:.1f} minutes",
          file=sys.stderr)
    print(results_table(results, sizes))
    print()
    print(targets_table(results, floor, sizes))
    print()
    print(floor_table(floor, sizes))
    if sizes["cluster_shards"]:
        print()
        print(cluster_table(results, clusters, sizes))
        for sentence in shard_paragraph(clusters, sizes):
            print(f"- {sentence}")
    parlor_keys = {"parlor", "memory"} | {config["key"] for config in CLUSTERS}
    parlor_faults = [r for r in run.reports if r.get("server") in parlor_keys and r.get("ok") is False]
    floor_faults = [r for r in run.reports if r.get("server") == "floor" and r.get("ok") is False]
    if run.failures or parlor_faults or floor_faults:
        for failure in run.failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        if parlor_faults:
            print("FAILED: parlor lost, duplicated or reordered messages (see the runs table)", file=sys.stderr)
        if floor_faults:
            print("FAILED: the floor lost, duplicated or reordered messages (see the runs table)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
