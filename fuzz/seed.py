#!/usr/bin/env python3
"""Seeds the fuzz corpora from WebM/Matroska files (stdlib only).

    fuzz/seed.py CORPUS_ROOT FILE...

Writes CORPUS_ROOT/<target>/seed-*: for the demuxer targets, small files whole and prefixes of
large ones (16 KiB, 64 KiB: header, tracks, the first clusters; also truncated streams); for
demux_chunked the same behind two chunk-selector bytes; for block_lacing the payloads of
SimpleBlocks/Blocks; for codec_headers their frames and every CodecPrivate; for ebml_varint the
first bytes of every element header. Existing corpus entries are kept.
"""
import hashlib
import os
import sys

MASTERS = {0x18538067, 0x1F43B675, 0x1654AE6B, 0xAE, 0xA0, 0x1549A966, 0xE0, 0xE1,
           0x6D80, 0x6240, 0x5034}
SIMPLE_BLOCK, BLOCK, CODEC_PRIVATE = 0xA3, 0xA1, 0x63A2
MAX_PER_FILE = 40


def vint(buf, pos, keep_marker):
    if pos >= len(buf) or buf[pos] == 0:
        return None, 0
    first = buf[pos]
    n = 8 - first.bit_length() + 1
    if pos + n > len(buf):
        return None, 0
    v = first if keep_marker else first & (0xFF >> n)
    for b in buf[pos + 1:pos + n]:
        v = (v << 8) | b
    if not keep_marker and v == (1 << (7 * n)) - 1:
        v = -1  # unknown size
    return v, n


def walk(buf, start, end, out):
    pos = start
    while pos < end:
        eid, a = vint(buf, pos, True)
        size, b = vint(buf, pos + a, False) if eid is not None else (None, 0)
        if eid is None or size is None or a > 4:
            return
        out.setdefault("headers", []).append(buf[pos:pos + a + b + 8])
        body = pos + a + b
        if size == -1:
            if eid in MASTERS:
                pos = body  # unknown-size master: its children follow
                continue
            return
        stop = min(body + size, len(buf))
        if eid in MASTERS:
            walk(buf, body, stop, out)
        elif eid in (SIMPLE_BLOCK, BLOCK):
            out.setdefault("blocks", []).append(buf[body:stop])
        elif eid == CODEC_PRIVATE:
            out.setdefault("privates", []).append(buf[body:stop])
        pos = body + size


def put(root, target, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def spread(items, n):
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def main():
    root, files = sys.argv[1], sys.argv[2:]
    count = 0
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        streams = [data] if len(data) <= 64 << 10 else [data[:16 << 10], data[:64 << 10]]
        for s in streams:
            put(root, "demux_whole", s)
            for sel in (b"\x00\x01", b"\x87\x35", b"\x0b\x00"):  # 1-byte, jittered 7, 4096
                put(root, "demux_chunked", sel + s)
        found = {}
        walk(data, 0, len(data), found)
        blocks = spread(found.get("blocks", []), MAX_PER_FILE)
        for blk in blocks:
            put(root, "block_lacing", blk[:2048])
            hdr = 4 if blk and blk[0] & 0x80 else 5
            put(root, "codec_headers", blk[hdr:hdr + 256])
        for p in found.get("privates", []):
            put(root, "codec_headers", p[:4096])
        for h in spread(found.get("headers", []), MAX_PER_FILE):
            put(root, "ebml_varint", h)
        put(root, "ebml_varint", data[:512])
        count += 1
    print(f"seeded corpora under {root} from {count} files")


if __name__ == "__main__":
    main()
