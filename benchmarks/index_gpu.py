"""faiss GPU build and search throughput for 1M ads x 64 dims beside the CPU figure.

Where faiss sees a GPU, Flat and IVF4096,Flat are built and searched on it through our `FaissIndex`
(device "cuda") and on the CPU. Where faiss has no GPU support but torch sees CUDA, an exact top-k on the GPU
with torch stands in. Where no GPU exists, writes {"skipped": ...} and exits 0 at once: no number is made up.
Writes benchmarks/results/index_gpu.json.
"""

from __future__ import annotations

import time
from typing import Any

from common import write_result

N, DIM, K, N_QUERIES = 1_000_000, 64, 100, 10_000


def faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def bench_faiss(data: Any, queries: Any) -> dict[str, Any]:
    from index import Backend, IndexConfig, SearchParams, make_index
    from index.exact import recall_against_exact

    out: dict[str, Any] = {}
    for spec, params in (("Flat", None), ("IVF4096,Flat", SearchParams(nprobe=32))):
        for device in ("cpu", "cuda"):
            index = make_index(IndexConfig(Backend.FAISS, spec, DIM, device=device))
            t0 = time.perf_counter()
            index.build(data.ids, data.vecs)
            build_s = time.perf_counter() - t0
            index.search(queries[:100], K, params)  # warm-up (moves the index to the GPU)
            t0 = time.perf_counter()
            index.search(queries, K, params)
            search_s = time.perf_counter() - t0
            recall = recall_against_exact(
                index, queries[:1000], K, params, ad_ids=data.ids, ad_vecs=data.vecs
            )
            out[f"{spec} {device}"] = {
                "build_seconds": round(build_s, 3),
                "qps": round(len(queries) / search_s, 1),
                "recall_at_100": round(recall, 4),
            }
            print(spec, device, out[f"{spec} {device}"], flush=True)
    return out


def bench_torch(data: Any, queries: Any) -> dict[str, Any]:
    import torch

    from index import Backend, IndexConfig, make_index

    dev = torch.device("cuda")
    ads = torch.from_numpy(data.vecs).to(dev)
    q = torch.from_numpy(queries).to(dev)
    torch.topk(q[:100] @ ads.T, K, dim=1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for lo in range(0, q.shape[0], 1000):
        torch.topk(q[lo : lo + 1000] @ ads.T, K, dim=1)
    torch.cuda.synchronize()
    gpu_s = time.perf_counter() - t0
    cpu = make_index(IndexConfig(Backend.FAISS, "Flat", DIM))
    cpu.build(data.ids, data.vecs)
    t0 = time.perf_counter()
    cpu.search(queries[:2000], K)
    cpu_qps = 2000 / (time.perf_counter() - t0)
    return {
        "exact torch cuda": {"qps": round(len(queries) / gpu_s, 1)},
        "Flat cpu (faiss)": {"qps": round(cpu_qps, 1)},
    }


def main() -> None:
    n_faiss, has_torch = faiss_gpus(), torch_cuda()
    if n_faiss == 0 and not has_torch:
        write_result(
            "index_gpu",
            {
                "command": "python benchmarks/index_gpu.py",
                "skipped": "no GPU on this machine",
                "faiss_gpus": 0,
                "torch_cuda": False,
            },
        )
        return
    from index.synthetic import ClusteredConfig, ClusteredData

    data = ClusteredData(ClusteredConfig(n=N, dim=DIM))
    queries = data.queries(N_QUERIES)
    if n_faiss > 0:
        results, path = bench_faiss(data, queries), "faiss GPU"
    else:
        results, path = bench_torch(data, queries), "torch CUDA exact search (this faiss build has no GPU)"
    write_result(
        "index_gpu",
        {
            "command": "python benchmarks/index_gpu.py",
            "path": path,
            "n_vectors": N,
            "dim": DIM,
            "k": K,
            "n_queries": N_QUERIES,
            "faiss_gpus": n_faiss,
            "torch_cuda": has_torch,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
