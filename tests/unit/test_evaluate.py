"""The evaluation protocol (DESIGN section 3): metrics by hand and by property, retrieval against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcl4sr.metrics import batch_metric_values, rank_metrics
from hpcl4sr.retrieval import topk_multi_interest

INV_LOG2_3 = 1.0 / math.log2(3)  # discount of rank 2
METRICS = ("recall", "hr", "ndcg", "ndcg_std")


def comirec_reference(ranked: list[int], targets: list[int]) -> tuple[float, float, float]:
    """ComiRec's master-branch evaluate loop for one user (recall, ndcg, hit rate); math.log(x, 2) -> log2."""
    recall, dcg = 0, 0.0
    for no, iid in enumerate(ranked):
        if iid in targets:
            recall += 1
            dcg += 1.0 / math.log2(no + 2)
    idcg = 0.0
    for no in range(recall):
        idcg += 1.0 / math.log2(no + 2)
    if recall > 0:
        return recall / len(targets), dcg / idcg, 1.0
    return recall / len(targets), 0.0, 0.0


# ---------------------------------------------------------------- rank_metrics by hand


def test_duplicate_targets_count_in_recall_denominator() -> None:
    # Only rank 2 (item 3) hits set(T) = {3, 7}: h = 1. |T| = 3 with the duplicate, so recall = 1/3.
    # ndcg: DCG = 1/log2(3), IDCG over the h = 1 hit = 1/log2(2) = 1, so ndcg = 1/log2(3) = 0.6309.
    # ndcg_std: IDCG over min(|set(T)|, n) = min(2, 3) = 2 ranks = 1 + 1/log2(3), so 0.6309/1.6309 = 0.3869.
    got = rank_metrics([5, 3, 9], [3, 7, 3], n=3)
    assert got["recall"] == pytest.approx(1 / 3)
    assert got["hr"] == 1.0
    assert got["ndcg"] == pytest.approx(INV_LOG2_3)
    assert got["ndcg_std"] == pytest.approx(INV_LOG2_3 / (1 + INV_LOG2_3))
    assert got["ndcg_std"] == pytest.approx(0.38685, abs=1e-5)


def test_all_distinct_targets_found_still_loses_recall_to_duplicates() -> None:
    # Ranks 1 and 2 hit {3, 7}: h = 2, |T| = 4, recall = 2/4 = 0.5 although every distinct target was found.
    # Both hits on top: ndcg = 1; min(|set(T)| = 2, n = 2) = 2 = h, so ndcg_std = 1 as well.
    got = rank_metrics([3, 7, 1, 2], [7, 3, 7, 3], n=2)
    assert got == pytest.approx({"recall": 0.5, "hr": 1.0, "ndcg": 1.0, "ndcg_std": 1.0})


def test_only_the_first_n_count() -> None:
    # The target sits at rank 3: nothing at n = 2. At n = 3: h = 1, DCG = 1/log2(4) = 0.5, ndcg = 0.5/1.
    assert rank_metrics([1, 2, 3], [3], n=2) == {"recall": 0.0, "hr": 0.0, "ndcg": 0.0, "ndcg_std": 0.0}
    assert rank_metrics([1, 2, 3], [3], n=3) == pytest.approx(
        {"recall": 1.0, "hr": 1.0, "ndcg": 0.5, "ndcg_std": 0.5}
    )


def test_ndcg_std_ideal_is_capped_at_n() -> None:
    # Hit at rank 2 only: DCG = 1/log2(3). ComiRec's IDCG (h = 1) is 1; the standard one covers
    # min(|set(T)| = 3, n = 2) = 2 ranks: 1 + 1/log2(3). Recall = 1/3.
    got = rank_metrics([9, 4], [4, 5, 6], n=2)
    assert got == pytest.approx(
        {"recall": 1 / 3, "hr": 1.0, "ndcg": INV_LOG2_3, "ndcg_std": INV_LOG2_3 / (1 + INV_LOG2_3)}
    )


def test_empty_slot_is_never_a_hit_but_keeps_its_rank() -> None:
    # Rank 1 is an empty slot (0); the hit at rank 2 is discounted as rank 2: DCG = 1/log2(3), and both
    # ideals cover one rank (h = 1, min(|set(T)|, n) = 1), so both NDCGs are 1/log2(3).
    got = rank_metrics([0, 4], [4], n=2)
    assert got == pytest.approx({"recall": 1.0, "hr": 1.0, "ndcg": INV_LOG2_3, "ndcg_std": INV_LOG2_3})


