#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/.

pid_file and target_id take raw bytes / strings, so their seeds are the inputs
themselves. sqlite_row and manager_ops take structured inputs decoded with the
`arbitrary` crate (1.x); this script encodes meaningful inputs the way
`arbitrary` 1.5 decodes them:

- integers: little-endian, `size_of` bytes; bool: one byte, low bit;
- enum: a u32 tag, variant = (tag * variant_count) >> 32;
- Option: a bool, then the value;
- Vec<T> (not last): per element a `true` byte then the element, then `false`;
- the last field of the top-level input: the same, until the data ends;
- String / &str: its length is one byte taken from the *end* of the data (for
  inputs up to 256 bytes), then the bytes.

Check a seed with `cargo fuzz fmt -s none <target> corpus/<target>/<seed>`, which
prints the decoded input. Run from anywhere: `python3 fuzz/gen_seeds.py`.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


class Enc:
    """Builds an input: bytes read from the front, and lengths read from the end."""

    def __init__(self):
        self.front = bytearray()
        self.back = bytearray()  # in the order they are read (last byte first)

    def u8(self, v):
        self.front += bytes([v & 0xFF])
        return self

    def boolean(self, v):
        return self.u8(1 if v else 0)

    def u16(self, v):
        self.front += struct.pack("<H", v)
        return self

    def i8(self, v):
        self.front += struct.pack("<b", v)
        return self

    def u64(self, v):
        self.front += struct.pack("<Q", v)
        return self

    def i64(self, v):
        self.front += struct.pack("<q", v)
        return self

    def f64(self, v):
        self.front += struct.pack("<d", v)
        return self

    def tag(self, k, n):
        """Variant k of an enum with n variants."""
        t = (k * (1 << 32) + n - 1) // n
        assert (t * n) >> 32 == k
        self.front += struct.pack("<I", t)
        return self

    def string(self, s):
        b = s.encode() if isinstance(s, str) else bytes(s)
        assert len(b) < 256
        self.back.append(len(b))
        self.front += b
        return self

    def vec(self, items, each):
        for it in items:
            self.boolean(True)
            each(self, it)
        return self.boolean(False)

    def rest(self, items, each):
        """The last field: elements until the data ends."""
        for it in items:
            self.boolean(True)
            each(self, it)
        return self

    def bytes(self):
        data = bytes(self.front) + bytes(reversed(self.back))
        assert len(data) <= 256, f"seed too long for one-byte lengths: {len(data)}"
        return data


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- pid_file: PID-file contents ---------------------------------------------------
PID_FILE = {
    "valid": b"12345",
    "valid-newline": b"12345\n",
    "valid-crlf-spaces": b"  7 \r\n",
    "leading-zeros": b"007\n",
    "empty": b"",
    "newline-only": b"\n",
    "zero": b"0\n",
    "one-init": b"1\n",
    "minus-one": b"-1\n",
    "negative": b"-12345\n",
    "plus-sign": b"+5\n",
    "u32-max": b"4294967295\n",
    "i32-max": b"2147483647\n",
    "pid-max-limit": b"4194304\n",
    "huge": b"99999999999999999999999999999999999\n",
    "two-numbers": b"12 34\n",
    "two-lines": b"123\n456\n",
    "nul-inside": b"1\x002\n",
    "hex": b"0x10\n",
    "letters": b"abc\n",
    "utf8-digits": "\u0661\u0662\u0663\n".encode(),  # Arabic-Indic digits
    "vertical-tab": b"\x0b42\x0b",
    "form-feed": b"\x0c42\x0c",
    "over-64-bytes": b" " * 70 + b"42\n",
    "invalid-utf8": b"\xff\xfe42",
    "escape-sequence": b"\x1b[2J42",
}

