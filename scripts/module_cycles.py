#!/usr/bin/env python3
"""Import circles between the crate's top-level modules (src/<module>.rs or
src/<module>/, with each domain's gRPC layer, src/<domain>/grpc, a module of
its own), found from `crate::<module>` and `use super::...` paths in
code (comments and #[cfg(test)] modules ignored). Prints each circle with the
edges inside it, and exits 1 when there is one.

    python3 scripts/module_cycles.py          # check
    python3 scripts/module_cycles.py --edges  # also print every edge and where
"""
import glob
import re
import sys


def top_module(path):
    """A top-level module; a domain's `grpc` (the API layer over every
    domain, which may call any of them) counts as a module of its own."""
    parts = path[len("src/"):-len(".rs")].split("/")
    if len(parts) > 1 and parts[1] == "grpc":
        return parts[0] + "::grpc"
    return parts[0]


def code_of(text):
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def main():
    edges = {}
    for path in glob.glob("src/**/*.rs", recursive=True):
        if path.startswith("src/bin/") or path in ("src/main.rs", "src/lib.rs"):
            continue
        here = top_module(path)
        code = code_of(open(path).read())
        targets = set(re.findall(r"\bcrate::(\w+(?:::grpc\b)?)", code))
        if here.endswith("::grpc"):
            # `super::` from a handler reaches its own domain.
            if re.search(r"\bsuper::super::|^use super::(?!super)\w", code, flags=re.M) and "/grpc/" in path:
                targets.add(here.split("::")[0])
            if path.endswith("/grpc.rs") and re.search(r"\bsuper::", code):
                targets.add(here.split("::")[0])
        for target in targets:
            if target not in (here, "proto"):
                edges.setdefault(here, {}).setdefault(target, []).append(path)

    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    if "--edges" in sys.argv:
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f"{a} -> {b}: {', '.join(sorted(edges[a][b]))}")
    for group in circles:
        print("circle:", " ".join(group))
        for a in group:
            for b in sorted(edges.get(a, {})):
                if b in group:
                    print(f"  {a} -> {b}: {', '.join(sorted(edges[a][b]))}")
    if not circles:
        print("no import circles between top-level modules")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
