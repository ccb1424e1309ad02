"""The reconnect storm of parlor's benchmark, for bench/run.py: parlor and
Socket.IO with the Streams adapter, each as two fresh instances on a fresh
Redis, under examples/storm.rs (members dropping their connection without a
close frame and resuming on a random instance while publishers post), and the
"Reconnect storm" section and target line of BENCHMARKS.md from its reports.

Kept apart from run.py, which calls `run_storms` once and places `section`
and `target_row`; it uses the driver's `Run` for processes, commands and
reports. Python 3 standard library only.
"""

import re
import sys
import textwrap
from pathlib import Path

STORM = "./target/release/examples/storm"
# Where the driver's Run logs redis-server's output.
REDIS_LOG = Path(__file__).resolve().parent.parent / "target" / "bench" / "logs" / "redis.log"
# Members are rooms × members; the rate is messages per second in all.
SIZES = {
    "full": {"rooms": 100, "members": 100, "rate": 200, "seconds": 60},
    "quick": {"rooms": 10, "members": 100, "rate": 100, "seconds": 15},
}
# The servers of run.py's SERVERS that can resume: parlor, and Socket.IO
# with connection state recovery.
KEYS = ("parlor", "streams")
PUBLISHERS = 10
WARMUP_SECONDS = 3
TARGET_P99_MS = 50
# A Redis client that falls behind reading its replies is disconnected once
# they pass 1 GiB, rather than letting Redis take the machine's memory.
OUTPUT_LIMIT = "normal 1073741824 1073741824 0"


def run_storms(run, mode, servers, ports, error):
    """The storm against each server of KEYS, on a fresh Redis and a fresh
    pair of instances on `ports`; every process it starts is stopped after
    its server, also when something fails (`error`, the driver's exception
    for a failed step)."""
    sizes = SIZES[mode]
    reports = {}
    for server in (s for s in servers if s["key"] in KEYS):
        print(f"== reconnect storm: {server['name']}", file=sys.stderr, flush=True)
        before = set(run.processes)
        try:
            run.start_redis()
            run.redis_cli("config", "set", "client-output-buffer-limit", OUTPUT_LIMIT)
            run.commands.append(f"redis-cli -p {run.redis_port} config set client-output-buffer-limit '{OUTPUT_LIMIT}'")
            pair = run.start_pair(server, ports)
            reports[server["key"]] = storm_once(run, server, pair, sizes)
            reports[server["key"]]["exited"] = exited(server, pair)
        except error as e:
            run.failed(f"{server['name']}, reconnect storm", e)
        finally:
            run.stop_since(before)
    return {"sizes": sizes, "names": {s["key"]: s["name"] for s in servers}, "reports": reports}


def storm_once(run, server, pair, sizes):
    argv = [STORM, "--target", server["target"]]
    for _, port in pair:
        argv += ["--url", f"ws://127.0.0.1:{port}"]
    argv += [
        "--rooms", sizes["rooms"], "--members", sizes["members"], "--rate", sizes["rate"],
        "--seconds", sizes["seconds"], "--publishers", PUBLISHERS, "--warmup", WARMUP_SECONDS,
    ]
    run.note(argv)
    run.settle()
    before = tcp_counters()
    report = run.bench_once(argv, timeout=sizes["seconds"] + 600)
    report["kernel"] = {name: count - before[name] for name, count in tcp_counters().items()}
    report["server"] = server["key"]
    report["kept"] = True
    memory = dict(line.split(":", 1) for line in run.redis_cli("info", "memory").splitlines() if ":" in line)
    report["redis_peak_bytes"] = int(memory.get("used_memory_peak", 0))
    # Each client Redis closed for the output buffer limit, by the command it
    # was last running.
    closed = re.findall(r" cmd=(\S+) .*overcoming of output buffer limits", REDIS_LOG.read_text(errors="replace"))
    report["redis_clients_closed"] = {command: closed.count(command) for command in sorted(set(closed))}
    if "error" in report:
        run.failed(f"{server['name']}, reconnect storm", report["error"])
    elif server["key"] == "parlor":
        report["ok"] = clean(report)
    run.reports.append(report)
    return report


# The kernel's counts of connections it could not take at once: a SYN
# dropped for a full listen queue is sent again by the client a second later.
KERNEL_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")


