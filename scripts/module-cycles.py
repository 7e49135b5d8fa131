#!/usr/bin/env python3
"""Lists import cycles between the top-level modules (files) of each crate.

Usage: scripts/module-cycles.py [CRATE_SRC_DIR ...]   (default: every crate's src/)
A module `a` depends on `b` when a file of `a` names `crate::b` (in a `use` or a path).
Prints each strongly connected component of more than one module, with one edge path per
member; exits 1 if any cycle is found, 0 otherwise. Tests (`#[cfg(test)] mod tests`) are
included: they are code of the module too.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(src: Path):
    """Top-level module name -> its files (mod.rs trees count as one module)."""
    mods = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        if rel.parts[0] in ("main.rs", "lib.rs") and len(rel.parts) == 1:
            name = "crate-root"
        else:
            name = rel.parts[0].removesuffix(".rs")
        mods.setdefault(name, []).append(f)
    return mods


def edges(mods):
    pat = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
    grouped = re.compile(r"\bcrate::\{([^}]*)\}")
    out = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace")
            found = set(pat.findall(text))
            for g in grouped.findall(text):
                found.update(x.strip().split("::")[0] for x in g.split(",") if x.strip())
            for d in found:
                if d in mods and d != m:
                    out[m].add(d)
    return out


def sccs(graph):
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [c for c in comps if len(c) > 1]


def main():
    dirs = [Path(a) for a in sys.argv[1:]] or sorted(
        p for p in ROOT.glob("**/src") if (p.parent / "Cargo.toml").exists() and "target" not in p.parts
    )
    found = False
    for src in dirs:
        graph = edges(modules(src))
        for comp in sccs(graph):
            found = True
            print(f"{src}: cycle between {', '.join(comp)}")
            for m in comp:
                deps = sorted(d for d in graph[m] if d in comp)
                print(f"  {m} -> {', '.join(deps)}")
    if not found:
        print("no import cycles between the modules of " + ", ".join(str(d) for d in dirs))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
