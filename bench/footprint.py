"""Instructions and code footprint per proxied call, counted by callgrind: gantry against
nginx as a plain proxy, in the same run.

At concurrency 1 a proxy's CPU time per call is set less by how many instructions it runs
than by how much code it runs: the upstream and the client run between two calls and
evict the proxy's code from the caches, so every call fetches it again. Wall-clock
benchmarks (bench/run.py) see that only through the machine's noise; callgrind counts it
the same on any machine, whatever else runs.

Each proxy stands in front of the built-in demo upstream over Streamable HTTP (`gantry
demo-upstream --http`, not measured). One client sends `tools/call` echo requests with
unique ids in one 2025-11-25 session, one at a time, and checks every answer: CALLS
unmeasured, then CALLS with callgrind counting. For each proxy it prints:

- instructions per call, on every thread together and on the busiest one;
- the code run on most calls: 64-byte lines (what the instruction cache holds) and 4 KiB
  pages (what the TLB maps) holding an instruction executed at least CALLS/2 times;
- those lines by crate (first path segment of the function) and the functions holding most.

Run through `bash bench/run.sh footprint`, or directly:

    python bench/footprint.py [GANTRY_BINARY ...]    (default: the release build)

Each binary is measured in turn; nginx once. With BENCH_FOOTPRINT_KEEP=DIR the callgrind
profiles are kept in DIR (one folder per proxy, one file per thread), for
`callgrind_annotate --inclusive=yes FILE`. Needs valgrind (Debian's `valgrind`). Under
valgrind the API key's SHA-256 runs in software (valgrind hides the CPU's SHA extensions):
its lines are counted, and are listed under `sha2`.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import run

CALLS = int(os.environ.get("BENCH_FOOTPRINT_CALLS", "1000"))
KEEP = os.environ.get("BENCH_FOOTPRINT_KEEP")
LINE, PAGE = 64, 4096
TOP = 15


class Profile:
    """One thread's callgrind file (`--dump-instr=yes`): instructions executed, by address."""

    def __init__(self, path: Path):
        self.ir = collections.Counter()  # (object, address) -> instructions executed
        self.fn = {}  # (object, address) -> function name
        names = {"fn": {}, "ob": {}}
        fn = ob = "?"
        last = [0, 0]
        positions = 1
        call_cost = False
        totals = None
        for line in path.read_text(errors="replace").splitlines():
            if not line:
                continue
            if line[0].isalpha():
                key, _, rest = line.partition("=")
                if key in ("fn", "cfn", "ob", "cob"):
                    # Names are compressed: "(id) name" the first time, "(id)" after.
                    m = re.match(r"\((\d+)\)(?: (.*))?", rest)
                    table = names[key[-2:]]
                    if m and m.group(2) is not None:
                        table[m.group(1)] = m.group(2)
                    name = table.get(m.group(1), "?") if m else rest
                    if key == "fn":
                        fn = name
                    elif key == "ob":
                        ob = name
                elif key == "calls":
                    call_cost = True  # the next cost line is the call's inclusive cost
                elif line.startswith("positions:"):
                    positions = len(line.split()) - 1
                elif line.startswith("totals:"):
                    totals = int(line.split()[1])
                continue
            if not (line[0].isdigit() or line[0] in "+-*"):
                continue
            fields = line.split()
            # Positions are absolute, relative to the previous line's ("+n", "-n") or equal ("*").
            for i, f in enumerate(fields[:positions]):
                last[i] = last[i] if f == "*" else last[i] + int(f, 0) if f[0] in "+-" else int(f, 0)
            if call_cost:
                call_cost = False
                continue
            cost = int(fields[positions]) if len(fields) > positions else 0
            if cost:
                self.ir[(ob, last[0])] += cost
                self.fn[(ob, last[0])] = fn
        if totals is not None and totals != self.total():
            raise RuntimeError(f"{path}: read {self.total()} instructions, callgrind counted {totals}")

    def total(self) -> int:
        return sum(self.ir.values())

    def hot_lines(self, min_runs: int) -> dict:
        """Code lines holding an instruction executed at least `min_runs` times -> function."""
        hottest = collections.Counter()
        owner = {}
        for (ob, addr), n in self.ir.items():
            key = (ob, addr // LINE)
            if n > hottest[key]:
                hottest[key], owner[key] = n, self.fn[(ob, addr)]
        return {k: owner[k] for k, n in hottest.items() if n >= min_runs}


def crate(function: str, obj: str) -> str:
    name = function.lstrip("<&*( ")
    if name.startswith("dyn "):
        name = name[4:]
    if "::" not in name:  # C: mimalloc, libc, nginx itself
        return "mimalloc" if name.startswith(("mi_", "_mi_")) else Path(obj).name
    return re.match(r"[A-Za-z0-9_]*", name).group(0) or name[:20]


def serve_calls(port: int, path: str, key: str | None, pid: int, tag: str):
    """A session, then 2 x CALLS calls; callgrind in process `pid` counts the second half."""
    session = run.initialize(port, path, key)
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Mcp-Session-Id": session or "", "MCP-Protocol-Version": "2025-11-25"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(i: int):
        text = f"{tag} {i}"
        conn.request("POST", path, json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"message": text}}}), headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or text.encode() not in body:
            raise RuntimeError(f"{tag}: call {i} answered {r.status}: {body[:200]!r}")

    def instrument(state: str):
        # callgrind_control exits 0 even when it finds no such process: read what it says.
        said = subprocess.run(["callgrind_control", f"--instr={state}", str(pid)], capture_output=True, text=True)
        if said.returncode != 0 or "Error" in said.stdout + said.stderr:
            raise RuntimeError(f"{tag}: callgrind_control --instr={state} {pid}: {said.stdout}{said.stderr}")

    for i in range(1, CALLS + 1):
        call(i)
    instrument("on")
    for i in range(CALLS + 1, 2 * CALLS + 1):
        call(i)
    instrument("off")
    conn.close()


