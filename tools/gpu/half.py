#!/usr/bin/env python3
"""Writes a copy of a safetensors file with every F32 tensor stored as F16 (standard library
only), so that MiniLM's weights (91 MB) fit one device call (64 MiB) beside the binaries: sener
widens them to f32 on load. Usage: half.py IN.safetensors OUT.safetensors"""
import json
import struct
import sys

src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
out_header, chunks, at = {}, [], 0
for name, t in sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]):
    a, b = t["data_offsets"]
    raw = data[a:b]
    if t["dtype"] == "F32":
        count = (b - a) // 4
        raw = struct.pack(f"<{count}e", *struct.unpack(f"<{count}f", raw))
        t = dict(t, dtype="F16")
    out_header[name] = dict(t, data_offsets=[at, at + len(raw)])
    chunks.append(raw)
    at += len(raw)
if "__metadata__" in header:
    out_header["__metadata__"] = header["__metadata__"]
h = json.dumps(out_header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    for c in chunks:
        f.write(c)
