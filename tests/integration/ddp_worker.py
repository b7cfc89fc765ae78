"""One rank of the distributed tests, started by test_distributed.py through torchrun.

    torchrun --standalone --nproc_per_node=2 ddp_worker.py DATA RUN MAX_ITERS [--resume]

Trains comirec-sa on DATA into RUN with the trainer as `hpcl4sr train` runs it, then saves this rank's
trained parameters to RUN/../rank{r}.pt and rank 0 writes the sharded test metrics of best.pt to
RUN/../sharded_metrics.json, for the test to compare with a single process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import hpcl4sr.train as trainer
from hpcl4sr import distributed
from hpcl4sr.evaluate import evaluate_model
from hpcl4sr.run import config_for_run, load_run


def main() -> None:
    data, run, max_iters = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    resume = "--resume" in sys.argv
    group, device, _ = distributed.join(torch.device("cpu"))

    built = []  # the trainer's model of this rank, captured when it is built
    build_model = trainer.build_model
    trainer.build_model = lambda *args: built.append(build_model(*args)) or built[-1]

    settings = {"eval_every": 20, "log_every": 10, "batch_size": 32, "seed": 5, "device": "cpu",
                "max_iters": max_iters}
    config = config_for_run("comirec-sa", [{"data": {"path": str(data)}, "train": settings}])
    trainer.train(config, run, resume=resume, progress=False)
    torch.save(built[0].state_dict(), run.parent / f"rank{group.rank}.pt")

    config, dataset, model = load_run(run, "best.pt", "cpu")
    metrics = evaluate_model(model, dataset, "test", batch_size=16)
    if group.is_main:
        (run.parent / "sharded_metrics.json").write_text(json.dumps(metrics))
    distributed.leave()


if __name__ == "__main__":
    main()
