"""Reader for CTranslate2 model.bin files (format version 6)."""
import struct

import numpy as np

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bf16


def _string(buf, off):
    (n,) = struct.unpack_from("<H", buf, off)
    off += 2
    s = bytes(buf[off:off + n]).rstrip(b"\0").decode("utf-8")
    return s, off + n


def read_model_bin(path):
    """Return (spec_name, revision, {name: np.ndarray}); aliases map to the same array."""
    with open(path, "rb") as f:
        buf = memoryview(f.read())
    off = 0
    (version,) = struct.unpack_from("<I", buf, off)
    off += 4
    if version != 6:
        raise ValueError(f"{path}: unsupported CTranslate2 format version {version}")
    spec, off = _string(buf, off)
    (revision, count) = struct.unpack_from("<II", buf, off)
    off += 8
    tensors = {}
    for _ in range(count):
        name, off = _string(buf, off)
        rank = buf[off]
        off += 1
        dims = struct.unpack_from(f"<{rank}I", buf, off)
        off += 4 * rank
        dtype = buf[off]
        off += 1
        (nbytes,) = struct.unpack_from("<I", buf, off)
        off += 4
        raw = bytes(buf[off:off + nbytes])
        off += nbytes
        if dtype == 5:
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<"))
        tensors[name] = a.reshape(dims)
    (nalias,) = struct.unpack_from("<I", buf, off)
    off += 4
    for _ in range(nalias):
        alias, off = _string(buf, off)
        target, off = _string(buf, off)
        tensors[alias] = tensors[target]
    if off != len(buf):
        raise ValueError(f"{path}: {len(buf) - off} trailing bytes")
    return spec, revision, tensors
