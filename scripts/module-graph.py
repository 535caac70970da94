#!/usr/bin/env python3
"""The import graph between the top-level modules of src/, and the layering rules it must keep.

Reads every src/**/*.rs (but src/sim/, the simulators, and src/fuzzing.rs, the fuzz entry points),
finds each `crate::x...` path in code (`use crate::...` trees and inline `crate::x::...` paths;
comments, doc comments and string literals are left out, and so are `#[cfg(test)]` items unless
--tests), and draws an edge from the file's top-level module to `x`.

Prints the edges with their counts, then the strongly connected components (import circles) with
the file:line of every edge inside each circle, then the rules (ARCHITECTURE.md, issue 20):
  - no import circle among the modules of src/;
  - the ports (src/ports.rs or src/ports/) import no adapter;
  - the cycle (src/sync/) names no concrete adapter.
The adapters are ADAPTERS below.

    scripts/module-graph.py            # print the graph, the circles and the rules
    scripts/module-graph.py --check    # the same; exit 1 when a rule is broken
    scripts/module-graph.py --dot      # the graph for graphviz (dot -Tsvg)

Python 3, standard library only. Run from anywhere: paths are relative to the repository.
"""

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
# Left out of the graph: the simulators (they import nothing outside src/sim/ and are nobody's
# dependency but the tests', demo's and the scale harness's) and the fuzz entry points.
SKIP_DIRS = {"sim"}
SKIP_FILES = {"fuzzing.rs"}
# The concrete adapters: what implements a port against the outside world.
ADAPTERS = ("chatapp", "kommo", "store")
PORTS = "ports"
CYCLE = "sync"


def strip(text):
    """The text with comments and the contents of string and char literals blanked (newlines kept,
    so offsets and line numbers stay put)."""
    out = list(text)
    n = len(text)
    i = 0

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    def ident(k):
        return 0 <= k < n and (text[k].isalnum() or text[k] == "_")

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif c == "r" and (not ident(i - 1) or (text[i - 1] == "b" and not ident(i - 2))):
            m = re.match(r'r(#*)"', text[i:])
            if not m:
                i += 1
                continue
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j
            blank(i + len(m.group(0)), j)
            i = j + len(end)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(i + 1, min(j, n))
            i = j + 1
        elif c == "'":
            # a char literal ('x', '\n', '\u{1F600}') or a lifetime ('a)
            if text.startswith("\\", i + 1):
                j = text.find("'", i + 3)
                j = n if j < 0 else j
                blank(i + 1, j)
                i = j + 1
            elif i + 2 < n and text[i + 2] == "'":
                blank(i + 1, i + 2)
                i += 3
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def drop_tests(code):
    """`code` (already stripped) with each `#[cfg(test)]` item blanked."""
    out = list(code)
    for m in re.finditer(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", code):
        j = m.end()
        while j < len(code) and code[j] not in "{;":
            j += 1
        if j < len(code) and code[j] == "{":
            depth = 0
            while j < len(code):
                depth += {"{": 1, "}": -1}.get(code[j], 0)
                j += 1
                if depth == 0:
                    break
        for k in range(m.start(), min(j + 1, len(code))):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out)