# --- target_id: target IDs ------------------------------------------------------------
TARGET_ID = {
    "plain": "target-123",
    "prod": "target-prod-001",
    "alphabet": "A.b_c-D",
    "trailing-dot": "x.",
    "single": "a",
    "max-len": "a" * 200,
    "too-long": "a" * 201,
    "empty": "",
    "dot": ".",
    "dotdot": "..",
    "hidden": ".hidden",
    "traversal": "../etc/passwd",
    "slash": "a/b",
    "absolute": "/run/dms/s3/x",
    "space": "a b",
    "nul": "a\0b",
    "newline": "a\nb",
    "unicode": "\u00e9t\u00e9",
    "fullwidth-slash": "a\uff0fb",
    "symlink-like": "s3 -> /etc",
    "pid-suffix": "x.pid",
    "escape": "\x1b[31mred",
}


# --- sqlite_row -------------------------------------------------------------------------
# enum FileContent { None, Pid(u16), Bytes(Vec<u8>) }
def file_none(e):
    e.tag(0, 3)


def file_pid(p):
    return lambda e: e.tag(1, 3).u16(p)


def file_bytes(b):
    return lambda e: e.tag(2, 3).vec(b, lambda e, x: e.u8(x))


# enum Database { Fresh, Loose { user_version: i8, primary_key: bool, drop_column: u8 },
#                 Garbage(Vec<u8>) }
def db_fresh(e):
    e.tag(0, 3)


def db_loose(version, pk, drop=255):
    return lambda e: e.tag(1, 3).i8(version).boolean(pk).u8(drop)


def db_garbage(b):
    return lambda e: e.tag(2, 3).vec(b, lambda e, x: e.u8(x))


# enum Val { Null, Int(i64), Real(f64), Text(String), TextBytes(Vec<u8>), Blob(Vec<u8>),
#            FilePid, FileIno, FileMtime, JsonArgs(Vec<String>) }
def v_null(e):
    e.tag(0, 10)


def v_int(i):
    return lambda e: e.tag(1, 10).i64(i)


def v_real(x):
    return lambda e: e.tag(2, 10).f64(x)


def v_text(s):
    return lambda e: e.tag(3, 10).string(s)


def v_text_bytes(b):
    return lambda e: e.tag(4, 10).vec(b, lambda e, x: e.u8(x))


def v_blob(b):
    return lambda e: e.tag(5, 10).vec(b, lambda e, x: e.u8(x))


def v_file_pid(e):
    e.tag(6, 10)


def v_file_ino(e):
    e.tag(7, 10)


def v_file_mtime(e):
    e.tag(8, 10)


def v_json(args):
    return lambda e: e.tag(9, 10).vec(args, lambda e, s: e.string(s))


def hand_row(target, vals):
    """target None = `t`; values in column order pid .. file_mtime_ns (9)."""
    assert len(vals) == 9

    def enc(e, _):
        if target is None:
            e.tag(0, 2)
        else:
            e.tag(1, 2).string(target)
        for v in vals:
            v(e)

    return enc


def put_record(pid, identity=None, cmdline=None, mount=None, spawned=None, log=None):
    def enc(e):
        e.u16(pid)
        e.boolean(identity is not None)
        if identity is not None:
            e.u64(identity[0]).string(identity[1])
        e.boolean(cmdline is not None)
        if cmdline is not None:
            e.vec(cmdline, lambda e, s: e.string(s))
        e.boolean(mount is not None)
        if mount is not None:
            e.vec(mount, lambda e, x: e.u8(x))
        e.boolean(spawned is not None)
        if spawned is not None:
            e.boolean(spawned[0]).u64(spawned[1])
        e.boolean(log is not None)
        if log is not None:
            e.vec(log, lambda e, x: e.u8(x))

    return enc


def sqlite_input(file, db, put, rows):
    e = Enc()
    file(e)
    db(e)
    e.boolean(put is not None)
    if put is not None:
        put(e)
    e.rest(rows, lambda e, r: r(e, None))
    return e.bytes()


