"""Minimal safetensors reader and streaming sharded writer, numpy only (no torch, no mlx).

numpy has no bfloat16, so BF16 tensors are uint16 bit patterns tagged with the dtype string "BF16"
(F8 types likewise as uint8). Readers return zero-copy memmap views.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import BadCheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the limit the reference implementation enforces

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F8_E4M3": np.dtype("u1"),
    "F8_E5M2": np.dtype("u1"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NUMPY_TO_DTYPE = {
    np.dtype(t): name
    for name, t in [
        ("F64", "f8"), ("F32", "f4"), ("F16", "f2"), ("I64", "i8"), ("I32", "i4"), ("I16", "i2"),
        ("I8", "i1"), ("U64", "u8"), ("U32", "u4"), ("U16", "u2"), ("U8", "u1"), ("BOOL", "?"),
    ]
}  # fmt: skip


class TensorInfo(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def dtype_name(array: np.ndarray) -> str:
    """The safetensors dtype string for a numpy array (uint16 means U16, not BF16)."""
    try:
        return _NUMPY_TO_DTYPE[array.dtype.newbyteorder("=")]
    except KeyError:
        raise TypeError(f"no safetensors dtype for numpy {array.dtype}") from None


def _nbytes(dtype: str, shape: Iterable[int]) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64)) * DTYPES[dtype].itemsize


class SafetensorsFile:
    """One .safetensors file: header parsed eagerly and checked against the file size."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise self._bad("is too short to hold a header")
                (n,) = struct.unpack("<Q", prefix)
                if n > MAX_HEADER_BYTES or 8 + n > size:
                    raise self._bad(f"declares a {n}-byte header but the file has {size} bytes")
                raw = f.read(n)
        except OSError as err:
            raise BadCheckpointError(f"cannot read {self.path}: {err.strerror or err}") from err
        try:
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            raise self._bad(f"has a corrupt header ({err})") from err
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._tensors: dict[str, tuple[TensorInfo, int]] = {}
        end_max = 0
        for name, entry in header.items():
            try:
                dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
                expected = _nbytes(dtype, shape)
            except (KeyError, TypeError, ValueError) as err:
                raise self._bad(f"has a malformed entry for tensor {name!r}") from err
            if end - begin != expected or begin < 0:
                raise self._bad(f"has inconsistent offsets for tensor {name!r}")
            self._tensors[name] = (TensorInfo(dtype, shape, expected), begin)
            end_max = max(end_max, end)
        if self._data_start + end_max > size:
            raise self._bad(
                f"is truncated: its header needs {self._data_start + end_max} bytes, "
                f"the file has {size}"
            )
        self._mmap: np.memmap | None = None

    def _bad(self, what: str) -> BadCheckpointError:
        return BadCheckpointError(f"{self.path} {what}; delete it and download or convert it again")

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def info(self, name: str) -> TensorInfo:
        return self._tensors[name][0]

    def get_numpy(self, name: str) -> np.ndarray:
        """Read-only zero-copy view (BF16 as uint16 bits)."""
        info, begin = self._tensors[name]
        dtype = DTYPES[info.dtype]
        if info.nbytes == 0:
            return np.empty(info.shape, dtype=dtype)
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self._data_start + begin
        return self._mmap[start : start + info.nbytes].view(dtype).reshape(info.shape)

    def read(self, name: str) -> np.ndarray:
        """A private copy read with plain file I/O: unlike a memmap view, the pages it touches are
        not held in this process's memory once the array is dropped (streaming conversion)."""
        info, begin = self._tensors[name]
        out = np.empty(info.shape, dtype=DTYPES[info.dtype])
        if info.nbytes:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(self._data_start + begin)
                view = memoryview(out.reshape(-1).view(np.uint8))
                done = 0
                while done < info.nbytes:
                    n = f.readinto(view[done:])
                    if not n:
                        raise self._bad(f"ended early while reading tensor {name!r}")
                    done += n
        return out

    def close(self) -> None:
        self._mmap = None