def split_top(s):
    """`s` split at the commas outside braces, with each piece's offset in `s`."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(s):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append((start, s[start:k]))
            start = k + 1
    parts.append((start, s[start:]))
    return [(off + len(p) - len(p.lstrip()), p.strip()) for off, p in parts if p.strip()]


def squash(s):
    s = re.sub(r"\s+", " ", s).replace("{ ", "{").replace(" }", "}").replace(":: ", "::")
    return re.sub(r",\s*}", "}", s)


def references(code):
    """(offset, top-level module, text) of every `crate::` path in `code`."""
    refs, taken = [], []
    use = re.compile(r"\buse\s+crate\s*::\s*")
    for m in use.finditer(code):
        end = code.find(";", m.end())
        end = len(code) if end < 0 else end
        taken.append((m.start(), end))
        tree = code[m.end() : end]
        if tree.lstrip().startswith("{"):
            lead = len(tree) - len(tree.lstrip())
            inner = tree.lstrip()[1 : tree.lstrip().rfind("}")]
            items = [(m.end() + lead + 1 + off, item) for off, item in split_top(inner)]
        else:
            items = [(m.end(), tree.strip())]
        for off, item in items:
            top = re.match(r"[A-Za-z_][A-Za-z0-9_]*", item)
            if top and top.group(0) != "self":
                refs.append((off, top.group(0), "crate::" + squash(item)))
    path = re.compile(r"\bcrate\s*::\s*([A-Za-z_][A-Za-z0-9_]*)((?:\s*::\s*[A-Za-z_][A-Za-z0-9_]*)*)")
    for m in path.finditer(code):
        if any(a <= m.start() < b for a, b in taken):
            continue
        refs.append((m.start(), m.group(1), squash(m.group(0))))
    return sorted(refs)


def module_of(path):
    rel = path.relative_to(SRC)
    if len(rel.parts) == 1:
        return None if rel.name in ("lib.rs", "main.rs") else rel.stem
    return rel.parts[0]


def collect(with_tests):
    """edges[(from, to)] = [(file:line, text), ...] and the set of modules."""
    edges, modules = defaultdict(list), set()
    for path in sorted(SRC.rglob("*.rs")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in SKIP_DIRS or (len(rel.parts) == 1 and rel.name in SKIP_FILES):
            continue
        here = module_of(path)
        if here is None:
            continue
        modules.add(here)
        text = path.read_text(encoding="utf-8")
        code = strip(text)
        if not with_tests:
            code = drop_tests(code)
        for off, to, what in references(code):
            if to == here or to in ("self", "super", "crate"):
                continue
            line = text.count("\n", 0, off) + 1
            edges[(here, to)].append((f"{path.relative_to(ROOT)}:{line}", what))
    return edges, modules | {b for _, b in edges}


def circles(nodes, edges):
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    succ = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(out)


def evidence(items, indent="      "):
    return "\n".join(f"{indent}{where}  {what}" for where, what in items)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a layering rule is broken")
    ap.add_argument("--tests", action="store_true", help="count #[cfg(test)] code as well")
    ap.add_argument("--dot", action="store_true", help="print the graph in graphviz's dot language")
    args = ap.parse_args()

    edges, modules = collect(args.tests)
    if args.dot:
        print("digraph modules {")
        for (a, b), items in sorted(edges.items()):
            print(f'  "{a}" -> "{b}" [label="{len(items)}"];')
        print("}")
        return 0

    scope = "code and #[cfg(test)] code" if args.tests else "non-test code"
    print(f"Module graph of src/ ({scope}; src/sim/ and src/fuzzing.rs left out)")
    print("edges (from -> to(count of crate:: paths)):")
    width = max(len(m) for m in modules)
    for a in sorted(modules):
        outs = sorted((b, len(items)) for (x, b), items in edges.items() if x == a)
        shown = " ".join(f"{b}({n})" for b, n in outs) or "(nothing)"
        print(f"  {a:<{width}} -> {shown}")
    print(f"{len(modules)} modules, {len(edges)} edges")

    comps = circles(modules, edges)
    print(f"\ncircles (strongly connected components): {len(comps)}")
    for k, comp in enumerate(comps, 1):
        print(f"circle {k}: {', '.join(comp)}")
        for (a, b), items in sorted(edges.items()):
            if a in comp and b in comp:
                print(f"  {a} -> {b} ({len(items)})")
                print(evidence(items))

    broken = []
    print("\nrules:")
    print(f"  {'ok  ' if not comps else 'FAIL'} no import circle among the modules of src/")
    if comps:
        broken.append("circle")
    ports = [(b, items) for (a, b), items in sorted(edges.items()) if a == PORTS and b in ADAPTERS]
    print(f"  {'ok  ' if not ports else 'FAIL'} the ports import no adapter ({', '.join(ADAPTERS)})")
    for b, items in ports:
        print(f"    {PORTS} -> {b}\n{evidence(items)}")
    if ports:
        broken.append("ports")
    cyc = [(b, items) for (a, b), items in sorted(edges.items()) if a == CYCLE and b in ADAPTERS]
    count = sum(len(items) for _, items in cyc)
    print(
        f"  {'ok  ' if not cyc else 'FAIL'} src/{CYCLE}/ names no concrete adapter"
        + (f" (it names one {count} times)" if cyc else "")
    )
    for b, items in cyc:
        print(f"    {CYCLE} -> {b}\n{evidence(items)}")
    if cyc:
        broken.append("sync")
    if args.check and broken:
        print(f"\nmodule-graph: broken: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
