import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import panda
from panda.eval.metrics import QuestionMean, first_occurrences
from panda.eval.outputs import merge_records
from panda.eval.scoring import compute_metrics, make_metrics, update_metrics

CORRECT = [1, 0, 0, 1, 1]  # per question index; question 0 is the one the sampler pads in twice


def test_each_question_counts_once_in_one_process():
    metric = QuestionMean()
    metric.update(torch.tensor([0, 2, 4]), torch.tensor([1.0, 0.0, 1.0]))
    metric.update(torch.tensor([1, 3, 0]), torch.tensor([0.0, 1.0, 1.0]))
    result = metric.compute()
    assert result["count"].item() == 5
    assert result["mean"].item() == 3 / 5


def test_first_occurrences():
    assert first_occurrences(torch.tensor([4, 0, 2, 0, 4])).tolist() == [1, 2, 0]


def test_empty_metric_is_nan_with_count_zero():
    with pytest.warns(UserWarning, match="before the ``update``"):
        result = QuestionMean().compute()
    assert result["count"].item() == 0 and torch.isnan(result["mean"])


def test_records_are_merged_by_index_first_copy_wins():
    merged = merge_records([[{"index": 2, "r": 0}, {"index": 0, "r": 0}], [{"index": 1, "r": 1}, {"index": 0, "r": 1}]])
    assert merged == [{"index": 0, "r": 0}, {"index": 1, "r": 1}, {"index": 2, "r": 0}]


def test_metrics_from_records_name_every_protocol_number():
    metrics = make_metrics("both")
    records = [{"index": i, "generate": {"correct": bool(c), "prediction": None if i == 1 else "A"},
                "loglik": {"correct": bool(c), "correct_norm": True}} for i, c in enumerate(CORRECT)]
    update_metrics(metrics, records)
    assert compute_metrics(metrics) == {"generate/acc": 0.6, "count": 5,
                                        "generate/unparseable_rate": 0.2,
                                        "loglik/acc": 0.6, "loglik/acc_norm": 1.0}


WORKER = textwrap.dedent("""
    import json, sys
    import torch
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler
    from panda.eval.outputs import gather_records
    from panda.eval.scoring import compute_metrics, make_metrics, update_metrics

    def main(rank, port, out, correct):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        share = list(DistributedSampler(range(len(correct)), num_replicas=2, rank=rank, shuffle=False))
        records = [{"index": i, "loglik": {"correct": bool(correct[i]), "correct_norm": bool(correct[i])}}
                   for i in share]
        metrics = make_metrics("loglik")
        update_metrics(metrics, records)
        result = {"share": share, "metrics": compute_metrics(metrics),
                  "records": [r["index"] for r in gather_records(records)]}
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result, f)
        dist.destroy_process_group()

    if __name__ == "__main__":
        port, out, correct = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
        torch.multiprocessing.spawn(main, args=(port, out, correct), nprocs=2)
""")


def test_no_double_counting_across_two_ranks_with_uneven_split(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "result"
    root = os.path.dirname(os.path.dirname(panda.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, str(script), str(port), str(out), json.dumps(CORRECT)], check=True, timeout=120,
                   env=env)
    results = [json.loads((tmp_path / f"result.{rank}").read_text()) for rank in range(2)]
    assert [r["share"] for r in results] == [[0, 2, 4], [1, 3, 0]]  # rank 1 gets question 0 again
    for result in results:  # the same synchronised numbers on every rank
        assert result["metrics"] == {"loglik/acc": 0.6, "count": 5,
                                     "loglik/acc_norm": 0.6}
        assert result["records"] == [0, 1, 2, 3, 4]
