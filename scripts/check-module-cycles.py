#!/usr/bin/env python3
"""Reports import cycles between the modules of one Rust crate.

    scripts/check-module-cycles.py conf/src [--edges]

Each file under SRC is a module (`lib.rs`/`main.rs` is the crate root,
`a/mod.rs` and `a.rs` are `a`, `a/b.rs` is `a::b`; `src/bin/` is left out:
those are other crates). A module depends on another when its code names a
path into it: a `use` item (`crate::`, `super::`, `self::` or a child
module's name), a `crate::`/`super::`/`self::` path in an expression or a
type, or such a path in a string (serde's `skip_serializing_if = "..."`).
A path counts for the deepest module it reaches, so `crate::a::b::C` is a
dependency on `a::b` when that module exists and on `a` otherwise. Comments
(doc links included) do not count, nor do `mod x;` declarations: declaring a
child is not using it.

Prints every module with its layer (0 = depends on no other module; else one
more than the highest layer it depends on), then every cycle. Exits 1 when
there is a cycle, 0 otherwise. `--edges` also prints each dependency.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = "crate"


def module_of(src: Path, file: Path) -> str:
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts in (["lib"], ["main"]):
        return ROOT
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts)


def parent_of(module: str) -> str:
    if module == ROOT or "::" not in module:
        return ROOT
    return module.rsplit("::", 1)[0]


def strip(text: str) -> tuple[str, list[str]]:
    """Removes comments and literals; returns the code and the strings."""
    out: list[str] = []
    strings: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif m := re.match(r'b?r(#*)"', text[i:]) if c in "br" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) else None:
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j
            strings.append(text[i + m.end() : j])
            out.append('""')
            i = j + len(end)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            strings.append(text[i + 1 : j])
            out.append('""')
            i = j + 1
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^\\'])'", text[i:])):
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out), strings


def use_paths(tree: str) -> list[list[str]]:
    """Expands a use tree (`a::{b, c::{d as e}}`) into its paths."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+\w+", "", tree))
    paths: list[list[str]] = []

    def walk(prefix: list[str], s: str) -> None:
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        for part in filter(None, parts):
            head, brace, rest = part.partition("{")
            path = [p for p in head.split("::") if p]
            if brace:
                walk(prefix + path, rest[: rest.rfind("}")])
            else:
                paths.append(prefix + path)

    walk([], tree)
    return paths


def resolve(
    module: str, inline: int, path: list[str], children: set[str], modules: set[str]
) -> str | None:
    """The module a path names, or None for a path outside the crate.
    `inline` is how deep inside inline `mod x { ... }` blocks the path is."""
    if not path:
        return None
    head, rest = path[0], path[1:]
    if head == ROOT:
        base = ROOT
    elif head in ("super", "self"):
        base = module
        while path and path[0] in ("super", "self"):
            if path[0] == "super":
                if inline:
                    inline -= 1
                else:
                    base = parent_of(base)
            path = path[1:]
        if inline:
            return module
        rest = path
    elif inline:
        return None
    elif head in children:
        base, rest = module, path
    else:
        return None
    found = base
    for seg in rest:
        cand = seg if found == ROOT else f"{found}::{seg}"
        if cand in modules:
            found = cand
        else:
            break
    return found


def inline_modules(code: str) -> list[tuple[int, int]]:
    """The spans of inline `mod x { ... }` blocks."""
    spans = []
    for m in re.finditer(r"\bmod\s+\w+\s*\{", code):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        spans.append((m.end(), i))
    return spans


def scan(src: Path) -> tuple[list[str], dict[str, set[str]]]:
    files = sorted(
        f for f in src.rglob("*.rs") if "bin" not in f.relative_to(src).parts[:1]
    )
    by_module = {module_of(src, f): f for f in files}
    modules = set(by_module)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, file in by_module.items():
        code, strings = strip(file.read_text(encoding="utf-8"))
        code = re.sub(r"pub\s*\(\s*in\s+[\w:]+\s*\)", "pub", code)
        children = {
            m.rsplit("::", 1)[-1]
            for m in modules
            if m != ROOT and parent_of(m) == module and (module != ROOT or "::" not in m)
        }
        spans = inline_modules(code)
        paths: list[tuple[int, list[str]]] = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            paths += [(m.start(), p) for p in use_paths(m.group(1))]
        for m in re.finditer(r"\b(?:crate|super|self)(?:\s*::\s*\w+)+", code):
            paths.append((m.start(), re.sub(r"\s+", "", m.group(0)).split("::")))
        for s in strings:
            if re.fullmatch(r"(?:crate|super|self)(?:::\w+)+", s):
                paths.append((0, s.split("::")))
        for at, p in paths:
            inline = sum(1 for a, b in spans if a <= at < b)
            target = resolve(module, inline, p, children, modules)
            if target and target != module:
                edges[module].add(target)
    return sorted(modules), edges


def cycles(modules: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for m in modules:
        if m not in index:
            visit(m)
    return found


def shortest_loop(start: str, edges: dict[str, list[str]]) -> list[str]:
    """A shortest path from `start` back to itself (breadth first)."""
    back: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in edges[v]:
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(back[path[-1]])
                return [start] + path[::-1][1:] + [start] if v != start else [start, start]
            if w not in back:
                back[w] = v
                queue.append(w)
    return [start]


def layers(modules: list[str], edges: dict[str, set[str]], cyclic: set[str]) -> dict[str, int]:
    memo: dict[str, int] = {}

    def depth(m: str, seen: frozenset[str]) -> int:
        if m in memo:
            return memo[m]
        deps = [d for d in edges[m] if d not in seen]
        memo[m] = 1 + max((depth(d, seen | {d}) for d in deps), default=-1)
        return memo[m]

    for m in modules:
        if m not in cyclic:
            depth(m, frozenset({m}))
    return memo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="the crate's src/ folder")
    ap.add_argument("--edges", action="store_true", help="print every dependency too")
    args = ap.parse_args()
    if not args.src.is_dir():
        print(f"{args.src}: not a folder", file=sys.stderr)
        return 2
    modules, edges = scan(args.src)
    found = cycles(modules, edges)
    cyclic = {m for c in found for m in c}
    depth = layers(modules, edges, cyclic)
    print(f"{args.src}: {len(modules)} modules, {sum(map(len, edges.values()))} dependencies")
    for m in sorted(modules, key=lambda m: (depth.get(m, -1), m)):
        layer = "cycle" if m in cyclic else f"layer {depth[m]}"
        deps = ", ".join(sorted(edges[m])) if args.edges else ""
        print(f"  {layer:>8}  {m}" + (f"  -> {deps}" if deps else ""))
    if not found:
        print("no cycles")
        return 0
    for c in found:
        inner = {m: sorted(edges[m] & set(c)) for m in c}
        print(f"cycle of {len(c)} modules, e.g. {' -> '.join(shortest_loop(c[0], inner))}")
        for m, d in inner.items():
            print(f"  {m} -> {', '.join(d)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
