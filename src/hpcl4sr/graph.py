"""HPCL4SR's category global graph (eq. 1) and its multi-hop diffusion (eq. 2).

Built from training users only, so no valid or test sequence leaks into the model. The diffused matrix
is computed once when the model is built for training: every training step then needs one product A @ H
per GCN layer, never the powers of A2. It is a persistent buffer, so it travels with the weights and a
model loaded from an exported artifact needs no training users.
"""

from __future__ import annotations

import numpy as np
import torch

from hpcl4sr.data.dataset import SequenceDataset

DENSE_LIMIT = 5_000  # above this many categories the diffusion is applied by sparse power iteration


def category_cooccurrence(dataset: SequenceDataset, users: np.ndarray) -> np.ndarray:
    """A1: a[i, j] counts adjacent category changes (c_t, c_t+1), c_t != c_t+1, in both directions.

    Returns a dense (C + 1) x (C + 1) float64 matrix; row and column 0 (padding) stay zero.
    """
    size = dataset.n_categories + 1
    starts, ends = dataset.offsets[users], dataset.offsets[users + 1]
    lengths = ends - starts
    # The flat positions of every selected user's interactions, then the categories along them.
    positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    categories = dataset.item_category[np.asarray(dataset.items)[positions]]
    same_user = np.ones(len(categories), dtype=bool)
    same_user[np.cumsum(lengths)[:-1]] = False  # the first position of each user has no predecessor
    previous, current = categories[:-1], categories[1:]
    keep = same_user[1:] & (previous != current)
    counts = np.zeros((size, size), dtype=np.float64)
    np.add.at(counts, (previous[keep], current[keep]), 1.0)
    return counts + counts.T


def normalise(counts: np.ndarray) -> np.ndarray:
    """A2(i, j) = a_ij / sqrt((a_i + 1)(a_j + 1)), a_i = sum_j a_ij (eq. 1)."""
    scale = 1.0 / np.sqrt(counts.sum(axis=1) + 1.0)
    return counts * scale[:, None] * scale[None, :]


def diffusion_weights(alpha: float, hops: int) -> np.ndarray:
    """theta_i = alpha (1 - alpha)^i for i = 0..hops, renormalised to sum to 1 (eq. 2's constraint).

    Personalised-PageRank weights truncated at `hops`. Renormalising the truncated series keeps
    theta_i > theta_{i+1}, as the paper states; putting the remainder (1 - alpha)^hops on the last power
    instead would give hop 4 a weight of 0.52 at alpha 0.15, the largest of all.
    """
    theta = alpha * (1.0 - alpha) ** np.arange(hops + 1)
    return theta / theta.sum()


def diffuse(a2: np.ndarray, alpha: float, hops: int) -> np.ndarray:
    """A = sum_i theta_i A2^i, i = 0..hops, as a dense matrix (Horner's scheme: `hops` products)."""
    theta = diffusion_weights(alpha, hops)
    result = theta[hops] * np.eye(len(a2))
    for i in range(hops - 1, -1, -1):
        result = a2 @ result + theta[i] * np.eye(len(a2))
    return result


class Diffusion(torch.nn.Module):
    """Applies the diffused adjacency A to node features: dense A @ H, or sparse power iteration.

    Dense (the default up to 5,000 categories) stores A once; above that A would be dense and too big,
    so A2 is stored sparse and A @ H = sum_i theta_i A2^i H is evaluated with `hops` sparse products.
    """

    def __init__(self, a2: np.ndarray | None, size: int, alpha: float, hops: int) -> None:
        """`a2`: A2 of the training users, or None when the matrix comes with the weights (`size` nodes)."""
        super().__init__()
        self.dense = size <= DENSE_LIMIT
        theta = torch.tensor(diffusion_weights(alpha, hops), dtype=torch.float32)
        self.register_buffer("theta", theta, persistent=False)
        if a2 is None:  # a placeholder that load_state_dict replaces (see _load_from_state_dict)
            matrix = torch.zeros(size, size) if self.dense else torch.zeros(size, size).to_sparse_csr()
        elif self.dense:
            matrix = torch.tensor(diffuse(a2, alpha, hops), dtype=torch.float32)
        else:
            matrix = torch.tensor(a2, dtype=torch.float32).to_sparse_csr()
        self.register_buffer("matrix", matrix)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # noqa: ANN001
                              unexpected_keys, error_msgs) -> None:
        # A sparse matrix cannot be copied into a placeholder with another number of non-zeros: take the
        # saved one as it is, on this module's device.
        key = prefix + "matrix"
        if self.dense or key not in state_dict:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
            return
        self.matrix = state_dict[key].to(self.matrix.device)
        rest = {name: value for name, value in state_dict.items() if name != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        missing_keys.remove(key)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return self.matrix @ features
        power, total = features, self.theta[0] * features
        for weight in self.theta[1:]:
            power = self.matrix @ power
            total = total + weight * power
        return total


def training_graph(dataset: SequenceDataset) -> np.ndarray:
    """A2 of the training users' category sequences."""
    return normalise(category_cooccurrence(dataset, dataset.split_users["train"]))
