"""One cache build in a fresh process — or one rank of a gloo job — for ``tests/data/test_prepare.py``.

    python -m tests.data.prepare_run SPEC.json CACHE_DIR NUM_PROC [RANK WORLD PORT]

Prints the published cache directories as a JSON list on its last line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    cache_dir, num_proc = argv[1], int(argv[2])
    if len(argv) > 3:
        import torch.distributed as dist

        rank, world, port = map(int, argv[3:6])
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from panda.data import prepare
    from panda.data.sources import CorpusSource
    from panda.data.tokenizer import load_tokenizer

    prepare.SHARE_RECORDS = spec["share_records"]
    sources = [CorpusSource(**s) for s in spec["sources"]]
    results = prepare.prepare_sources(sources, load_tokenizer(spec["tokenizer"]), spec["tokenizer"], cache_dir,
                                      max_seq_length=spec["max_seq_length"], num_proc=num_proc)
    print(json.dumps([str(cache.path) for cache, _ in results]))


if __name__ == "__main__":
    main(sys.argv[1:])