@pytest.mark.parametrize(
    ("ranked", "targets", "n", "message"),
    [
        ([1, 2], [], 2, "empty"),
        ([1, 2], [0, 1], 2, "padding"),
        ([1, 2, 1], [1], 3, "repeats"),
        ([1, 2], [1], 0, "n must be"),
    ],
)
def test_rank_metrics_rejects_bad_input(ranked: list[int], targets: list[int], n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rank_metrics(ranked, targets, n)


def test_duplicate_beyond_the_cut_is_ignored() -> None:
    # Only the first n items form the recommendation; what follows is not validated.
    assert rank_metrics([1, 2, 1], [2], n=2)["recall"] == 1.0


# ---------------------------------------------------------------- rank_metrics by property

ITEM = st.integers(min_value=1, max_value=15)
RANKED = st.lists(ITEM, unique=True, max_size=12)
TARGETS = st.lists(ITEM, min_size=1, max_size=8)
CUTOFF = st.integers(min_value=1, max_value=15)


@settings(max_examples=200, deadline=None)
@given(RANKED, TARGETS, CUTOFF)
def test_metric_bounds_and_relations(ranked: list[int], targets: list[int], n: int) -> None:
    got = rank_metrics(ranked, targets, n)
    assert set(got) == set(METRICS)
    assert all(0.0 <= value <= 1.0 + 1e-12 for value in got.values())
    assert got["hr"] >= got["recall"]
    assert (got["recall"] > 0) == (got["hr"] == 1.0) == (got["ndcg"] > 0) == (got["ndcg_std"] > 0)
    assert got["ndcg_std"] <= got["ndcg"] + 1e-12


@settings(max_examples=200, deadline=None)
@given(RANKED, TARGETS, CUTOFF)
def test_matches_comirec_evaluate_loop(ranked: list[int], targets: list[int], n: int) -> None:
    got = rank_metrics(ranked, targets, n)
    recall, ndcg, hr = comirec_reference(ranked[:n], targets)
    assert (got["recall"], got["ndcg"], got["hr"]) == pytest.approx((recall, ndcg, hr))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_ndcg_is_one_when_all_hits_lead(data: st.DataObject) -> None:
    targets = data.draw(TARGETS)
    distinct = sorted(set(targets))
    hits = data.draw(st.lists(st.sampled_from(distinct), unique=True, min_size=1))
    misses = data.draw(st.lists(ITEM.filter(lambda item: item not in distinct), unique=True, max_size=5))
    n = data.draw(st.integers(min_value=len(hits), max_value=len(hits) + len(misses) + 3))
    got = rank_metrics(hits + misses, targets, n)
    assert got["ndcg"] == pytest.approx(1.0)
    # Standard NDCG reaches 1 only when every distinct target that fits in n is found.
    assert (got["ndcg_std"] == pytest.approx(1.0)) == (len(hits) == min(len(distinct), n))


@settings(max_examples=200, deadline=None)
@given(RANKED, TARGETS, CUTOFF)
def test_recall_and_hr_never_drop_as_n_grows(ranked: list[int], targets: list[int], n: int) -> None:
    small, large = rank_metrics(ranked, targets, n), rank_metrics(ranked, targets, n + 1)
    assert large["recall"] >= small["recall"]
    assert large["hr"] >= small["hr"]


@settings(max_examples=200, deadline=None)
@given(RANKED, TARGETS, CUTOFF, st.randoms(use_true_random=False))
def test_target_order_is_irrelevant(ranked: list[int], targets: list[int], n: int, rng) -> None:
    shuffled = list(targets)
    rng.shuffle(shuffled)
    assert rank_metrics(ranked, shuffled, n) == rank_metrics(ranked, targets, n)


# ---------------------------------------------------------------- batch_metric_values


def summed(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value.sum()) for key, value in values.items()}