GOOD_ROW = [v_file_pid, v_int(4711), v_text("b00t"), v_json(["sleep", "60"]),
            v_blob(b"/mnt/a"), v_int(1_700_000_000_000_000_000), v_blob(b"/l"),
            v_file_ino, v_file_mtime]

SQLITE_ROW = {
    # The store's own round trip: put a full record, read it back.
    "put-roundtrip": sqlite_input(
        file_none, db_fresh,
        put_record(12345, identity=(4711, "b00t"), cmdline=["sleep", "60"],
                   mount=b"/mnt/x", spawned=(False, 1_700_000_000_000_000_000), log=b"/l"),
        []),
    "put-no-identity": sqlite_input(file_none, db_fresh, put_record(4242, cmdline=["x"]), []),
    "put-ticks-too-big": sqlite_input(
        file_none, db_fresh, put_record(4242, identity=(2**63 + 5, "b")), []),
    "put-time-before-epoch": sqlite_input(
        file_pid(100), db_fresh, put_record(101, spawned=(True, 10**18)), []),
    "put-non-utf8-paths": sqlite_input(
        file_none, db_fresh, put_record(300, mount=b"/mnt/\xff\xfe", log=b"\x00/x"), []),
    # A hand-written row matching the file: identity comes through.
    "row-matches-file": sqlite_input(file_pid(12345), db_fresh, None, [hand_row(None, GOOD_ROW)]),
    # Rows that must not lend their identity.
    "row-other-pid": sqlite_input(
        file_pid(12345), db_fresh, None,
        [hand_row(None, [v_int(999)] + GOOD_ROW[1:])]),
    "row-stale-stamp": sqlite_input(
        file_pid(12345), db_fresh, None,
        [hand_row(None, GOOD_ROW[:7] + [v_int(1), v_int(2)])]),
    "row-negative-ticks": sqlite_input(
        file_pid(12345), db_fresh, None,
        [hand_row(None, [v_file_pid, v_int(-1)] + GOOD_ROW[2:])]),
    "row-bad-json": sqlite_input(
        file_pid(12345), db_fresh, None,
        [hand_row(None, GOOD_ROW[:3] + [v_text("{not json")] + GOOD_ROW[4:])]),
    "row-half-identity": sqlite_input(
        file_pid(12345), db_fresh, None,
        [hand_row(None, [v_file_pid, v_int(5), v_null] + GOOD_ROW[3:])]),
    "row-extreme-time": sqlite_input(
        file_pid(12345), db_fresh, None,
        [hand_row(None, GOOD_ROW[:5] + [v_int(-(2**63))] + GOOD_ROW[6:])]),
    # Loosely typed table: wrong SQLite types in every kind of column.
    "loose-wrong-types": sqlite_input(
        file_pid(12345), db_loose(1, True), None,
        [hand_row(None, [v_text("12345"), v_real(4711.0), v_blob(b"b00t"), v_int(7),
                         v_text("/mnt"), v_real(1.5), v_int(3), v_real(1.0), v_text("x")])]),
    "loose-text-not-utf8": sqlite_input(
        file_pid(12345), db_loose(1, True), None,
        [hand_row(None, GOOD_ROW[:2] + [v_text_bytes(b"\xff\xfe")] + GOOD_ROW[3:])]),
    "loose-no-pk-duplicates": sqlite_input(
        file_pid(12345), db_loose(1, False), None,
        [hand_row(None, GOOD_ROW),
         hand_row(None, [v_file_pid, v_int(1)] + GOOD_ROW[2:])]),
    "loose-missing-column": sqlite_input(
        file_pid(12345), db_loose(1, True, 2), None, [hand_row(None, GOOD_ROW)]),
    "put-into-table-missing-column": sqlite_input(
        file_none, db_loose(1, True, 2), put_record(4242, identity=(7, "b")), []),
    "loose-newer-schema": sqlite_input(
        file_pid(12345), db_loose(9, True), None, [hand_row(None, GOOD_ROW)]),
    "loose-negative-schema": sqlite_input(file_pid(12345), db_loose(-3, True), None, []),
    "loose-schema-zero": sqlite_input(file_pid(12345), db_loose(0, True), None, []),
    "garbage-db": sqlite_input(file_pid(12345), db_garbage(b"SQLite format 3\x00garbage"),
                               None, []),
    "empty-db-file": sqlite_input(file_pid(12345), db_garbage(b""), None, []),
    # Rows for names that are not targets, and a corrupt PID file.
    "rows-for-strangers": sqlite_input(
        file_pid(12345), db_fresh, None,
        [hand_row("../etc", GOOD_ROW), hand_row("other", GOOD_ROW)]),
    "corrupt-file-with-row": sqlite_input(
        file_bytes(b"-1\n"), db_fresh, None, [hand_row(None, GOOD_ROW)]),
    "no-file-orphan-row": sqlite_input(file_none, db_fresh, None, [hand_row(None, GOOD_ROW)]),
}


