"""No option is taken and silently ignored: enable_task_events works, _metadata is refused (as Ray 2.60), init()
arguments with no effect say so once, and Cluster.connect() passes its namespace on."""

from __future__ import annotations

import json
import warnings

import pytest

import minicluster as ray
from minicluster import api
from minicluster._private.common import options
from minicluster.cluster_utils import Cluster
from minicluster.util.state import list_tasks, summarize_tasks


@ray.remote
def shown():
    return 1


@ray.remote(enable_task_events=False)
def hidden():
    return 2


@ray.remote
class Visible:
    def ping(self):
        return "ping"

    @ray.method(enable_task_events=False)
    def quiet(self):
        return "quiet"


@ray.remote(enable_task_events=False)
class Invisible:
    def ping(self):
        return "ping"


def _names():
    return {t.name for t in list_tasks(limit=10_000)}


def test_enable_task_events_false_leaves_the_task_out_of_the_state_api_and_timeline(cluster, tmp_path):
    cluster(num_cpus=2)
    assert ray.get([shown.remote(), hidden.remote(), shown.options(enable_task_events=False).remote()]) == [1, 2, 1]
    assert ray.get(hidden.options(enable_task_events=True, name="hidden_but_asked").remote()) == 2
    visible, invisible = Visible.remote(), Invisible.remote()
    assert ray.get([visible.ping.remote(), visible.quiet.remote(), invisible.ping.remote()]) == \
        ["ping", "quiet", "ping"]
    assert ray.get(invisible.ping.options(enable_task_events=True).remote()) == "ping"

    names = _names()
    assert {"shown", "hidden_but_asked", "Visible.__init__", "Visible.ping"} <= names
    assert "hidden" not in names and "Visible.quiet" not in names and "Invisible.__init__" not in names
    assert [t.name for t in list_tasks(limit=10_000)].count("shown") == 1  # the options() one is hidden
    assert [t.name for t in list_tasks(limit=10_000)].count("Invisible.ping") == 1  # only the one that asked
    assert "hidden" not in summarize_tasks()["cluster"]["summary"]
    trace = tmp_path / "trace.json"
    ray.timeline(str(trace))
    sliced = {e["name"] for e in json.loads(trace.read_text()) if e["ph"] == "X"}
    assert "shown" in sliced and "hidden_but_asked" in sliced and "hidden" not in sliced


def test_enable_task_events_is_checked_and_metadata_refused_as_ray_2_60_does():
    with pytest.raises(TypeError, match="enable_task_events"):
        shown.options(enable_task_events="no")
    with pytest.raises(TypeError, match="enable_task_events"):
        Visible.options(enable_task_events=1)
    with pytest.raises(ValueError, match="Invalid option keyword '_metadata'"):
        shown.options(_metadata={"workflows.io/options": {"x": 1}})
    with pytest.raises(ValueError, match="Invalid option keyword '_metadata'"):
        Visible.options(_metadata={})
    assert not {"enable_task_events", "_metadata"} & options._ACCEPTED_NO_EFFECT


def test_init_arguments_with_no_effect_warn_once_naming_the_argument(cluster, monkeypatch):
    monkeypatch.setattr(api, "_warned_args", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cluster(include_dashboard=True, dashboard_port=8265, logging_level=10, configure_logging=True)
    texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("init(include_dashboard=True) has no effect" in t and "no dashboard" in t for t in texts)
    assert any("init(dashboard_port=8265)" in t for t in texts)
    assert any("init(logging_level=10)" in t and "loggers" in t for t in texts)
    assert not any("configure_logging" in t for t in texts)  # Ray's default says nothing
    ray.shutdown()
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        ray.init(num_cpus=1, include_dashboard=True)
    assert not [w for w in again if "include_dashboard" in str(w.message)]  # once per process


def test_cluster_connect_takes_the_namespace():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.connect(namespace="cluster_ns")
        assert ray.get_runtime_context().namespace == "cluster_ns"
        ray.shutdown()
        with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
            cluster.connect(bogus=1)
    finally:
        ray.shutdown()
        cluster.shutdown()