def tcp_counters():
    """KERNEL_COUNTERS as /proc/net/netstat has them now (machine-wide)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    counts = {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            counts = dict(zip(names.split()[1:], map(int, values.split()[1:])))
    return {name: counts.get(name, 0) for name in KERNEL_COUNTERS}


def exited(server, pair):
    """The instances of `pair` that are no longer running, each with its
    exit code and the last line of its log that names an error."""
    gone = []
    for label, (process, port) in zip("AB", pair):
        if process.poll() is None:
            continue
        log = REDIS_LOG.parent / f"{server['key']}-{label}-{port}.log"
        errors = [line.strip() for line in log.read_text(errors="replace").splitlines() if "Error" in line]
        gone.append({"port": port, "code": process.returncode, "error": errors[-1] if errors else ""})
    return gone


def clean(report):
    return report["delivered"] == report["expected"] and not report["duplicates"] and not report["reordered"]


def paragraph(text):
    return textwrap.fill(" ".join(text.split()), 78, break_on_hyphens=False)


def ms(report, percentile):
    value = report["catch_up_ms"][percentile]
    return "never" if value is None else f"{value:,.1f} ms"


def table(storms):
    lines = [
        "| server | members | published | acked | delivered | duplicates | reordered | resumes "
        "| sessions restored | never caught up | attempts failed | Redis peak memory "
        "| reconnect to caught up p50 | p99 | max |",
        "| --- |" + " ---: |" * 14,
    ]
    for key in KEYS:
        report = storms["reports"].get(key)
        name = storms["names"][key]
        if report is None or "error" in report:
            lines.append(f"| {name} | failed: {(report or {}).get('error', 'no run')} |" + " |" * 13)
            continue
        if report["disturbed"]:
            name += " (disturbed)"
        fraction = report["delivered"] / report["expected"] if report["expected"] else 0
        lines.append(
            f"| {name} | {report['members']:,} | {report['published']:,} | {report['acked']:,} "
            f"| {fraction:.4%} ({report['delivered']:,} of {report['expected']:,}) | {report['duplicates']:,} "
            f"| {report['reordered']:,} | {report['resumes']:,} | {report['recovered']:,} "
            f"| {report['not_caught_up']:,} | {report['failed_attempts']:,} "
            f"| {report.get('redis_peak_bytes', 0) / 2**20:,.0f} MiB "
            f"| {ms(report, 'p50')} | {ms(report, 'p99')} | {ms(report, 'max')} |"
        )
    return "\n".join(lines)


TARGET_LABEL = "Storm: 100% delivered, no duplicate, reconnect-to-caught-up p99"
TARGET_GOAL = f"≤ {TARGET_P99_MS} ms"


def verdict(storms):
    """(measured, verdict) of the storm target, from parlor's run; None
    without one."""
    report = (storms or {}).get("reports", {}).get("parlor")
    if report is None or "error" in report:
        return None
    p99 = report["catch_up_ms"]["p99"]
    met = clean(report) and p99 is not None and p99 <= TARGET_P99_MS
    said = "met" if met else "**not met**"
    if report["disturbed"]:
        said += " (from a disturbed run)"
    fraction = report["delivered"] / report["expected"] if report["expected"] else 0
    return f"{fraction:.4%} delivered, {report['duplicates']:,} duplicates, p99 {ms(report, 'p99')}", said


def target_row(storms):
    """The storm's line of the targets table."""
    measured = verdict(storms)
    if measured is None:
        return f"| {TARGET_LABEL} | {TARGET_GOAL} | — | no result |"
    return f"| {TARGET_LABEL} | {TARGET_GOAL} | {measured[0]} | {measured[1]} |"


def restored_sentence(storms):
    """What the Socket.IO run's resumes without a session come to, if any."""
    report = storms["reports"].get("streams")
    if not report or "error" in report:
        return ""
    fresh = report["resumes"] - report["recovered"] - report["unfinished"]
    if not fresh:
        return ""
    return paragraph(f"""
        {fresh:,} of Socket.IO's {report['resumes']:,} resumes got a new session rather than the old one
        back: the member joined again, and what was posted meanwhile was lost to it. One way this
        happens: the instance that saw the drop stores the session (`persistSession`, a `SET` in Redis)
        when it notices the disconnect, and a member that reconnects at once can reach the other
        instance, which takes the session (`GETDEL`) before it is there and finds none. Another: the
        member gave up on a resume after 30 s, when the server had already taken the session.
        socket.io-client waits 0.5 to 1.5 s before it reconnects (`reconnectionDelay`, 1 s by default,
        ± half), which leaves the old instance time, at the price of that wait in every resume; the
        members here reconnect at once, for both servers.""")