def read_index(directory: Path) -> dict:
    index_path = Path(directory) / INDEX_NAME
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if not isinstance(index.get("weight_map"), dict):
            raise KeyError("weight_map")
        return index
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BadCheckpointError(f"{index_path} is not a valid safetensors index") from err


def shard_paths(directory: Path | str) -> list[Path]:
    """The .safetensors files of a model folder (named by its index if it has one; they may be missing)."""
    directory = Path(directory)
    if (directory / INDEX_NAME).is_file():
        return [directory / n for n in sorted(set(read_index(directory)["weight_map"].values()))]
    return sorted(directory.glob("*.safetensors"))


class ShardedCheckpoint:
    """A model folder's tensors: model.safetensors.index.json + shards, or one model.safetensors."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        self.metadata: dict = {}
        if index_path.is_file():
            index = read_index(self.directory)
            weight_map: dict[str, str] = dict(index["weight_map"])
            self.metadata = dict(index.get("metadata") or {})
        else:
            weight_map = {}
            paths = shard_paths(self.directory)
            if not paths:
                raise BadCheckpointError(
                    f"{self.directory} has no {INDEX_NAME} or .safetensors weights"
                )
            for path in paths:
                weight_map.update(dict.fromkeys(SafetensorsFile(path).keys(), path.name))
        self.files: dict[str, SafetensorsFile] = {}
        for fname in sorted(set(weight_map.values())):
            path = self.directory / fname
            if not path.is_file():
                raise BadCheckpointError(
                    f"shard {fname} named in {INDEX_NAME} is missing from {self.directory}; "
                    "download the model again"
                )
            self.files[fname] = SafetensorsFile(path)
        self._entries: dict[str, tuple[SafetensorsFile, TensorInfo]] = {}
        for name, fname in weight_map.items():
            shard = self.files[fname]
            if name not in shard:
                raise BadCheckpointError(f"tensor {name} is listed for shard {fname} but not in it")
            self._entries[name] = (shard, shard.info(name))

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, name: str) -> tuple[SafetensorsFile, TensorInfo]:
        return self._entries[name]

    def info(self, name: str) -> TensorInfo:
        return self._entries[name][1]

    def get_numpy(self, name: str) -> np.ndarray:
        return self._entries[name][0].get_numpy(name)

    def read(self, name: str) -> np.ndarray:
        return self._entries[name][0].read(name)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class _OpenShard:
    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.reserve = reserve
        self.file = open(path, "wb")  # noqa: SIM115 - closed by ShardWriter
        self.file.seek(8 + reserve)
        self.header: dict[str, dict] = {}
        self.size = 0

    def finish(self, metadata: dict[str, str]) -> None:
        header = json.dumps({"__metadata__": metadata, **self.header}, separators=(",", ":"))
        raw = header.encode("utf-8")
        if len(raw) <= self.reserve:
            # The format allows trailing spaces in the header; they keep data 8-byte aligned.
            self.file.seek(0)
            self.file.write(
                struct.pack("<Q", self.reserve) + raw + b" " * (self.reserve - len(raw))
            )
            self.file.close()
            return
        # Header outgrew its reserved room: rewrite the file with a bigger one.
        self.file.close()
        n = -(-(len(raw) + 8) // 8) * 8 - 8
        tmp = self.path.with_name(self.path.name + ".grow")
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(struct.pack("<Q", n) + raw + b" " * (n - len(raw)))
            src.seek(8 + self.reserve)
            shutil.copyfileobj(src, dst, 16 << 20)
        os.replace(tmp, self.path)


class ShardWriter:
    """Stream tensors into model-XXXXX-of-YYYYY.safetensors shards plus the index.

    Shards are written under temporary names and renamed by `close()`, which also writes
    model.safetensors.index.json. `zero_based=True` gives openai/gpt-oss's naming
    (model-00000-of-00002 ... model-00002-of-00002) instead of the usual 1-of-N.
    """

    def __init__(
        self,
        out_dir: Path | str,
        max_shard_bytes: int = 5 * 2**30,
        metadata: dict[str, str] | None = None,
        zero_based: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.metadata = dict(metadata) if metadata is not None else {"format": "pt"}
        self.zero_based = zero_based
        # Room for ~7000 header entries in big shards, a page in small ones.
        self._reserve = max(4096, min(1 << 20, max_shard_bytes // 1024)) // 8 * 8 - 8
        self._done: list[_OpenShard] = []
        self._current: _OpenShard | None = None
        self._weight_map: dict[str, int] = {}
        self._total = 0
        self._closed = False

    def _shard_for(self, nbytes: int) -> _OpenShard:
        cur = self._current
        if cur is not None and cur.size and cur.size + nbytes > self.max_shard_bytes:
            cur.finish(self.metadata)
            self._done.append(cur)
            cur = None
        if cur is None:
            path = self.out_dir / f".shard-{len(self._done):05d}.safetensors.partial"
            cur = self._current = _OpenShard(path, self._reserve)
        return cur

    def add(self, name: str, array: np.ndarray, dtype: str | None = None) -> None:
        """Write one tensor; `dtype` overrides the inferred one (e.g. "BF16" for uint16 bits)."""
        array = np.asarray(array)
        self.add_chunks(name, array.shape, dtype or dtype_name(array), [array])

    def add_chunks(
        self, name: str, shape: tuple[int, ...], dtype: str, chunks: Iterable[np.ndarray]
    ) -> None:
        """Write one tensor given as consecutive row-major pieces, never all in memory."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if name in self._weight_map:
            raise ValueError(f"tensor {name} written twice")
        np_dtype = DTYPES[dtype]
        nbytes = _nbytes(dtype, shape)
        shard = self._shard_for(nbytes)
        written = 0
        for chunk in chunks:
            data = np.ascontiguousarray(chunk, dtype=np_dtype)
            shard.file.write(data.reshape(-1).view(np.uint8))
            written += data.nbytes
        if written != nbytes:
            raise ValueError(f"tensor {name}: got {written} bytes for shape {shape} {dtype}")
        shard.header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [shard.size, shard.size + nbytes],
        }
        shard.size += nbytes
        self._total += nbytes
        self._weight_map[name] = len(self._done)

    def close(self) -> list[Path]:
        """Finish the last shard, give shards their final names, write the index."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if self._current is None:
            self._current = self._shard_for(0)
        self._current.finish(self.metadata)
        self._done.append(self._current)
        self._current = None
        self._closed = True
        count = len(self._done)
        last = count - 1 if self.zero_based else count
        names = [
            f"model-{i + (0 if self.zero_based else 1):05d}-of-{last:05d}.safetensors"
            for i in range(count)
        ]
        for shard, fname in zip(self._done, names, strict=True):
            os.replace(shard.path, self.out_dir / fname)
        index = {
            "metadata": {"total_size": self._total},
            "weight_map": {k: names[i] for k, i in self._weight_map.items()},
        }
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return [self.out_dir / n for n in names]

    def abort(self) -> None:
        """Remove partial shards (used when writing fails)."""
        shards = self._done + ([self._current] if self._current else [])
        for shard in shards:
            shard.file.close()
            with contextlib.suppress(FileNotFoundError):
                shard.path.unlink()
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_file(
    path: Path | str,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
    dtypes: dict[str, str] | None = None,
) -> None:
    """Write one .safetensors file (dtypes overrides per tensor, e.g. {"w": "BF16"})."""
    dtypes = dtypes or {}
    header: dict[str, dict] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, array in tensors.items():
        dtype = dtypes.get(name) or dtype_name(array)
        nbytes = _nbytes(dtype, array.shape)
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, array in tensors.items():
            dtype = DTYPES[dtypes.get(name) or dtype_name(array)]
            f.write(np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8))
