"""Token rows -> a seeded, uniformly shuffled folder of parquet parts, in bounded driver memory.

Post-training stages encode records one at a time and must not hold the data set in the driver,
yet their training loop reads rows in file order, so the shuffle happens here, once:

  add(row) ... buffered until `spill_bytes` (estimated) ---> buffer shuffled, written as
                                                            `.spill/chunk-<k>.parquet`
  close()  ---> a seeded random sequence of chunk labels (chunk k appears as often as it has rows)
                picks, row by row, the next row of that chunk (each chunk read in small batches)
           ---> `part-<j>.parquet` of `part_rows` rows each; `.spill/` removed.
                More than FAN_IN chunks are first merged the same way in groups of FAN_IN into
                bigger spilled chunks (rounds), so at most FAN_IN files are read at once.

Shuffling within each chunk and then interleaving the chunks in a uniformly random order gives a
uniformly random permutation of all rows (the interleaving and the in-chunk orders are independent
and uniform), with memory for about one chunk of rows (Python side; Arrow holds one row group per
open reader) plus 4 bytes a row for the label sequence.
A data set of one chunk is shuffled in memory and written directly. All parts share the first
chunk's Arrow schema, so Ray Data reads one consistent table.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SPILL_BYTES = 64 << 20  # rows buffered (estimated Python-side bytes) before a spill
PART_ROWS = 8192
ROW_GROUP = 1024
SPILL_ROW_GROUP = 64  # small groups: the merge reads every chunk a few rows at a time
FAN_IN = 32  # chunks merged at once (more are merged in rounds): bounds the open readers' buffers


def row_bytes(row: dict) -> int:
    """A cheap estimate of a row's Python size: 8 bytes per list element or character, 64 per field."""
    return sum(64 + 8 * len(v) if isinstance(v, (list, str, bytes)) else 64 for v in row.values())


class ShuffledRows:
    """Collect rows, then `close()` writes them shuffled under `folder` (emptied first); returns the count."""

    def __init__(self, folder: Path, seed: int, spill_bytes: int | None = None, part_rows: int = PART_ROWS):
        import numpy as np

        self.folder, self.part_rows = Path(folder), part_rows
        self.spill_bytes = spill_bytes or SPILL_BYTES
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.rng = np.random.default_rng(seed)
        self.buf: list[dict] = []
        self.buf_bytes = 0
        self.chunks: list[int] = []  # rows per spilled chunk
        self.schema = None
        self.parts = 0

    @property
    def spill_dir(self) -> Path:
        return self.folder / ".spill"

    def add(self, row: dict) -> None:
        self.buf.append(row)
        self.buf_bytes += row_bytes(row)
        if self.buf_bytes >= self.spill_bytes:
            self._spill()

    def _shuffled_buffer(self) -> list[dict]:
        order = self.rng.permutation(len(self.buf))
        rows = [self.buf[i] for i in order]
        self.buf, self.buf_bytes = [], 0
        return rows

    def _table(self, rows: list[dict]):
        import pyarrow as pa

        table = pa.Table.from_pylist(rows, schema=self.schema)
        self.schema = self.schema or table.schema
        return table

    def _spill(self) -> None:
        import pyarrow.parquet as pq

        if not self.buf:
            return
        self.spill_dir.mkdir(exist_ok=True)
        rows = self._shuffled_buffer()
        pq.write_table(self._table(rows), self.spill_dir / f"chunk-{len(self.chunks):05d}.parquet",
                       row_group_size=SPILL_ROW_GROUP)
        self.chunks.append(len(rows))

    def _write_part(self, rows: list[dict]) -> None:
        import pyarrow.parquet as pq

        pq.write_table(self._table(rows), self.folder / f"part-{self.parts:05d}.parquet", row_group_size=ROW_GROUP)
        self.parts += 1

    def close(self) -> int:
        """Write the shuffled parts; the number of rows written."""
        if not self.chunks:  # everything fit in one buffer
            rows = self._shuffled_buffer()
            for i in range(0, len(rows), self.part_rows):
                self._write_part(rows[i: i + self.part_rows])
            return len(rows)
        self._spill()
        chunk_rows = max(self.chunks)
        chunks = [(self.spill_dir / f"chunk-{k:05d}.parquet", n) for k, n in enumerate(self.chunks)]
        level = 0
        while len(chunks) > FAN_IN:  # merge groups of chunks into bigger shuffled chunks first
            level += 1
            chunks = [self._merge_to_spill(chunks[g: g + FAN_IN], chunk_rows, f"merge-{level}-{g:05d}.parquet")
                      for g in range(0, len(chunks), FAN_IN)]
        out: list[dict] = []
        part_rows = min(self.part_rows, chunk_rows)  # a part buffer no bigger than a chunk
        for row in self._interleave(chunks, chunk_rows):
            out.append(row)
            if len(out) == part_rows:
                self._write_part(out)
                out = []
        if out:
            self._write_part(out)
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        return sum(n for _, n in chunks)

    def _merge_to_spill(self, chunks: list[tuple[Path, int]], chunk_rows: int, name: str) -> tuple[Path, int]:
        import pyarrow.parquet as pq

        path, buf = self.spill_dir / name, []
        with pq.ParquetWriter(path, self.schema) as w:
            for row in self._interleave(chunks, chunk_rows):
                buf.append(row)
                if len(buf) == SPILL_ROW_GROUP:
                    w.write_table(self._table(buf))
                    buf = []
            if buf:
                w.write_table(self._table(buf))
        for p, _ in chunks:
            p.unlink()
        return path, sum(n for _, n in chunks)

    def _interleave(self, chunks: list[tuple[Path, int]], chunk_rows: int):
        """The rows of shuffled chunks in a uniformly random interleaving (see the module docstring).
        Each chunk is read `batch` rows at a time: about one chunk of rows in memory in all."""
        import numpy as np
        import pyarrow.parquet as pq

        labels = np.repeat(np.arange(len(chunks), dtype=np.int32), [n for _, n in chunks])
        self.rng.shuffle(labels)
        batch = max(1, min(SPILL_ROW_GROUP, chunk_rows // len(chunks)))
        readers = [_rows_of(pq.ParquetFile(p), batch) for p, _ in chunks]
        for k in labels:
            yield next(readers[k])


def _rows_of(f, batch: int):
    for b in f.iter_batches(batch_size=batch):
        yield from b.to_pylist()