def slow_sentence(storms):
    """Where parlor's slow resumes fell, and what the kernel dropped meanwhile."""
    report = storms["reports"].get("parlor")
    if not report or "error" in report or not report.get("slow"):
        return ""
    slow, kernel = report["slow"], report.get("kernel", {})
    counters = ", ".join(f"`{name}` {kernel.get(name, 0):,}" for name in KERNEL_COUNTERS)
    if not slow["resumes"]:
        where = f"None of parlor's resumes took over {slow['over_ms']} ms to catch up."
    else:
        most = ", ".join(f"{count:,} in second {second}" for second, count in slow["most"])
        rest = slow["resumes"] - slow["in_the_resume"]
        after = f", for the other {rest:,} a live message after it did" if rest else ""
        where = f"""
            {slow['resumes']:,} of parlor's {report['resumes']:,} resumes took over {slow['over_ms']} ms to
            catch up; for {slow['in_the_resume']:,} of them the resume itself (connecting and joining, up
            to `replayed`) took that long{after}. They fell in
            {slow['seconds_with_slow']:,} of the storm's seconds, the most {most}: bunched in a few
            seconds, they are a stall of the machine or of an instance; spread over many, a steady cost."""
    return paragraph(f"""
        {where} The kernel's counts over parlor's run (machine-wide, `/proc/net/netstat`): {counters};
        a SYN dropped for a full listen queue is sent again a second later, which a resume's
        time then holds.""")


def per_server(storms, field, unit=""):
    """`field` of each server's report where it is not zero, as "name N unit"."""
    return [
        f"{storms['names'][key]} {report[field]:,}{unit}"
        for key, report in storms["reports"].items()
        if "error" not in report and report.get(field)
    ]


def unfinished_sentence(storms):
    """The resumes that never completed, by server, if any."""
    unfinished = per_server(storms, "unfinished")
    if not unfinished:
        return ""
    return paragraph(f"""
        Resumes that never completed, their member still waiting for an answer or trying again when the
        run ended: {'; '.join(unfinished)}. Each counts as never caught up.""")


def publisher_sentence(storms):
    """Which servers ended publishers' connections, if any did."""
    ended = per_server(storms, "publisher_reconnects", " times")
    if not ended:
        return ""
    return paragraph(f"""
        The server ended a publisher's connection ({'; '.join(ended)}): the publisher connected
        again, and its sends not acked by then count as published, not acked.""")


def closed_sentence(storms):
    """The Redis connections closed for the output buffer limit, if any."""
    closed = []
    for key, report in storms["reports"].items():
        for command, count in report.get("redis_clients_closed", {}).items():
            closed.append(f"{storms['names'][key]}: {count:,} (last command `{command}`)")
    if not closed:
        return ""
    return paragraph(f"""
        Redis closed connections whose unread replies passed 1 GiB: {'; '.join(closed)}. The server
        fell behind reading Redis's answers, which then piled up in Redis.""")


def exited_sentence(storms):
    """The instances that exited during the storm, if any did."""
    gone = [
        f"{storms['names'][key]} on port {instance['port']} (exit code {instance['code']}"
        + (f"; its log's last error: `{instance['error']}`)" if instance["error"] else ")")
        for key, report in storms["reports"].items()
        for instance in report.get("exited", [])
    ]
    if not gone:
        return ""
    return paragraph(f"""
        Instances that exited during the storm: {'; '.join(gone)}. Members' later attempts to
        connect there failed, and were tried again on a random instance.""")


