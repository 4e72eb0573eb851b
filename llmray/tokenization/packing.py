"""Packing token streams into fixed-length rows and writing them as parquet shards.

documents --join_with_eos--> `doc1 EOS doc2 EOS ...` (one stream per batch, in a tokenizer actor)
streams, in corpus order --RowPacker--> full rows of seq_len as they form; the part that does
not fill a row carries over into the next stream, so rows do not depend on batch boundaries
--ShardWriter--> part-00000.parquet, ... Only the final remainder of a split (< seq_len tokens)
is not written; the caller counts it (`dropped_tail_tokens`), nothing is silently lost.

Shards: parquet, one column `input_ids` = list<uint16> (int32 when the vocabulary does not
fit in 16 bits), every row exactly seq_len long, zstd-compressed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

COLUMN = "input_ids"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (< 65536), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def join_with_eos(id_lists, eos_id: int, dtype) -> np.ndarray:
    """`ids_1 EOS ids_2 EOS ...`: every document followed by one EOS token."""
    if not id_lists:
        return np.zeros(0, dtype=dtype)
    eos = np.array([eos_id], dtype=dtype)
    parts = []
    for ids in id_lists:
        parts.append(np.asarray(ids, dtype=dtype))
        parts.append(eos)
    return np.concatenate(parts)


def cut_rows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(full rows of shape (n, seq_len), the tail of len(stream) % seq_len tokens)."""
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len), stream[n * seq_len:]


class RowPacker:
    """Concatenates token streams and hands back full rows as they form; the remainder carries over."""

    def __init__(self, seq_len: int, dtype):
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self._parts: list[np.ndarray] = []
        self._n = 0

    def add(self, stream) -> np.ndarray:
        """Add one stream; returns the rows completed by it (possibly none: shape (0, seq_len))."""
        stream = np.asarray(stream, dtype=self.dtype)
        if len(stream):
            self._parts.append(stream)
            self._n += len(stream)
        if self._n < self.seq_len:
            return np.zeros((0, self.seq_len), dtype=self.dtype)
        rows, rest = cut_rows(np.concatenate(self._parts), self.seq_len)
        self._parts, self._n = ([rest] if len(rest) else []), len(rest)
        return rows

    @property
    def remainder(self) -> np.ndarray:
        """The tokens that do not fill a last row (fewer than seq_len)."""
        return np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=self.dtype)


def rows_table(rows: np.ndarray):
    """A pyarrow table with one `input_ids` list column, one row per packed sequence."""
    import pyarrow as pa

    n, seq_len = rows.shape
    offsets = pa.array(np.arange(0, (n + 1) * seq_len, seq_len, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(rows).reshape(-1))
    return pa.table({COLUMN: pa.ListArray.from_arrays(offsets, values)})


def write_rows(path: Path, rows: np.ndarray) -> None:
    """Write rows to `path` atomically (a hidden temporary file renamed into place): a reader never
    sees a half-written shard."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(rows_table(rows), tmp, compression="zstd")
    os.replace(tmp, path)


class ShardWriter:
    """Buffers rows and writes `<prefix>-00000.parquet`, ... of `rows_per_shard` rows each."""

    def __init__(self, out_dir: Path, prefix: str, seq_len: int, dtype, rows_per_shard: int):
        self.out_dir, self.prefix, self.rows_per_shard = Path(out_dir), prefix, rows_per_shard
        self.seq_len, self.dtype = seq_len, np.dtype(dtype)
        self._buf: list[np.ndarray] = []
        self._n = 0
        self.shards = 0
        self.rows = 0

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            self._buf.append(rows)
            self._n += len(rows)
        while self._n >= self.rows_per_shard:
            self._write(self.rows_per_shard)

    def close(self) -> None:
        if self._n:
            self._write(self._n)

    def _write(self, n: int) -> None:
        buf = np.concatenate(self._buf)
        write_rows(self.out_dir / f"{self.prefix}-{self.shards:05d}.parquet", buf[:n])
        self._buf, self._n = ([buf[n:]] if len(buf) > n else []), len(buf) - n
        self.shards += 1
        self.rows += n


def read_rows(split_dir: Path) -> np.ndarray:
    """All rows of a split's shards as one (n, seq_len) array (tests and small checks; sorted by file name)."""
    import pyarrow.parquet as pq

    mats = []
    for f in sorted(Path(split_dir).glob("*.parquet")):
        col = pq.read_table(f, columns=[COLUMN]).column(COLUMN).combine_chunks()
        lens = np.diff(np.asarray(col.offsets))
        if len(lens) and (lens != lens[0]).any():
            raise ValueError(f"{f}: rows of unequal length")
        mats.append(np.asarray(col.values).reshape(len(col), -1) if len(col) else None)
    mats = [m for m in mats if m is not None]
    return np.concatenate(mats) if mats else np.zeros((0, 0), dtype=np.int64)


def count_rows(split_dir: Path) -> int:
    """Rows in a split's shards, from parquet metadata only."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in Path(split_dir).glob("*.parquet"))