@st.composite
def metric_batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Random ranked rows (distinct items, some slots emptied to 0) and right-padded targets with repeats."""
    batch = draw(st.integers(min_value=1, max_value=6))
    n_max = draw(st.integers(min_value=1, max_value=12))
    width = draw(st.integers(min_value=1, max_value=8))
    ranked, targets = [], []
    for _ in range(batch):
        row = draw(st.lists(st.integers(1, 20), unique=True, min_size=n_max, max_size=n_max))
        empty = draw(st.lists(st.booleans(), min_size=n_max, max_size=n_max))
        ranked.append([0 if blank else item for item, blank in zip(row, empty)])
        real = draw(st.lists(st.integers(1, 20), min_size=1, max_size=width))
        targets.append(real + [0] * (width - len(real)))
    ns = tuple(draw(st.lists(st.integers(1, 15), unique=True, min_size=1, max_size=3)))
    return torch.tensor(ranked), torch.tensor(targets), ns


@settings(max_examples=200, deadline=None)
@given(metric_batches())
def test_batch_sums_equal_summed_rank_metrics(
    case: tuple[torch.Tensor, torch.Tensor, tuple[int, ...]],
) -> None:
    ranked, targets, ns = case
    got = summed(batch_metric_values(ranked, targets, ns))
    assert list(got) == [f"{metric}@{n}" for metric in METRICS for n in ns]
    for n in ns:
        per_user = [
            rank_metrics(r.tolist(), [item for item in t.tolist() if item != 0], n)
            for r, t in zip(ranked, targets)
        ]
        for metric in METRICS:
            expected = math.fsum(user[metric] for user in per_user)
            assert got[f"{metric}@{n}"] == pytest.approx(expected, rel=1e-12, abs=1e-12), (metric, n)
            assert isinstance(got[f"{metric}@{n}"], float)


def test_batch_sums_default_cutoffs() -> None:
    ranked = torch.arange(1, 51).unsqueeze(0)  # items 1..50
    targets = torch.tensor([[30, 30, 0, 0]])  # hit at rank 30 only: outside @20, inside @50; |T| = 2
    got = summed(batch_metric_values(ranked, targets))
    assert got["recall@20"] == 0.0
    assert got["recall@50"] == pytest.approx(0.5)
    assert got["ndcg@50"] == pytest.approx(1 / math.log2(31))
    assert got["ndcg_std@50"] == pytest.approx(1 / math.log2(31))


def test_batch_sums_reject_empty_target_row_and_repeats() -> None:
    with pytest.raises(ValueError, match="all padding"):
        batch_metric_values(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 0], [0, 0]]), ns=(2,))
    with pytest.raises(ValueError, match="repeats"):
        batch_metric_values(torch.tensor([[1, 2, 1]]), torch.tensor([[1]]), ns=(3,))


# ---------------------------------------------------------------- topk_multi_interest


def reference_topk(
    interests: torch.Tensor, items: torch.Tensor, n: int, exclude: torch.Tensor | None = None
) -> tuple[list[list[int]], list[list[float]], list[list[int]]]:
    """Full score matrix, per-interest top-n, pooled merge; plain Python with the documented tie rule."""
    scores = torch.einsum("bkd,nd->bkn", interests, items).tolist()
    n_items = items.shape[0] - 1
    out_items, out_scores, out_interest = [], [], []
    for b, user_scores in enumerate(scores):
        banned = set(exclude[b].tolist()) if exclude is not None else set()
        pool = []
        for k, row in enumerate(user_scores):
            ranked = sorted((-row[i], i) for i in range(1, n_items + 1) if i not in banned)
            pool += [(neg, i, k) for neg, i in ranked[:n]]
        seen, merged = set(), []
        for neg, i, k in sorted(pool):  # score desc, item asc, interest asc
            if i not in seen:
                seen.add(i)
                merged.append((i, -neg, k))
        merged = (merged + [(0, -math.inf, -1)] * n)[:n]
        out_items.append([i for i, _, _ in merged])
        out_scores.append([s for _, s, _ in merged])
        out_interest.append([k for _, _, k in merged])
    return out_items, out_scores, out_interest


@st.composite
def retrieval_cases(draw: st.DrawFn) -> dict:
    """Small integer-valued embeddings: scores are exact (chunking cannot perturb them) and ties abound."""
    batch, k, d = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n_items, n = draw(st.integers(1, 25)), draw(st.integers(1, 10))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    spread = draw(st.integers(1, 3))
    case = {
        "interests": torch.randint(-spread, spread + 1, (batch, k, d), generator=gen).double(),
        "items": torch.randint(-spread, spread + 1, (n_items + 1, d), generator=gen).double(),
        "n": n,
        "chunk": draw(st.integers(1, 30)),
        "exclude": None,
    }
    if draw(st.booleans()):
        case["exclude"] = torch.randint(0, n_items + 1, (batch, draw(st.integers(1, 8))), generator=gen)
    return case


@settings(max_examples=300, deadline=None)
@given(retrieval_cases())
def test_topk_matches_brute_force(case: dict) -> None:
    items, scores, interest = topk_multi_interest(
        case["interests"], case["items"], case["n"], chunk_items=case["chunk"], exclude=case["exclude"]
    )
    ref_items, ref_scores, ref_interest = reference_topk(
        case["interests"], case["items"], case["n"], case["exclude"]
    )
    assert items.dtype == interest.dtype == torch.long
    assert items.tolist() == ref_items
    assert scores.tolist() == ref_scores
    assert interest.tolist() == ref_interest


@pytest.mark.parametrize("n", [1, 3, 5])
def test_topk_block_pruning_on_wide_rows_matches_brute_force(n: int) -> None:
    """Rows of >= 512 n columns take the block-maxima path; small integer scores make ties everywhere."""
    gen = torch.Generator().manual_seed(n)
    interests = torch.randint(-2, 3, (3, 2, 4), generator=gen).double()
    items = torch.randint(-2, 3, (5_001, 4), generator=gen).double()
    exclude = torch.randint(0, 5_001, (3, 6), generator=gen)
    for chunk in (5_000, 3_000):  # one wide chunk, and a chunk boundary inside the table
        got = topk_multi_interest(interests, items, n, chunk_items=chunk, exclude=exclude)
        ref_items, ref_scores, ref_interest = reference_topk(interests, items, n, exclude)
        assert got[0].tolist() == ref_items and got[1].tolist() == ref_scores and got[2].tolist() == ref_interest


def test_topk_does_not_depend_on_chunking_in_float32() -> None:
    gen = torch.Generator().manual_seed(0)
    interests = torch.randn(4, 3, 8, generator=gen)
    items = torch.randn(1001, 8, generator=gen)
    whole = topk_multi_interest(interests, items, n=50, chunk_items=10_000)
    for chunk in (1, 7, 64, 1000):
        parts = topk_multi_interest(interests, items, n=50, chunk_items=chunk)
        assert torch.equal(parts[0], whole[0])
        assert torch.allclose(parts[1], whole[1])
        assert torch.equal(parts[2], whole[2])


def test_same_item_from_several_interests_appears_once_credited_to_the_first() -> None:
    gen = torch.Generator().manual_seed(1)
    one = torch.randn(2, 1, 4, generator=gen)
    items = torch.randn(40, 4, generator=gen)
    single = topk_multi_interest(one, items, n=10, chunk_items=16)
    triple = topk_multi_interest(one.expand(2, 3, 4), items, n=10, chunk_items=16)
    assert torch.equal(triple[0], single[0])
    assert torch.allclose(triple[1], single[1])  # another matmul shape may round differently
    assert (triple[2] == 0).all()
    assert all(len(set(row)) == 10 for row in triple[0].tolist())


def test_ties_go_to_the_smaller_item_id() -> None:
    # An untrained (all-zero) table scores every item 0: the rule alone decides the ranking.
    items, scores, interest = topk_multi_interest(torch.ones(2, 2, 3), torch.zeros(30, 3), n=5, chunk_items=4)
    assert items.tolist() == [[1, 2, 3, 4, 5]] * 2
    assert (scores == 0).all() and (interest == 0).all()


def test_padding_row_is_never_returned() -> None:
    items = torch.zeros(6, 2)
    items[0] = 1e6  # the padding row would win every query if it were searched
    items[1:, 0] = torch.arange(1, 6, dtype=torch.float32)
    got, scores, _ = topk_multi_interest(torch.ones(1, 2, 2), items, n=3)
    assert got.tolist() == [[5, 4, 3]]
    assert scores.tolist() == [[5.0, 4.0, 3.0]]


def test_fewer_items_than_n_are_padded() -> None:
    items, scores, interest = topk_multi_interest(torch.ones(1, 2, 1), torch.arange(4.0).unsqueeze(1), n=5)
    assert items.tolist() == [[3, 2, 1, 0, 0]]
    assert scores.tolist() == [[3.0, 2.0, 1.0, -math.inf, -math.inf]]
    assert interest.tolist() == [[0, 0, 0, -1, -1]]


def test_excluded_items_are_never_returned_even_to_fill_the_list() -> None:
    table = torch.arange(6.0).unsqueeze(1)  # item i scores i for a query of 1
    exclude = torch.tensor([[5, 3, 0, 0], [1, 2, 3, 4]])  # 0 is padding, not an exclusion
    items, scores, _ = topk_multi_interest(torch.ones(2, 1, 1), table, n=3, chunk_items=2, exclude=exclude)
    assert items.tolist() == [[4, 2, 1], [5, 0, 0]]
    assert scores[1, 1:].tolist() == [-math.inf, -math.inf]


def test_topk_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="item_embeddings"):
        topk_multi_interest(torch.ones(1, 2, 3), torch.ones(5, 4), n=2)
    with pytest.raises(ValueError, match="exclude"):
        topk_multi_interest(
            torch.ones(2, 2, 3), torch.ones(5, 3), n=2, exclude=torch.ones(3, 2, dtype=torch.long)
        )
