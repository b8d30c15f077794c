"""The token-id cache (`tokens.npy`) read through a memory map whose pages are handed back.

Training reads the cache once per epoch, front to back, a chunk at a time. A plain
`np.load(mmap_mode="r")` keeps every page it touched mapped into the process, so the
resident set size (RSS, and also PSS and USS, because no other process maps those pages)
grows to the size of the file: 472 MB for 118 M tokens. `TokenCache` copies each slice
out of the map and then tells the kernel with madvise(MADV_DONTNEED) that the process is
done with those pages. They stay in the page cache, which the kernel may reclaim, and a
later read maps them again without disk I/O while they are cached. What training holds
then depends on the chunk size, not on the corpus size.
"""

import mmap
import os

import numpy as np

from embcli.errors import ModelCorrupt

TOKEN_DTYPE = np.dtype("<u4")
# A page fault on a file mapping also maps neighbouring pages that are in the page cache
# (Linux "fault-around", 64 KiB by default), before and after the faulting page.
# Training reads each chunk with a margin of a few tokens before it, so that read maps
# pages of the previous chunk again after their release. Releasing this many bytes
# before each slice unmaps them too. Without it, one pass in 64 Ki-token chunks left 11 MB
# of a 12.8 M-token (50 MB) cache and 102 MB of a 128 M-token cache mapped (Linux 6.18, ext4).
RELEASE_BEHIND = 2 << 20


def read_npy_header(handle, path):
    """Return (shape, dtype, data offset) of the .npy file open in `handle`."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
    except ValueError as error:
        raise ModelCorrupt(f"{path}: not a valid .npy file ({error})") from None
    if fortran_order and len(shape) > 1:
        raise ModelCorrupt(f"{path}: expected a C-ordered array")
    return shape, dtype, handle.tell()


class TokenCache:
    """A read-only, memory-mapped 1-D uint32 array; slicing returns a copy."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as handle:
            shape, dtype, offset = read_npy_header(handle, path)
            if len(shape) != 1 or dtype != TOKEN_DTYPE:
                raise ModelCorrupt(
                    f"{path}: expected a 1-D uint32 array, found {dtype} {shape}; "
                    "run 'embcli build-vocab CORPUS' again"
                )
            self.length = shape[0]
            self.offset = offset
            size = os.fstat(handle.fileno()).st_size
            if size < offset + self.length * TOKEN_DTYPE.itemsize:
                raise ModelCorrupt(
                    f"{path}: not a valid token cache (the file is shorter than its header says); "
                    "run 'embcli build-vocab CORPUS' again"
                )
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        if self.length:
            self.array = np.frombuffer(self._map, dtype=TOKEN_DTYPE, count=self.length, offset=offset)
        else:
            self.array = np.zeros(0, dtype=TOKEN_DTYPE)

    def __len__(self):
        return self.length

    @property
    def shape(self):
        return (self.length,)

    @property
    def dtype(self):
        return TOKEN_DTYPE

    @property
    def ndim(self):
        return 1

    def __getitem__(self, key):
        if not isinstance(key, slice):
            return self.array[key]
        start, stop, step = key.indices(self.length)
        values = np.array(self.array[key])
        if step == 1:
            self.release(start, stop)
        return values

    def release(self, start, stop):
        """Unmap every page that contains a token in [start, stop), and the pages up to
        RELEASE_BEHIND bytes before it. The file is unchanged.

        Pages shared with neighbouring tokens are unmapped too: the next read of those
        faults them in again from the page cache, which is cheaper than keeping one page
        per chunk mapped for the rest of the run.
        """
        if self._map is None or not hasattr(self._map, "madvise") or stop <= start:
            return
        first = (self.offset + start * TOKEN_DTYPE.itemsize) // mmap.PAGESIZE * mmap.PAGESIZE
        first = max(first - RELEASE_BEHIND, 0)
        last = min(self.offset + stop * TOKEN_DTYPE.itemsize, len(self._map))
        self._map.madvise(mmap.MADV_DONTNEED, first, last - first)
