"""The only module that touches faiss's GPU API; imported lazily, so CPU-only installs never load it.

The CPU index stays the source of truth (it is what gets saved, mutated and reconstructed from); builds of
Flat and IVF specs train and fill on the GPU and copy back, and a GPU clone serves searches, re-made after
every mutation. Classic GPU indices ignore `IDSelector`s, so filtered
searches on the GPU over-fetch and post-filter (see `FaissIndex.search`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dermcore.errors import DermError

log = logging.getLogger(__name__)

_lock = threading.Lock()
_resources: Any = None


def num_gpus() -> int:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when faiss sees a GPU, else "cpu"; "cuda" without a GPU raises DermError."""
    if device == "cpu":
        return "cpu"
    n = num_gpus()
    if device == "auto":
        return "cuda" if n > 0 else "cpu"
    if device == "cuda":
        if n == 0:
            raise DermError(
                "device 'cuda' requested but faiss sees no GPU (is faiss-gpu installed and a GPU visible?); "
                "use device 'cpu' or 'auto'"
            )
        return "cuda"
    raise DermError(f"unknown device {device!r}")


def _gpu_resources() -> Any:
    """One `StandardGpuResources` per process (it owns scratch memory and streams), made on first use."""
    global _resources
    with _lock:
        if _resources is None:
            import faiss

            if not hasattr(faiss, "StandardGpuResources"):
                raise DermError("this faiss build has no GPU support (install faiss-gpu)")
            _resources = faiss.StandardGpuResources()
        return _resources


def to_gpu(cpu_index: Any, device_id: int = 0) -> Any:
    """A GPU clone of `cpu_index` (an IndexIDMap2 over Flat/IVF); raises DermError for types faiss cannot move."""
    import faiss

    try:
        co = faiss.GpuClonerOptions()
        co.useFloat16 = False
        return faiss.index_cpu_to_gpu(_gpu_resources(), device_id, cpu_index, co)
    except (RuntimeError, AttributeError) as e:  # faiss raises RuntimeError for unsupported index types
        raise DermError(f"cannot move this faiss index to the GPU: {e}") from None


def set_nprobe(gpu_index: Any, nprobe: int) -> None:
    """Set nprobe on a GPU clone. GPU indices take no per-call SearchParameters with selectors, so this mutates."""
    import faiss

    faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)


def build_on_gpu(base: Any, train_sample: Any, ids: Any, vecs: Any, device_id: int = 0) -> Any:
    """Train and fill the empty CPU index `base` on the GPU; returns the CPU `IndexIDMap2` copy.

    Raises DermError where faiss cannot clone the spec to the GPU (HNSW, refine): the caller builds on the CPU.
    """
    import faiss

    try:
        gpu = to_gpu(faiss.IndexIDMap2(base), device_id)
        if not gpu.is_trained:
            gpu.train(train_sample)
        if len(ids):
            gpu.add_with_ids(vecs, ids)
        return faiss.index_gpu_to_cpu(gpu)
    except (RuntimeError, AttributeError) as e:
        raise DermError(f"faiss cannot build this index on the GPU ({e})") from None
