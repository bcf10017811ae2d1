"""The word count pipeline under seeded chaos: results identical to the fault-free run.

Only the test knows about faults (minicluster.testing, through the pytest
plugin's fixtures); wordcount.py is plain Ray code. CI runs the chaos test under
20 seeds (the marker); replay a failing one with the seed its report prints:

    pytest examples/mapreduce/test_wordcount.py --minicluster-seed 1234

The tests marked ray_compatible also run on real Ray (.ci/run does):

    pytest examples --minicluster-backend=ray -m ray_compatible
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import random
import time
from typing import Dict, List, Tuple

import pytest
from wordcount import PUNCTUATION, count_words

from minicluster import testing

SYLLABLES = ["ka", "to", "ri", "ne", "su", "lo", "mi", "da", "pe", "vu", "sha", "qi"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Tuple[List[str], Dict[str, int]]:
    """Twelve text files (fixed content, not from the fault seed) and their word counts, done plainly."""
    rng = random.Random(2024)
    vocabulary = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    folder = tmp_path_factory.mktemp("corpus")
    paths, expected = [], collections.Counter()
    for i in range(12):
        words = [rng.choice(vocabulary) for _ in range(30_000)]
        text = " ".join(w.capitalize() + "." if rng.random() < 0.05 else w for w in words)
        path = folder / f"part-{i:02d}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
        expected.update(w.strip(PUNCTUATION).lower() for w in text.split())
    return paths, dict(expected)


@pytest.mark.minicluster(num_nodes=3, num_cpus=2, seeds=20)
def test_word_count_survives_chaos(minicluster_cluster, fault_plan, fault_journal, corpus, tmp_path):
    paths, expected = corpus
    (fault_plan
     .chaos(kill_worker_every=6, kill_node_every=10)          # random workers, and one node, die
     .raise_in_task("map_file", OSError("flaky disk"), nth=2)  # a transient read error
     .kill_actor("Checkpointer", call=2, at="before_store"))   # after writing its checkpoint, before answering

    assert count_words(paths, str(tmp_path / "checkpoint.json")) == expected

    assert fault_journal.count("kill_worker") >= 1
    assert fault_journal.count("kill_node") == 1
    assert fault_journal.count("raise") == 1 and fault_journal.count("kill_actor") == 1


@pytest.mark.ray_compatible
@pytest.mark.minicluster(num_nodes=2, num_cpus=2, chaos=False)
def test_word_count_without_faults(minicluster_cluster, fault_journal, corpus, tmp_path):
    paths, expected = corpus
    assert count_words(paths, str(tmp_path / "checkpoint.json")) == expected
    assert len(fault_journal) == 0


@pytest.mark.minicluster(num_nodes=2, num_cpus=2, chaos=False)
def test_word_count_resumes_from_its_checkpoint(minicluster_cluster, fault_plan, corpus, tmp_path):
    paths, expected = corpus
    checkpoint = str(tmp_path / "checkpoint.json")
    first = count_words(paths[:8], checkpoint)  # two batches committed, then "the driver stops"
    fault_plan.kill_worker("map_file", attempt=0, nth=None, optional=True)  # every map run now dies once
    assert count_words(paths, checkpoint) == expected  # only the third batch's maps ran
    assert len(fault_plan.journal) == 4  # its four map_file tasks, killed once each
    assert sum(first.values()) == 8 * 30_000


@pytest.mark.ray_compatible
@pytest.mark.timeout(180)
@pytest.mark.minicluster(num_nodes=3, num_cpus=2, chaos=False)
def test_word_count_survives_losing_a_node(minicluster_cluster, corpus, tmp_path):
    """An on-demand power cut (a control real Ray honours too) while the count runs."""
    paths, expected = corpus
    checkpoint = str(tmp_path / "checkpoint.json")
    victim = minicluster_cluster.nodes[-1]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        counting = pool.submit(count_words, paths, checkpoint)
        deadline = time.monotonic() + 120
        while not os.path.exists(checkpoint) and not counting.done():  # the first batch is committed
            assert time.monotonic() < deadline, "the first batch was never committed"
            time.sleep(0.01)
        testing.kill_node(victim)
        assert counting.result(timeout=150) == expected
    assert victim not in testing.live_nodes()
