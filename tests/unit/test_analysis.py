"""The repeat / new breakdown against a brute-force count over the full score matrix."""

from pathlib import Path

import numpy as np
import torch

from hpcl4sr.analysis import distinct_names, repeat_breakdown
from hpcl4sr.run import build_model, config_for_run, open_dataset


def test_repeat_breakdown_matches_brute_force(synthetic_dir):
    torch.manual_seed(0)
    config = config_for_run("comirec-sa", [{"data": {"path": str(synthetic_dir)}}])
    dataset, max_len = open_dataset(config)
    model = build_model(config, dataset, max_len).eval()
    figures = repeat_breakdown(model, dataset, "test", n=20, batch_size=64)

    counts = np.zeros(6, dtype=np.int64)  # repeat targets, repeat hits, new targets, new hits, history slots, slots
    with torch.no_grad():
        for batch in dataset.eval_batches("test", 64, max_len):
            scores = (model.interests(batch) @ model.item_embeddings()[1:].T).amax(dim=1)  # [B, N]
            top = (torch.argsort(scores, dim=1, descending=True)[:, :20] + 1).numpy()
            for row, history, targets in zip(top, batch.history.numpy(), batch.targets.numpy()):
                history, targets = set(history[history > 0]), set(targets[targets > 0])
                repeat, new = targets & history, targets - history
                counts += [len(repeat), len(repeat & set(row)), len(new), len(new & set(row)),
                           len(set(row) & history), len(row)]
    assert counts[0] > 0 and counts[2] > 0 and counts[4] > 0  # the synthetic log has both kinds of target
    assert counts[1] > 0 and counts[3] > 0  # and even an untrained model hits some of each
    assert figures["repeat_targets"] == counts[0] and figures["new_targets"] == counts[2]
    assert figures["repeat_hit_rate"] == counts[1] / counts[0]
    assert figures["new_hit_rate"] == counts[3] / counts[2]
    assert figures["history_share"] == counts[4] / counts[5]


def test_runs_sharing_a_folder_name_are_told_apart_by_their_path():
    runs = [Path("/x/grid/hpcl4sr/s1"), Path("/x/grid/remi/s1"), Path("runs/mine"), Path("a/run"), Path("b/run")]
    assert distinct_names(runs) == ["hpcl4sr/s1", "remi/s1", "mine", "a/run", "b/run"]