def measure(label: str, binary: str | None, tmp: Path, upstream_port: int) -> list[Profile]:
    # Written straight into BENCH_FOOTPRINT_KEEP when set; file names carry the pid.
    out = (Path(KEEP) if KEEP else tmp) / re.sub(r"\W", "-", label)
    out.mkdir(parents=True, exist_ok=True)
    prefix = ("valgrind", "--tool=callgrind", "--separate-threads=yes", "--instr-atstart=no",
              "--dump-instr=yes", f"--callgrind-out-file={out}/cg.%p")
    if binary is None:
        proxy = run.Nginx(upstream_port, tmp, prefix)
        pid, path, key = proxy.worker, "/mcp", None
    else:
        proxy = run.Gantry(f'[upstreams.demo]\ntransport = "streamable-http"\n'
                           f'url = "http://127.0.0.1:{upstream_port}/mcp"\n', tmp, binary, prefix)
        pid, path, key = proxy.proc.pid, "/mcp/demo", proxy.key
    try:
        print(f"{label}: {CALLS} calls unmeasured, {CALLS} counted …", file=sys.stderr, flush=True)
        serve_calls(proxy.port, path, key, pid, label)
    finally:
        proxy.stop()
    files = sorted(out.glob(f"cg.{pid}-*"))
    if not files:
        raise RuntimeError(f"{label}: callgrind wrote no profile in {out}")
    return [Profile(f) for f in files]


def report(label: str, threads: list[Profile], nginx: dict | None) -> dict:
    busiest = max(threads, key=Profile.total)
    lines = busiest.hot_lines(CALLS // 2)
    pages = {(ob, line * LINE // PAGE) for ob, line in lines}
    row = {"label": label, "instructions": sum(t.total() for t in threads) / CALLS,
           "busiest": busiest.total() / CALLS, "lines": len(lines), "pages": len(pages)}
    ratio = (lambda k: f"{row[k] / nginx[k]:5.1f}x") if nginx else (lambda k: f"{'':6}")
    print(f"{label:<24} {row['instructions']:>10,.0f} {ratio('instructions')} {row['busiest']:>10,.0f} "
          f"{row['lines']:>7,} {ratio('lines')} {row['lines'] * LINE / 1024:>6,.0f} {row['pages']:>6,} {ratio('pages')}")
    row["crates"] = collections.Counter(crate(f, ob) for (ob, _), f in lines.items())
    row["functions"] = collections.Counter(lines.values())
    return row


def main():
    binaries = sys.argv[1:] or [run.GANTRY]
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install valgrind nginx)")
    with tempfile.TemporaryDirectory(prefix="gantry-footprint-") as t:
        tmp = Path(t)
        demo, upstream_port = run.start_demo_http()
        try:
            measured = [("nginx (plain proxy)", measure("nginx", None, tmp, upstream_port))]
            for i, binary in enumerate(binaries):
                label = "gantry" if len(binaries) == 1 else f"gantry {i + 1}"
                measured.append((label, measure(label, binary, tmp, upstream_port)))
        finally:
            demo.terminate()
            demo.wait(timeout=10)
    if KEEP:
        print(f"callgrind profiles kept in {KEEP}", file=sys.stderr)
    print(f"\ncallgrind, {CALLS} tools/call counted per proxy at concurrency 1, in front of the built-in demo "
          f"upstream over Streamable HTTP;\ncode run on most calls = 64-byte lines (and their 4 KiB pages) holding "
          f"an instruction executed >= {CALLS // 2} times, on the busiest thread\n")
    print(f"{'':<24} {'instr/call':>10} {'/nginx':>6} {'busiest':>10} {'lines':>7} {'/nginx':>6} {'KiB':>6} "
          f"{'pages':>6} {'/nginx':>6}")
    rows = []
    for label, threads in measured:
        rows.append(report(label, threads, rows[0] if rows else None))
    for label, binary in zip((label for label, _ in measured[1:]), binaries):
        print(f"{label}: {binary}")
    for row in rows:
        print(f"\n{row['label']}: code lines run on most calls, by crate")
        print("  " + ", ".join(f"{c} {n}" for c, n in row["crates"].most_common(TOP)))
        print(f"{row['label']}: the {TOP} functions holding most of them (lines)")
        for f, n in row["functions"].most_common(TOP):
            print(f"  {n:5d}  {f[:140]}")


if __name__ == "__main__":
    main()
