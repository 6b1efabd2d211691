#!/usr/bin/env python3
"""One role of a LAVA MultiNode live migration with vfio-migtest.

The `destination` role starts `vfio-migtest receive`, sends its address
(`lava-send migration-address address=HOST:PORT`), waits for the source to
start (`lava-wait migration-start`), waits for the migration to end, reports
and sends `migration-done`. The `source` role waits for the address, sends
`migration-start`, runs `vfio-migtest migrate`, reports, and waits for
`migration-done`. Each role reports itself as `lava-test-case` lines: the
migration's result, and downtime (ms), throughput (MB/s) and precopy
iterations as measurements.
"""

import argparse
import json
import os
import socket
import subprocess
import sys

CACHE = "/tmp/lava_multi_node_cache.txt"


def lava(*args):
    subprocess.run(list(args), check=True)


def wait_for(message):
    """lava-wait, then the message's key=value pairs from the cache file."""
    lava("lava-wait", message)
    values = {}
    path = os.environ.get("LAVA_MULTI_NODE_CACHE", CACHE)
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep:
                # lava-wait-all prefixes the sender: `device:key=value`.
                values[key.rpartition(":")[2]] = value
    return values


def report(role, record_path, exit_code):
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        record = {"result": "fail", "reason": f"no record: {e}", "summary": None}
    ok = exit_code == 0 and record.get("result") == "pass"
    name = f"live-migration-{role}"
    lava("lava-test-case", name, "--result", "pass" if ok else "fail")
    if not ok:
        print(f"{name}: {record.get('reason')}", file=sys.stderr)
    summary = record.get("summary") or {}
    if summary:
        total = summary["precopy_bytes"] + summary["stop_copy_bytes"]
        secs = max(summary["total_ns"], 1) / 1e9
        measures = [
            ("throughput", f"{total / 1e6 / secs:.1f}", "MB/s"),
            ("precopy-iterations", str(summary["precopy_iterations"]), "iterations"),
        ]
        if summary.get("downtime_ns") is not None:
            measures.append(("downtime", f"{summary['downtime_ns'] / 1e6:.3f}", "ms"))
        for what, value, units in measures:
            lava(
                "lava-test-case", f"{role}-{what}", "--result", "pass",
                "--measurement", value, "--units", units,
            )
    return ok


def my_address(given):
    if given:
        return given
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        # No packet is sent: this only picks the outgoing interface.
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]


def destination(args):
    listen = f"{args.listen_address or '0.0.0.0'}:{args.port}"
    cmd = [args.vfio_migtest, "receive", "--device", args.device, "--listen", listen,
           "--json", args.record, "--timeout", args.timeout] + args.extra
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        return run_destination(args, proc)
    finally:
        # A role that stops early must not leave the receiver waiting.
        if proc.poll() is None:
            proc.terminate()
            proc.wait()


def run_destination(args, proc):
    first = proc.stdout.readline().strip()
    if not first.startswith("listening on "):
        proc.wait()
        lava("lava-test-case", "live-migration-destination", "--result", "fail")
        lava("lava-send", "migration-address", "address=none")
        return False
    port = first.rpartition(":")[2]
    lava("lava-send", "migration-address", f"address={my_address(args.address)}:{port}")
    wait_for("migration-start")
    for line in proc.stdout:
        print(line, end="")
    ok = report("destination", args.record, proc.wait())
    lava("lava-send", "migration-done", f"result={'pass' if ok else 'fail'}")
    return ok


def source(args):
    address = wait_for("migration-address").get("address", "none")
    lava("lava-send", "migration-start")
    if address == "none":
        lava("lava-test-case", "live-migration-source", "--result", "fail")
        print("the destination could not listen", file=sys.stderr)
        return False
    cmd = [args.vfio_migtest, "migrate", "--device", args.device, "--to", address,
           "--json", args.record, "--timeout", args.timeout] + args.extra
    ok = report("source", args.record, subprocess.run(cmd).returncode)
    done = wait_for("migration-done")
    print(f"the destination reported {done.get('result')}")
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--role", required=True, choices=["source", "destination"])
    p.add_argument("--device", default="sim")
    p.add_argument("--vfio-migtest", default="vfio-migtest")
    p.add_argument("--record", required=True, help="where vfio-migtest writes --json")
    p.add_argument("--port", default="47000")
    p.add_argument("--listen-address", default="", help="destination: address to listen on")
    p.add_argument("--address", default="", help="destination: address the source connects to")
    p.add_argument("--timeout", default="10m")
    p.add_argument("extra", nargs="*", help="more vfio-migtest arguments")
    args = p.parse_args()
    ok = destination(args) if args.role == "destination" else source(args)
    # The results are in lava-test-case lines; a failed migration is not a
    # failed step.
    return 0 if ok or os.environ.get("LAVA_STRICT_EXIT") != "1" else 1


if __name__ == "__main__":
    sys.exit(main())