# --- manager_ops ------------------------------------------------------------------------
OPS = ["Spawn", "SpawnFailing", "SpawnTwice", "Kill", "Adopt", "Exit", "Crash", "Zombie",
       "Reap", "IgnoreTerm", "DenySignal", "Foreign", "ForeignAt", "DeleteEntry",
       "CorruptEntry", "HandWrite", "Stray", "FailNext", "Query", "Reload", "Cleanup",
       "CleanupAll", "Restart", "CrashDuring", "Down"]


def who(e, w):
    kind, n = w  # ("known", n) or ("pid", n)
    e.tag(0 if kind == "known" else 1, 2).u8(n)


def op(name, **f):
    def enc(e, _):
        e.tag(OPS.index(name), len(OPS))
        if name in ("Spawn",):
            e.u8(f["t"]).boolean(f.get("replace", False))
        elif name == "SpawnFailing":
            e.u8(f["t"]).tag(["NotFound", "PermissionDenied", "Log", "Fork"].index(f["how"]), 4)
        elif name in ("SpawnTwice", "Kill", "DeleteEntry", "CorruptEntry", "Query"):
            e.u8(f["t"])
        elif name in ("Adopt", "HandWrite"):
            e.u8(f["t"])
            who(e, f["who"])
        elif name in ("Exit", "Crash"):
            who(e, f["who"])
            e.u8(f.get("code", 0))
        elif name in ("Zombie", "Reap", "IgnoreTerm", "DenySignal", "ForeignAt"):
            who(e, f["who"])
        elif name == "FailNext":
            e.tag(["Put", "Get", "Remove", "List"].index(f["op"]), 4)
        elif name == "CrashDuring":
            what = f["what"]
            kinds = ["Spawn", "Kill", "Adopt", "Reload", "Cleanup"]
            e.tag(kinds.index(what), 5)
            if what == "Spawn":
                e.u8(f["t"]).boolean(f.get("replace", False))
            elif what == "Kill":
                e.u8(f["t"])
            elif what == "Adopt":
                e.u8(f["t"])
                who(e, f["who"])
            e.u8(f["polls"])

    return enc


def ops(*items):
    return Enc().rest(items, lambda e, o: o(e, None)).bytes()


