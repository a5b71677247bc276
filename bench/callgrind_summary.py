"""Summarise one callgrind dump of the gateway, per request (part of bench/run.sh, CALLGRIND=1).

usage: python3 bench/callgrind_summary.py CALLGRIND_OUT REQUESTS [TOP]

Prints the total instructions per request, then where they go:
- by area: the self (exclusive) instructions of every function, grouped by what its symbol
  names (tracing, serde_json, hyper, reqwest, allocation, ...), first match wins;
- the functions with the most inclusive instructions (self + callees) among the gateway's own
  code and a few named hot spots (the runtime's frames, which include everything, are left
  out);
- the functions with the most self instructions.
Costs of recursive calls are counted once per call (as callgrind_annotate does), so an
inclusive figure of a recursive function can exceed the total.
"""
import re
import sys
from collections import defaultdict

# (area, pattern on the symbol or object file); first match wins.
AREAS = [
    ("memcpy/memmove (moves of large futures, buffers)", r"memcpy|memmove|memset"),
    ("allocation (malloc/free/realloc)", r"^(malloc|free|realloc|calloc|_int_\w+|malloc_\w+|tcache\w*|cfree)$"),
    ("tracing / log formatting", r"tracing|sharded_slab|core::fmt|Formatter|write_fmt|nu_ansi|fmt::Write|Display|Debug"),
    ("serde_json", r"serde_json|serde_core|serde::|ryu|itoa"),
    ("url parsing", r"url::|idna|form_urlencoded|percent_encoding"),
    ("hashing (SipHash, hash maps)", r"core::hash|hashbrown|BuildHasher|indexmap"),
    ("prometheus metrics", r"prometheus"),
    ("uuid / rand", r"uuid|rand::|rand_core|getrandom|chacha"),
    ("hyper (HTTP/1 codec, client and server)", r"hyper::|httparse|h2::"),
    ("hyper-util / reqwest / tower (client stack)", r"hyper_util|reqwest|tower"),
    ("http (headers, URIs)", r"http::"),
    ("axum", r"axum"),
    ("tokio (runtime, I/O, timers, sync)", r"tokio|mio::|parking_lot"),
    ("portcullis", r"portcullis"),
    ("bytes / futures / core / alloc / std", r"bytes::|futures|core::|alloc::|std::"),
]
# Functions of these objects that match no area above.
OBJECT_AREAS = [("libc (syscall wrappers, string functions)", r"libc\.so")]


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    names = {"fn": {}, "ob": {}}
    self_cost = defaultdict(int)
    incl_calls = defaultdict(int)
    obj_of = {}
    fn = None
    ob = None
    after_calls = False
    total = None

    def name(kind, value):
        m = re.match(r"\((\d+)\)(?: (.*))?$", value)
        if not m:
            return value
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
            return m.group(2)
        return names[kind].get(m.group(1), value)

    cfn = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                cost = int(line.split()[-1]) if len(line.split()) > 1 else 0
                if after_calls:
                    if cfn != fn:  # a call of a function by itself is not inclusive cost
                        incl_calls[fn] += cost
                    after_calls = False
                else:
                    self_cost[fn] += cost
                continue
            key, _, value = line.partition("=")
            if key == "ob":
                ob = name("ob", value)
            elif key == "fn":
                fn = name("fn", value)
                obj_of.setdefault(fn, ob)
            elif key == "cfn":
                cfn = name("fn", value)
            elif key == "cob":
                name("ob", value)
            elif key == "calls":
                after_calls = True
            elif line.startswith("summary:"):
                total = int(line.split()[1])
    if total is None:
        total = sum(self_cost.values())
    per = lambda v: v / requests
    print(f"{per(total):,.0f} instructions per request ({total:,} over {requests} requests)")

    by_area = defaultdict(int)
    for f, v in self_cost.items():
        area = next((a for a, p in AREAS if re.search(p, f or "")), None)
        if area is None:
            area = next((a for a, p in OBJECT_AREAS if re.search(p, obj_of.get(f) or "")), "other")
        by_area[area] += v
    print("\nself instructions per request, by area:")
    for area, v in sorted(by_area.items(), key=lambda kv: -kv[1]):
        print(f"  {per(v):10,.0f}  {100 * v / total:5.1f} %  {area}")

    incl = {f: self_cost[f] + incl_calls[f] for f in set(self_cost) | set(incl_calls)}
    skip = re.compile(r"tokio::runtime|hyper::proto::h1::dispatch|UpgradeableConnection|"
                      r"handle_connection|Oneshot|RouteFuture|MapIntoResponse|thread_start|"
                      r"start_thread|clone$|call_once|begin_short_backtrace|Handler<|"
                      r"Harness|Core<T,S>|task::raw|poll_catch")
    print(f"\ninclusive instructions per request, top {top} (runtime frames left out):")
    rows = sorted(((v, f) for f, v in incl.items() if not skip.search(f)), reverse=True)
    for v, f in rows[:top]:
        print(f"  {per(v):10,.0f}  {100 * v / total:5.1f} %  {f[:150]}")
    print(f"\nself instructions per request, top {top}:")
    for v, f in sorted(((v, f) for f, v in self_cost.items()), reverse=True)[:top]:
        print(f"  {per(v):10,.0f}  {100 * v / total:5.1f} %  {f[:150]}")


if __name__ == "__main__":
    main()
