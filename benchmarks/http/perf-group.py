#!/usr/bin/env python3
# Groups two perf recordings by assembly (CPU samples per 1,000 requests), A against B, largest difference first.
# Used by profile.sh. JIT frames are named "[Assembly] Namespace.Type::Method" through the runtime's perf map.
# Usage: perf-group.py A.data B.data A_REQUESTS B_REQUESTS [TOP]
import collections, re, subprocess, sys

def load(path):
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "dso,sym", "--stdio", "-g", "none", "-n"],
                         capture_output=True, text=True).stdout
    groups = collections.Counter(); total = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+)\s+(\S.*?)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        n = int(m.group(2)); dso = m.group(3); kind = m.group(4); sym = m.group(5); total += n
        if kind == "k":
            group = "kernel"
        elif "libcoreclr" in dso:
            group = "coreclr(GC/runtime)"
        elif "sqlite" in dso:
            group = "sqlite"
        elif "JIT" in dso or ".dll" in dso:
            mm = re.search(r"\[([A-Za-z][\w.]*)\] ([\w.`+<>]+)", sym)
            if not mm:
                group = "jit-stub/other"
            elif mm.group(1).startswith("PipelineGateway"):
                group = "PGW:" + ".".join(mm.group(2).split(".")[1:3])
            elif mm.group(1) == "System.Private.CoreLib":
                group = "CoreLib:" + ".".join(mm.group(2).split(".")[:3])
            else:
                group = mm.group(1)
        else:
            group = "native:" + dso
        groups[group] += n
    return groups, total

a, ta = load(sys.argv[1]); b, tb = load(sys.argv[2])
ra = float(sys.argv[3]); rb = float(sys.argv[4])
top = int(sys.argv[5]) if len(sys.argv) > 5 else 45
keys = sorted(set(a) | set(b), key=lambda k: -(a[k] / ra - b[k] / rb))
print(f"{'category':45s} {'A smp/kreq':>10s} {'B smp/kreq':>10s} {'diff':>8s}")
print(f"{'TOTAL':45s} {1000*ta/ra:10.1f} {1000*tb/rb:10.1f} {1000*(ta/ra-tb/rb):8.1f}")
for k in keys[:top]:
    print(f"{k:45s} {1000*a[k]/ra:10.1f} {1000*b[k]/rb:10.1f} {1000*(a[k]/ra-b[k]/rb):8.1f}")