A, B, C = 0, 1, 2  # alpha, beta, gamma
MANAGER_OPS = {
    "spawn-kill": ops(op("Spawn", t=A), op("Query", t=A), op("Kill", t=A), op("Query", t=A)),
    "spawn-exit-watched": ops(op("Spawn", t=A), op("Exit", who=("known", 0), code=3),
                              op("Query", t=A)),
    "spawn-restart-recovers": ops(op("Spawn", t=A), op("Spawn", t=B), op("Restart"),
                                  op("Query", t=A), op("Kill", t=B)),
    "replace-ignores-term": ops(op("Spawn", t=A), op("IgnoreTerm", who=("known", 0)),
                                op("Spawn", t=A, replace=True), op("Query", t=A)),
    "twice-at-once": ops(op("SpawnTwice", t=A), op("SpawnTwice", t=A)),
    "pid-reuse-after-exit-then-restart": ops(
        op("Spawn", t=A), op("Exit", who=("pid", 0)), op("ForeignAt", who=("pid", 0)),
        op("Restart"), op("Kill", t=A), op("Cleanup")),
    "pid-reuse-while-down": ops(
        op("Spawn", t=A), op("Down"), op("Exit", who=("pid", 0)),
        op("ForeignAt", who=("pid", 0)), op("Query", t=A), op("Kill", t=A), op("Cleanup")),
    "tamper-while-down": ops(
        op("Spawn", t=A), op("Spawn", t=B), op("Down"), op("DeleteEntry", t=A),
        op("CorruptEntry", t=B), op("Reload"), op("Spawn", t=A), op("Cleanup")),
    "hand-written-bare-then-reuse": ops(
        op("HandWrite", t=A, who=("pid", 2)), op("ForeignAt", who=("pid", 2)),
        op("Restart"), op("Kill", t=A), op("Cleanup")),
    "hand-written-for-live-helper": ops(
        op("Spawn", t=A), op("DeleteEntry", t=A), op("HandWrite", t=A, who=("known", 0)),
        op("Restart"), op("Kill", t=A)),
    "corrupt-then-cleanup": ops(op("CorruptEntry", t=B), op("Stray"), op("Reload"),
                                op("Query", t=B), op("Cleanup")),
    "deleted-entry-repaired": ops(op("Spawn", t=C), op("DeleteEntry", t=C), op("Reload"),
                                  op("Restart"), op("Query", t=C)),
    "zombie-helper": ops(op("Spawn", t=A), op("Zombie", who=("known", 0)), op("Query", t=A),
                         op("Reap", who=("known", 0)), op("Cleanup")),
    "adopt-foreign-and-kill": ops(op("Foreign"), op("Adopt", t=B, who=("known", 0)),
                                  op("Restart"), op("Kill", t=B)),
    "adopt-dead-pid": ops(op("Adopt", t=B, who=("pid", 5))),
    "exec-failures": ops(op("SpawnFailing", t=A, how="NotFound"),
                         op("SpawnFailing", t=A, how="PermissionDenied"),
                         op("SpawnFailing", t=A, how="Log"),
                         op("SpawnFailing", t=A, how="Fork"), op("Spawn", t=A)),
    "store-failures": ops(op("FailNext", op="Put"), op("Spawn", t=A), op("Spawn", t=A),
                          op("FailNext", op="Remove"), op("Kill", t=A),
                          op("FailNext", op="List"), op("Restart"), op("Cleanup")),
    "crash-mid-spawn": ops(op("CrashDuring", what="Spawn", t=A, polls=1), op("Query", t=A),
                           op("CrashDuring", what="Spawn", t=A, polls=3), op("Cleanup")),
    "crash-mid-kill": ops(op("Spawn", t=A), op("IgnoreTerm", who=("known", 0)),
                          op("CrashDuring", what="Kill", t=A, polls=2), op("Kill", t=A)),
    "deny-signal": ops(op("Spawn", t=A), op("DenySignal", who=("known", 0)), op("Kill", t=A),
                       op("CleanupAll")),
    "table-full": ops(op("Spawn", t=A), op("Spawn", t=B), op("Spawn", t=C), op("Foreign"),
                      op("Foreign"), op("Foreign"), op("Spawn", t=A, replace=True),
                      op("CleanupAll")),
}


def main():
    for name, data in PID_FILE.items():
        write("pid_file", name, data)
    for name, s in TARGET_ID.items():
        write("target_id", name, s.encode())
    for name, data in SQLITE_ROW.items():
        write("sqlite_row", name, data)
    for name, data in MANAGER_OPS.items():
        write("manager_ops", name, data)


if __name__ == "__main__":
    main()
