#!/usr/bin/env python3
"""Checks built plugin modules against docs/PLUGINS.md "Module shape": the only import is
quiver.log (i32, i32, i32) -> (), and the exports are memory, quiver_abi_version () -> i32,
quiver_buffer (i32) -> i32, exactly one of quiver_filter / quiver_transform (i32) -> i32, and
optionally quiver_init (i32) -> i32.

Usage: python3 plugins/scripts/check_wasm.py plugins/target/wasm32-unknown-unknown/release/*.wasm
"""
import sys

KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}
I32 = 0x7F


def leb(data, pos):
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, pos


def name(data, pos):
    n, pos = leb(data, pos)
    return data[pos:pos + n].decode(), pos + n


def parse(data):
    assert data[:4] == b"\0asm" and data[4:8] == b"\1\0\0\0", "not a core wasm module"
    pos = 8
    types, imports, exports, funcs = [], [], [], []
    while pos < len(data):
        sid = data[pos]
        size, pos = leb(data, pos + 1)
        end = pos + size
        p = pos
        if sid == 1:  # type
            count, p = leb(data, p)
            for _ in range(count):
                assert data[p] == 0x60
                p += 1
                np, p = leb(data, p)
                params = list(data[p:p + np]); p += np
                nr, p = leb(data, p)
                results = list(data[p:p + nr]); p += nr
                types.append((params, results))
        elif sid == 2:  # import
            count, p = leb(data, p)
            for _ in range(count):
                module, p = name(data, p)
                field, p = name(data, p)
                kind = data[p]; p += 1
                if kind == 0:
                    t, p = leb(data, p)
                    imports.append((module, field, "func", types[t]))
                    funcs.append(types[t])
                else:
                    imports.append((module, field, KINDS.get(kind, kind), None))
                    break  # other import kinds are refused anyway
        elif sid == 3:  # function
            count, p = leb(data, p)
            for _ in range(count):
                t, p = leb(data, p)
                funcs.append(types[t])
        elif sid == 7:  # export
            count, p = leb(data, p)
            for _ in range(count):
                field, p = name(data, p)
                kind = data[p]; p += 1
                index, p = leb(data, p)
                sig = funcs[index] if kind == 0 else None
                exports.append((field, KINDS.get(kind, kind), sig))
        pos = end
    return imports, exports


def sig_str(sig):
    if sig is None:
        return ""
    names = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64"}
    params, results = sig
    return " (%s) -> (%s)" % (", ".join(names.get(t, hex(t)) for t in params),
                              ", ".join(names.get(t, hex(t)) for t in results))


def check(path):
    imports, exports = parse(open(path, "rb").read())
    problems = []
    for module, field, kind, sig in imports:
        if (module, field, kind, sig) != ("quiver", "log", "func", ([I32] * 3, [])):
            problems.append("import %s.%s %s%s" % (module, field, kind, sig_str(sig)))
    want = {
        "quiver_abi_version": ([], [I32]),
        "quiver_buffer": ([I32], [I32]),
        "quiver_filter": ([I32], [I32]),
        "quiver_transform": ([I32], [I32]),
        "quiver_init": ([I32], [I32]),
    }
    exported = {field: (kind, sig) for field, kind, sig in exports}
    if exported.get("memory", (None,))[0] != "memory":
        problems.append("no memory export")
    for required in ("quiver_abi_version", "quiver_buffer"):
        if required not in exported:
            problems.append("no %s export" % required)
    if ("quiver_filter" in exported) == ("quiver_transform" in exported):
        problems.append("needs exactly one of quiver_filter, quiver_transform")
    for field, (kind, sig) in exported.items():
        if field in want and (kind, sig) != ("func", want[field]):
            problems.append("export %s has type %s%s" % (field, kind, sig_str(sig)))
    print(path)
    for module, field, kind, sig in imports:
        print("  import %s.%s %s%s" % (module, field, kind, sig_str(sig)))
    for field, kind, sig in exports:
        print("  export %s %s%s" % (field, kind, sig_str(sig)))
    for p in problems:
        print("  PROBLEM: " + p)
    return not problems


if __name__ == "__main__":
    ok = all([check(p) for p in sys.argv[1:]])
    sys.exit(0 if ok and len(sys.argv) > 1 else 1)
