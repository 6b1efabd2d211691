#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Turn a vfio-migtest run into LAVA test results.

Reads the run's results.ktap (one top-level test per case and device,
named <device>__<case>) and, with --json, its results.json for
measurements: per device the longest downtime (ms) and the median save
and resume throughput (MB/s). Prints one `lava-test-case` command per result,
or runs them with --exec (inside a LAVA test shell).

KTAP to LAVA: ok -> pass; ok # SKIP -> skip; ok # XFAIL (a failure an
expectations file lists) -> pass; not ok (# TIMEOUT, # ERROR, # XPASS
included) -> fail. With --exit-code, the runner's exit status is one more
result named `vfio-migtest`: 0 pass, 4 skip (nothing ran), else fail.
"""

import argparse
import json
import re
import shlex
import subprocess
import sys

RESULT = re.compile(r"^(ok|not ok) (\d+) (\S+)(?: # (\S+)(?: (.*))?)?$")
DEVICE = re.compile(r"^# device (\S+): ")


def parse_ktap(lines):
    """(name, result) of every top-level test, and the device slugs in order."""
    results = []
    devices = []
    for line in lines:
        line = line.rstrip("\n")
        device = DEVICE.match(line)
        if device:
            devices.append(device.group(1))
            continue
        m = RESULT.match(line)
        if not m:
            continue
        ok, _, name, directive, _ = m.groups()
        directive = (directive or "").upper()
        if ok == "not ok":
            result = "fail"
        elif directive == "SKIP":
            result = "skip"
        else:
            result = "pass"
        results.append((name, result))
    return results, devices


def throughput(transfers, roles, direction):
    """Median MB/s of the transfers of these roles and direction that moved
    data in chunks of 4 KiB or more (0: mixed), or None. The median keeps
    cases that read a byte at a time, or allocate a 1 GiB buffer for one
    write, from deciding the figure."""
    def bulk(t):
        if t["role"] not in roles or t["direction"] != direction:
            return False
        if t["bytes"] == 0 or t["duration_ns"] == 0:
            return False
        return t["chunk"] == 0 or t["chunk"] >= 4096

    rates = sorted(t["bytes"] * 1e3 / t["duration_ns"]
                   for t in transfers if bulk(t))
    if not rates:
        return None
    middle = len(rates) // 2
    if len(rates) % 2:
        return rates[middle]
    return (rates[middle - 1] + rates[middle]) / 2


def measurements(results, slugs):
    """(name, value, units) per device of a results.json."""
    out = []
    for slug, device in zip(slugs, results.get("devices", [])):
        transfers = [t for case in device.get("cases", [])
                     for t in case.get("transfers", [])]
        downtime = device.get("downtime_ns")
        if downtime is not None:
            out.append((f"{slug}__downtime", downtime / 1e6, "ms"))
        save = throughput(transfers, ("device",), "save")
        if save is not None:
            out.append((f"{slug}__save-throughput", save, "MB/s"))
        resume = throughput(transfers, ("device", "destination"), "resume")
        if resume is not None:
            out.append((f"{slug}__resume-throughput", resume, "MB/s"))
    return out


def commands(args):
    """Every lava-test-case command line, as argument lists."""
    cmds = []
    try:
        with open(args.ktap, encoding="utf-8") as f:
            results, slugs = parse_ktap(f)
    except OSError as e:
        print(f"ktap-to-lava: cannot read {args.ktap}: {e}", file=sys.stderr)
        results, slugs = [], []
    for name, result in results:
        cmds.append(["lava-test-case", name, "--result", result])
    if args.json:
        try:
            with open(args.json, encoding="utf-8") as f:
                run = json.load(f)
        except (OSError, ValueError) as e:
            print(f"ktap-to-lava: cannot read {args.json}: {e}", file=sys.stderr)
            run = {}
        for name, value, units in measurements(run, slugs):
            cmds.append(["lava-test-case", name, "--result", "pass",
                         "--measurement", f"{value:.3f}", "--units", units])
    if args.exit_code is not None:
        overall = {0: "pass", 4: "skip"}.get(args.exit_code, "fail")
        cmds.append(["lava-test-case", "vfio-migtest", "--result", overall])
    return cmds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ktap", help="results.ktap of the run")
    parser.add_argument("--json", help="results.json of the run, for measurements")
    parser.add_argument("--exit-code", type=int,
                        help="the runner's exit status, reported as `vfio-migtest`")
    parser.add_argument("--exec", action="store_true",
                        help="run the lava-test-case commands instead of printing them")
    args = parser.parse_args()
    status = 0
    for cmd in commands(args):
        if args.exec:
            status |= subprocess.run(cmd, check=False).returncode
        else:
            print(shlex.join(cmd))
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
