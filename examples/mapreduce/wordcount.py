"""Word count over a folder of text files: map, shuffle, reduce, and a checkpointing actor.

Application code: only Ray's API. It runs on a real Ray cluster by changing the
import to `import ray`. Its test (test_wordcount.py) runs it under seeded
chaos with minicluster.testing; nothing here knows about that.

    files, in batches ──► map_file(path) ──► NUM_PARTITIONS word lists (by a stable hash)
                                                  │  (shuffle: partition r of every map of the batch)
                                                  ▼
                                        reduce_partition(r) ──► {word: count}
                                                  │
                          Checkpointer.commit(batch, *counts) ──► checkpoint file (atomic rename)

Fault tolerance, the Ray way:
- map and reduce tasks are pure functions of their inputs: a crashed worker or
  a dead node only means running them again (`max_retries`), and a lost map
  output is rebuilt from lineage; a flaky read (OSError) is retried too;
- the checkpointer is an actor that restarts after its process or node dies
  (`max_restarts`, `max_task_retries`) and reloads its checkpoint file in its
  constructor; `commit` is idempotent per batch, so a retried commit (the actor
  died after writing, before answering) counts nothing twice;
- a driver that is started again with the same checkpoint file skips the
  batches already committed.

    python examples/mapreduce/wordcount.py FOLDER [CHECKPOINT]
"""

from __future__ import annotations

import collections
import json
import os
import sys
import zlib
from typing import Dict, List, Sequence, Tuple

import minicluster as ray  # or: import ray

NUM_PARTITIONS = 4
BATCH_SIZE = 4  # files per checkpointed batch
PUNCTUATION = ".,;:!?\"'()[]"


@ray.remote(max_retries=5, retry_exceptions=[OSError])
def map_file(path: str, num_partitions: int) -> Tuple[List[str], ...]:
    """Read one file; its words, normalised, split into partitions by a stable hash."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    partitions: List[List[str]] = [[] for _ in range(num_partitions)]
    for raw in text.split():
        word = raw.strip(PUNCTUATION).lower()
        if word:
            partitions[zlib.crc32(word.encode()) % num_partitions].append(word)
    return tuple(partitions)


@ray.remote(max_retries=5)
def reduce_partition(*word_lists: List[str]) -> Dict[str, int]:
    """Count the words of one partition, over all the maps of a batch."""
    counts: collections.Counter = collections.Counter()
    for words in word_lists:
        counts.update(words)
    return dict(counts)


@ray.remote(max_restarts=-1, max_task_retries=-1)
class Checkpointer:
    """Keeps the running total in a checkpoint file; survives its own death by reloading it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state: Dict = {"batches": [], "counts": {}}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.state = json.load(f)

    def committed(self) -> List[int]:
        return list(self.state["batches"])

    def commit(self, batch: int, *partials: Dict[str, int]) -> bool:
        """Add a batch's counts once; False if it was committed already (a retried call)."""
        if batch in self.state["batches"]:
            return False
        counts = self.state["counts"]
        for partial in partials:
            for word, n in partial.items():
                counts[word] = counts.get(word, 0) + n
        self.state["batches"].append(batch)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f)
        os.replace(tmp, self.path)  # the checkpoint is either the old one or the new one
        return True

    def result(self) -> Dict[str, int]:
        return dict(self.state["counts"])


def count_words(paths: Sequence[str], checkpoint: str, batch_size: int = BATCH_SIZE,
                num_partitions: int = NUM_PARTITIONS) -> Dict[str, int]:
    """Word counts of all the files; resumes from `checkpoint` if an earlier run committed batches."""
    checkpointer = Checkpointer.remote(checkpoint)
    done = set(ray.get(checkpointer.committed.remote()))
    commits = []
    for batch, start in enumerate(range(0, len(paths), batch_size)):
        if batch in done:
            continue
        maps = [map_file.options(num_returns=num_partitions).remote(path, num_partitions)
                for path in paths[start:start + batch_size]]
        reduced = [reduce_partition.remote(*[parts[r] for parts in maps]) for r in range(num_partitions)]
        commits.append(checkpointer.commit.remote(batch, *reduced))
    ray.get(commits)
    return ray.get(checkpointer.result.remote())


def main(argv: List[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    folder = argv[0]
    checkpoint = argv[1] if len(argv) == 2 else os.path.join(folder, ".wordcount-checkpoint.json")
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".txt"))
    ray.init()  # the same call starts a local Ray, or minicluster with one virtual node
    try:
        counts = count_words(paths, checkpoint)
    finally:
        ray.shutdown()
    for word, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:20]:
        print(f"{n:8d}  {word}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
