"""The protobuf speed tricks, in one place: the graph index (`graph_index.py`) is built on them,
and no other module keeps its own.

- a repeated field read as a list in one call (`ALL`, `listed`);
- one field read over many nodes with `map` and an attrgetter (`OP_TYPE`, `DOMAIN`, ...);
- the cyclic garbage collector paused while wrappers are made by the hundred thousand
  (`collector_paused`).

Imports nothing heavy (the command's `--help` imports it before onnx).
"""

from __future__ import annotations

import contextlib
import gc
import operator
from collections.abc import Iterator

# `field[:]` copies a repeated protobuf field into a list in one call; iterating the field instead
# goes item by item until protobuf raises IndexError, and formatting that error's message costs
# more than reading a short field (a node's inputs, outputs, attributes; a tensor's dims)
ALL = operator.itemgetter(slice(None))
NAME = operator.attrgetter("name")
OP_TYPE = operator.attrgetter("op_type")
DOMAIN = operator.attrgetter("domain")
INPUT = operator.attrgetter("input")
OUTPUT = operator.attrgetter("output")
DATA_TYPE = operator.attrgetter("data_type")
DATA_LOCATION = operator.attrgetter("data_location")
RAW_DATA = operator.attrgetter("raw_data")


# `listed(field)`: a repeated protobuf field (a node's inputs, a tensor's dims, ...) as a list, in
# one call (`ALL` under a name that reads well; a C callable: no Python frame per call)
listed = ALL


@contextlib.contextmanager
def collector_paused(*, resume: bool = True) -> Iterator[None]:
    """No cyclic garbage collection inside: loading, indexing and folding make objects by the
    hundred thousand (protobuf wrappers, index entries, records) and no cycles, and each
    collection would walk all of them again (about 10% of the pass on a 48,000-node graph).
    `resume=False` (a command whose process ends with it) leaves the collector off: turning it
    back on would walk everything still alive once more."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled and resume:
            gc.enable()
