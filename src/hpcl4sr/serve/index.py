"""Retrieval behind one small interface: each interest's top items, then ComiRec's K-interest merge.

`ExactIndex` is today's chunked exact top-k (`retrieval.topk_multi_interest`), the default everywhere
and the only one evaluation uses. `FaissIndex` searches the item table with faiss (the `faiss` extra):
`flat` (exact inner product), `hnsw` (a graph, tuned by efSearch) or `ivf` (inverted lists, tuned by
nprobe) for large catalogues; its per-interest candidates go through the same merge
(`retrieval.merge_interests`). A model plugs an index in through `SequentialRecommender.rank(...,
index=)`; models that rank items another way (they override `rank`) ignore it.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

from hpcl4sr.errors import UserError
from hpcl4sr.retrieval import merge_interests, topk_multi_interest

INDEX_KINDS = ("exact", "faiss-flat", "faiss-hnsw", "faiss-ivf")


class ItemIndex(Protocol):
    """Top-n items of [B, K, d] interests over one item table, merged; see `topk_multi_interest`."""

    name: str

    def rank(self, interests: torch.Tensor, n: int, exclude: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class ExactIndex:
    """Exact chunked inner-product top-k over the item table (no approximation, no extra dependency)."""

    name = "exact"

    def __init__(self, item_embeddings: torch.Tensor) -> None:
        self.table = item_embeddings.detach()

    def rank(self, interests: torch.Tensor, n: int, exclude: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return topk_multi_interest(interests, self.table.to(interests.device), n, exclude=exclude)


def import_faiss():  # noqa: ANN201  (faiss has no type stubs)
    try:
        import faiss
    except ImportError:
        raise UserError("the faiss index needs faiss: pip install 'hpcl4sr[faiss]'") from None
    return faiss


class FaissIndex:
    """Inner-product search with faiss over items 1..N (row 0, padding, is never indexed).

    `hnsw_m` links per node and `ef_search` the HNSW search breadth; `nlist` inverted lists (default
    4 sqrt(N)) and `nprobe` lists visited by IVF. benchmarks/index_recall.py measures the recall they
    keep against exact search (docs/performance.md).
    """

    def __init__(self, item_embeddings: torch.Tensor, kind: str = "flat", hnsw_m: int = 32,
                 ef_search: int = 256, nlist: int = 0, nprobe: int = 16, threads: int = 0) -> None:
        faiss = import_faiss()
        if threads:
            faiss.omp_set_num_threads(threads)
        vectors = np.ascontiguousarray(item_embeddings.detach()[1:].float().cpu().numpy())
        dim = vectors.shape[1]
        self.name = f"faiss-{kind}"
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = max(2 * hnsw_m, 80)
            self.index.hnsw.efSearch = ef_search
        elif kind == "ivf":
            nlist = nlist or max(1, min(int(4 * math.sqrt(len(vectors))), len(vectors) // 39))
            self.quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(self.quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.train(vectors)
            self.index.nprobe = nprobe
        else:
            raise UserError(f"--index: expected one of {', '.join(INDEX_KINDS)}, got faiss-{kind}")
        self.index.add(vectors)

    def rank(self, interests: torch.Tensor, n: int, exclude: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, k_interests, dim = interests.shape
        # Excluded items may take places in a list: ask for as many more as there are excluded ids.
        width = min(n + (exclude.shape[1] if exclude is not None else 0), self.index.ntotal)
        queries = np.ascontiguousarray(interests.detach().reshape(-1, dim).float().cpu().numpy())
        scores, rows = self.index.search(queries, width)
        items = torch.from_numpy(rows + 1).view(batch, k_interests, width)  # faiss row r is item r + 1
        scores = torch.from_numpy(scores).to(interests.dtype).view(batch, k_interests, width)
        empty = items <= 0  # faiss returns row -1 where it found fewer than `width`
        if exclude is not None:
            banned = (items[..., None] == exclude.cpu()[:, None, None, :]) & (exclude.cpu() > 0)[:, None, None, :]
            empty |= banned.any(-1)
        items, scores = items.masked_fill(empty, 0), scores.masked_fill(empty, -math.inf)
        found = merge_interests(items, scores, n)
        return tuple(part.to(interests.device) for part in found)


def make_index(kind: str, item_embeddings: torch.Tensor, **options: int) -> ItemIndex:
    """`exact` or `faiss-flat` / `faiss-hnsw` / `faiss-ivf` over `item_embeddings` [N + 1, d]."""
    if kind == "exact":
        return ExactIndex(item_embeddings)
    if kind not in INDEX_KINDS:
        raise UserError(f"--index: expected one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    return FaissIndex(item_embeddings, kind.removeprefix("faiss-"), **options)
