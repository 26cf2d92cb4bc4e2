"""Rows of an HDF5 dataset read per batch, at memory-map speed, in any process (DataLoader workers included).

Training, prediction and dark knowledge read random rows (images of a feature cache, trials of a store, images of
a dark-knowledge file) of arrays far larger than memory. h5py's fancy indexing costs about a millisecond per row
(measured on this project's layouts: 25 MiB/s for feature-cache rows, 85 MiB/s for store responses, against
~10 GiB/s from a memory map; benchmarks/RESULTS.md), so a dataset stored without compression or other filters is
read from a read-only memory map of its file at the byte offsets HDF5 reports: one offset for the contiguous layout,
one per chunk (from the chunk index) for the chunked layout. Any other dataset (compressed images, say) is read with
h5py. The files keep their HDF5 format: nothing is converted.

Memory: a read allocates only its result ([len(rows), ...]); the mapped pages are file-backed page cache the kernel
can drop, not the process's anonymous memory. The chunk-offset table is 8 bytes per chunk.

Processes: a :class:`RowReader` pickles as its path and dataset name and opens the file on first use in each
process (an HDF5 handle or memory map must not cross a fork), so it can live in a DataLoader's dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from afo.io import CorruptFileError, reading_hdf5


class _Contiguous(NamedTuple):
    """A dataset stored in one run of bytes from ``offset``."""

    offset: int


class _Chunked(NamedTuple):
    """A chunked dataset: ``offsets`` [row chunks, column chunks] of each chunk's bytes, ``chunks`` its chunk shape."""

    offsets: np.ndarray
    chunks: tuple[int, ...]


class RowReader:
    """Rows of ``path[name]``: ``read(rows)`` -> array [len(rows), *shape[1:]] in the order of ``rows``.

    ``what`` and ``rebuild`` name the file and the rule that rewrites it in errors (see :func:`afo.io.reading_hdf5`).
    """

    def __init__(
        self, path: str | os.PathLike, name: str, what: str = "file", rebuild: str = "rerun the step that wrote it"
    ):
        self.path, self.name, self.what, self.rebuild = str(path), name, what, rebuild
        self._pid: int | None = None
        self._file: h5py.File | None = None
        self._map: np.memmap | None = None
        self._layout: _Contiguous | _Chunked | None = None

    def __getstate__(self) -> dict:
        return {k: getattr(self, k) for k in ("path", "name", "what", "rebuild")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid, self._file, self._map = None, None, None

    def close(self) -> None:
        """Drop this process's handle and map (the next read opens them again)."""
        if self._pid == os.getpid() and self._file is not None:
            self._file.close()
        self._pid, self._file, self._map = None, None, None

    # -- layout ------------------------------------------------------------------------------------------

    def _open(self) -> None:
        with reading_hdf5(self.path, self.what, self.rebuild):
            f = h5py.File(self.path, "r")
            ds = f[self.name]
            self.shape, self.dtype = ds.shape, ds.dtype
            self._row_items = int(np.prod(ds.shape[1:], dtype=np.int64))
            self._map = self._mappable(ds)
        if self._map is None:
            self._file, self._ds = f, ds  # h5py reads; the handle stays open for the next batch
        else:
            f.close()
            self._file = None
        self._pid = os.getpid()

    def _mappable(self, ds: h5py.Dataset) -> np.memmap | None:
        """A byte map of the file and the dataset's offsets, or None when h5py must read it."""
        if ds.ndim < 1 or ds.shape[0] == 0 or ds.id.get_create_plist().get_nfilters() or not ds.dtype.isnative:
            return None
        size = Path(self.path).stat().st_size
        if ds.chunks is None:
            offset = ds.id.get_offset()
            if offset is None:  # never written: HDF5 returns the fill value, which h5py knows
                return None
            self._layout = _Contiguous(int(offset))
            end = offset + ds.size * ds.dtype.itemsize
        else:
            chunks = ds.chunks
            # Row-major rows are whole byte runs only when the chunk spans every dimension after the second.
            if ds.ndim >= 3 and tuple(chunks[2:]) != tuple(ds.shape[2:]):
                return None
            n_row_chunks = -(-ds.shape[0] // chunks[0])
            n_col_chunks = -(-ds.shape[1] // chunks[1]) if ds.ndim >= 2 else 1
            offsets = np.full((n_row_chunks, n_col_chunks), -1, dtype=np.int64)

            def visit(info: h5py.h5d.StoreInfo) -> None:
                col = info.chunk_offset[1] // chunks[1] if ds.ndim >= 2 else 0
                offsets[info.chunk_offset[0] // chunks[0], col] = info.byte_offset

            if hasattr(ds.id, "chunk_iter"):
                ds.id.chunk_iter(visit)
            else:  # HDF5 < 1.14: one call per chunk
                for k in range(ds.id.get_num_chunks()):
                    visit(ds.id.get_chunk_info(k))
            if (offsets < 0).any():  # unwritten chunks hold the fill value
                return None
            chunk_bytes = int(np.prod(chunks, dtype=np.int64)) * ds.dtype.itemsize
            self._layout = _Chunked(offsets, tuple(chunks))
            end = int(offsets.max()) + chunk_bytes
        if end > size:
            raise CorruptFileError(
                f"{self.path}: {self.name} ends beyond the file ({end} > {size} bytes); it is truncated — "
                f"delete it and {self.rebuild}"
            )
        return np.memmap(self.path, dtype=np.uint8, mode="r")

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def mapped(self) -> bool:
        """Whether rows come from the memory map (False: h5py reads them)."""
        if self._pid != os.getpid():
            self._open()
        return self._map is not None

    def read(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as a new array [len(rows), *shape[1:]]."""
        if self._pid != os.getpid():
            self._open()
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"{self.path}:{self.name}: rows out of range [0, {self.shape[0]})")
        if self._map is None:
            return self._read_h5py(rows)
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        item = self.dtype.itemsize
        layout = self._layout
        if isinstance(layout, _Contiguous):
            base, row_bytes = layout.offset, self._row_items * item
            for k, i in enumerate(rows.tolist()):
                out[k] = np.frombuffer(self._map, self.dtype, self._row_items, base + i * row_bytes).reshape(
                    self.shape[1:]
                )
            return out
        assert isinstance(layout, _Chunked)  # set with the map by _mappable
        offsets, chunks = layout
        if len(self.shape) == 1:
            for k, i in enumerate(rows.tolist()):
                c, r = divmod(i, chunks[0])
                out[k] = np.frombuffer(self._map, self.dtype, 1, int(offsets[c, 0]) + r * item)[0]
            return out
        width, ncols = chunks[1], self.shape[1]
        tail = self._row_items // ncols  # items per column (C*h*w after the second axis; 1 for 2-D)
        for k, i in enumerate(rows.tolist()):
            c, r = divmod(i, chunks[0])
            for j in range(offsets.shape[1]):
                valid = min(width, ncols - j * width)  # an edge chunk is stored full width
                start = int(offsets[c, j]) + r * width * tail * item
                block = np.frombuffer(self._map, self.dtype, valid * tail, start)
                out[k, j * width : j * width + valid] = block.reshape(valid, *self.shape[2:])
        return out

    def _read_h5py(self, rows: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(rows, return_inverse=True)
        with reading_hdf5(self.path, self.what, self.rebuild):
            block = self._ds[uniq] if uniq.size else np.empty((0, *self.shape[1:]), dtype=self.dtype)
        return block[inverse.reshape(-1)]
