#!/usr/bin/env python3
"""Redis time per presence change in a room that already holds 20,000
users: joins and leaves of 1,000 more users through src/lua/presence.lua,
on a redis-server of its own, read from Redis's own command statistics
(usec_per_call of EVALSHA).

    python3 bench/presence_cost.py
"""
import os
import socket
import subprocess
import time

USERS = 20_000
CHANGES = 1_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    scripts = [os.path.join(here, "..", "src", "lua", "presence.lua")]
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    cli = ["redis-cli", "-p", str(port)]
    try:
        for _ in range(50):
            if subprocess.run(cli + ["PING"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        for script in scripts:
            subprocess.run(cli + ["FLUSHALL"], capture_output=True, check=True)
            sha = subprocess.run(
                cli + ["SCRIPT", "LOAD", open(script).read()],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
            now = int(time.time() * 1000)
            keys = ("p:{r}:presence", "p:{r}:present")

            def change(op, user):
                return resp("EVALSHA", sha, 2, *keys, op, now, now + 3_600_000,
                            7_200_000, "p:{r}:live", "{}", "instance", user)

            fill = b"".join(change("join", f"u{i}") for i in range(USERS))
            subprocess.run(cli + ["--pipe"], input=fill, capture_output=True, check=True)
            subprocess.run(cli + ["CONFIG", "RESETSTAT"], capture_output=True, check=True)
            churn = b"".join(
                change("join", f"u{i}") + change("leave", f"u{i}")
                for i in range(USERS, USERS + CHANGES)
            )
            subprocess.run(cli + ["--pipe"], input=churn, capture_output=True, check=True)
            stats = subprocess.run(cli + ["INFO", "commandstats"], capture_output=True, text=True).stdout
            line = next(l for l in stats.splitlines() if l.startswith("cmdstat_evalsha:"))
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            print(f"{os.path.relpath(script)}: {fields['calls']} joins and leaves among "
                  f"{USERS:,} users, {float(fields['usec_per_call']):.1f} µs of Redis each")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
