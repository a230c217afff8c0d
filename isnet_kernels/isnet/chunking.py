"""The relevance pass in chunks of the map axis: :mod:`isnet_kernels.lrp.chunking`, which :meth:`LRP.run
<isnet_kernels.lrp.engine.LRP.run>` applies (``map_chunk=``) and the ISNet's original variant uses at large class
counts. Its names are also importable from here."""

from ..lrp.chunking import (
    FALLBACK_AVAILABLE,
    GRAPH_FACTOR,
    MEMORY_SHARE,
    RelevanceFn,
    _tensors,
    auto_map_chunk,
    available_memory,
    bytes_per_map,
    check_map_chunk,
    chunked_relevance,
    saved_activation_bytes,
)

__all__ = ["FALLBACK_AVAILABLE", "GRAPH_FACTOR", "MEMORY_SHARE", "RelevanceFn", "_tensors", "auto_map_chunk",
           "available_memory", "bytes_per_map", "check_map_chunk", "chunked_relevance", "saved_activation_bytes"]