def section(storms, mode):
    """The "Reconnect storm" section of BENCHMARKS.md."""
    if not storms:
        return ""
    sizes = storms["sizes"]
    members = sizes["rooms"] * sizes["members"]
    setup = paragraph(f"""
        {members:,} members in {sizes['rooms']} rooms of {sizes['members']}, over two instances on a fresh
        Redis (fresh instances and Redis for each server), each member joining at first on a random
        instance. Once the members' first joins are quiet (no frame read for a second: parlor tells each
        room's members of each join, a million `member` frames here, which take it seconds), during
        {sizes['seconds']} s each member drops its connection every 10 to 20 s
        (uniformly at random, 15 s on average; the first drop anywhere in that span, so that drops are
        spread evenly): the socket is closed, without a WebSocket close frame or a Socket.IO
        disconnect. It reconnects at once to a random instance and resumes: on parlor with the last id
        and epoch it saw (`since`, `epoch`); on Socket.IO, whose connection state recovery is on
        (`@socket.io/redis-streams-adapter`, `maxDisconnectionDuration` 2 minutes, far above any gap
        here), with a CONNECT packet carrying the session's `pid` and the last `offset` it saw.
        Meanwhile {PUBLISHERS} publishers, which never drop, half on each instance, post
        {sizes['rate']:,} messages a second in all, each to a random room, paced by the clock from
        {WARMUP_SECONDS} s before the storm (so that every room has a message, and every member an
        offset) to its end. One process (examples/storm.rs) runs every member and publisher. A member
        dropped without a goodbye stays in its room's presence for parlor's `--leave-grace-ms` (1.5 s by
        default) and, resumed within it, never leaves: a resume costs its room no `member` frames
        (before the grace, each resume told its room's 100 members of a leave and a join, five times
        the frames of the messages themselves).""")
    measures = paragraph("""
        **Delivered**: for each member, the acked messages of its room it received at least once, out of
        every acked message times every member of its room. **Duplicates**: deliveries of a message the
        member already held. **Reordered**: deliveries of a message after a later one of the same
        publisher (neither server promises an order between publishers). **Resumes**: drops, each
        followed by a reconnection ("never caught up" counts those that never completed one, too); **sessions restored**: those where the server went on from where the member was
        (parlor: the same epoch, not truncated; Socket.IO: the CONNECT answer's `pid` is the one sent,
        `socket.recovered`); otherwise the member joins afresh. **Reconnect to caught up**, the same
        measure for both: from the drop until the member holds every message of its room acked before
        its resume completed (and after its previous resume completed; earlier ones count for that
        one). A resume completes at parlor's `replayed` frame, which ends the replay; at Socket.IO's
        CONNECT answer, which follows the missed packets it replays; and, for a session Socket.IO could
        not restore, at the ack of the join sent again. A resume after which one of those messages
        never arrived is never caught up: it sorts above every time, and a percentile that falls on
        one reads "never". **Attempts failed**: connections or resumes that failed or took more
        than 30 s, each tried again on a random instance 100 ms later. **Redis peak memory** is
        `used_memory_peak`, replies waiting to be read included (a client whose waiting replies pass
        1 GiB is disconnected: `client-output-buffer-limit`, so that a server falling behind cannot
        take the machine's memory; a server may not survive that, and the text below says when an
        instance exited). The times include the TCP and WebSocket handshakes; the members, the
        publishers, both instances and Redis share the machine's cores.""")
    measured = verdict(storms)
    target = paragraph(f"""
        **Target**, for parlor: {TARGET_LABEL} {TARGET_GOAL}. Measured: {measured[0]}; {measured[1]}.""") if measured else ""
    if mode == "quick":
        target += "\n\n" + paragraph("(A quick run: smaller than the sizes the target is stated for.)")
    history = paragraph("""
        In `make bench-storm` (the fault suite's storm alone, 1,000 members), before the listener's
        backlog was raised from std's 128 to 4,096, reconnect to `replayed` had p99 1,076.8 ms: the kernel
        dropped the SYNs of clients arriving together (`nstat TcpExtListenOverflows` rose) and each waited
        a second for its retry. For scale, AnyCable's published run of this shape gives replay p99 6.1 s
        for AnyCable and 4.6 s for Socket.IO with connection state recovery (their network and sizes, not
        this machine's).""")
    parts = ["## Reconnect storm", setup, table(storms), measures, target, slow_sentence(storms),
             restored_sentence(storms), unfinished_sentence(storms), closed_sentence(storms),
             exited_sentence(storms),
             publisher_sentence(storms), history]
    return "\n\n".join(part for part in parts if part) + "\n"
