"""runtime_env: env_vars per job, actor and task (merged as Ray merges them, inherited by children),
workers never shared across environments, working_dir and py_modules copied into the session,
and every field this machine cannot honour refused by name."""

import os
import sys

import pytest

import minicluster as ray
from minicluster.job_config import JobConfig
from minicluster.runtime_env import RuntimeEnv, RuntimeEnvConfig
from minicluster.util.state import list_tasks

pytestmark = pytest.mark.timeout(60)


@ray.remote
def env_of(*names):
    return [os.environ.get(name) for name in names]


@ray.remote
def pid():
    return os.getpid()


@ray.remote
def context_env():
    return dict(ray.get_runtime_context().runtime_env), ray.get_runtime_context().get_runtime_env_string()


def test_task_env_vars_are_merged_over_the_jobs_key_by_key(cluster):
    cluster(num_cpus=2, runtime_env={"env_vars": {"COLOR": "job", "SIZE": "job"}})
    assert ray.get(env_of.remote("COLOR", "SIZE", "SHAPE")) == ["job", "job", None]
    task_env = {"env_vars": {"COLOR": "task", "SHAPE": "task"}}
    assert ray.get(env_of.options(runtime_env=task_env).remote("COLOR", "SIZE", "SHAPE")) == ["task", "job", "task"]
    # what the task's code sees of its environment: the merge
    env, text = ray.get(context_env.options(runtime_env=task_env).remote())
    assert env == {"env_vars": {"COLOR": "task", "SIZE": "job", "SHAPE": "task"}}
    assert ray.get_runtime_context().runtime_env == {"env_vars": {"COLOR": "job", "SIZE": "job"}}
    assert isinstance(ray.get_runtime_context().runtime_env, RuntimeEnv)


def test_child_tasks_inherit_their_parents_environment_and_merge_their_own_over_it(cluster):
    cluster(num_cpus=3)

    @ray.remote
    def parent():
        inherited = ray.get(env_of.remote("LEVEL", "EXTRA"))
        own = ray.get(env_of.options(runtime_env={"env_vars": {"EXTRA": "child"}}).remote("LEVEL", "EXTRA"))
        return inherited, own

    inherited, own = ray.get(parent.options(runtime_env={"env_vars": {"LEVEL": "parent"}}).remote())
    assert inherited == ["parent", None]
    assert own == ["parent", "child"]


def test_an_actor_runs_in_its_environment_and_its_calls_children_inherit_it(cluster):
    cluster(num_cpus=2, runtime_env={"env_vars": {"JOB": "1"}})

    @ray.remote
    class Reader:
        def read(self, name):
            return os.environ.get(name)

        def child_reads(self, name):
            return ray.get(env_of.remote(name))[0]

    reader = Reader.options(runtime_env={"env_vars": {"ROLE": "reader"}}).remote()
    assert ray.get(reader.read.remote("ROLE")) == "reader"
    assert ray.get(reader.read.remote("JOB")) == "1"
    assert ray.get(reader.child_reads.remote("ROLE")) == "reader"
    assert os.environ.get("ROLE") is None  # the driver's own environment is untouched


def test_workers_of_different_environments_are_never_shared(cluster):
    cluster(num_cpus=1)
    plain = ray.get(pid.remote())
    red = ray.get(pid.options(runtime_env={"env_vars": {"C": "red"}}).remote())
    blue = ray.get(pid.options(runtime_env={"env_vars": {"C": "blue"}}).remote())
    assert len({plain, red, blue}) == 3
    # the same environment (however written) reuses its worker, and the plain one still serves plain tasks
    assert ray.get(pid.options(runtime_env=RuntimeEnv(env_vars={"C": "red"})).remote()) == red
    assert ray.get(env_of.remote("C")) == [None]
    assert ray.get(pid.remote()) == plain


@pytest.mark.parametrize("runtime_env, error, text", [
    ({"env_vars": {"N": 1}}, TypeError, "but the value 1 is of type"),
    ({"env_vars": {1: "x"}}, TypeError, "but the key 1 is of type"),
    ({"env_vars": ["N=1"]}, TypeError, "Dict\\[str, str\\]"),
    ({"pip": ["requests"]}, ValueError, "runtime_env\\['pip'\\] is not supported"),
    ({"conda": "env"}, ValueError, "runtime_env\\['conda'\\] is not supported"),
    ({"uv": ["requests"]}, ValueError, "runtime_env\\['uv'\\] is not supported"),
    ({"container": {"image": "x"}}, ValueError, "runtime_env\\['container'\\] is not supported"),
    ({"image_uri": "docker.io/x"}, ValueError, "runtime_env\\['image_uri'\\] is not supported"),
    ({"working_dir": "s3://bucket/code.zip"}, ValueError, "runtime_env\\['working_dir'\\] .* remote URI"),
    ({"py_modules": ["https://x/m.zip"]}, ValueError, "runtime_env\\['py_modules'\\] .* remote URI"),
    ({"working_dir": "/tmp"}, ValueError, "only supported at the job level"),
    ({"my_plugin": {}}, ValueError, "unknown field"),
    ("env_vars", TypeError, "must be a dict"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_field(runtime_env, error, text):
    with pytest.raises(error, match=text):
        env_of.options(runtime_env=runtime_env)
    with pytest.raises(error, match=text):
        @ray.remote(runtime_env=runtime_env)
        class Refused:
            pass


def test_init_and_job_config_refuse_what_cannot_be_honoured_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="runtime_env\\['pip'\\]"):
        ray.init(num_cpus=1, runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="does not exist"):
        ray.init(num_cpus=1, runtime_env={"working_dir": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="runtime_env\\['conda'\\]"):
        JobConfig(runtime_env={"conda": "x"})
    assert not ray.is_initialized()


def _project(tmp_path):
    """A user's folder: a module, a data file, a folder to exclude; and a package and a module file."""
    project = tmp_path / "project"
    (project / "cache").mkdir(parents=True)
    (project / "helper.py").write_text("ANSWER = 42\n")
    (project / "data.txt").write_text("original\n")
    (project / "cache" / "big.bin").write_text("x")
    (tmp_path / "libs" / "mylib").mkdir(parents=True)
    (tmp_path / "libs" / "mylib" / "__init__.py").write_text("NAME = 'mylib'\n")
    (tmp_path / "single_mod.py").write_text("VALUE = 7\n")
    return project


def test_working_dir_is_a_copy_that_is_the_cwd_and_importable(cluster, tmp_path):
    project = _project(tmp_path)
    cluster(num_cpus=1, runtime_env={"working_dir": str(project), "excludes": ["cache"]})

    @ray.remote
    def use_the_folder():
        import helper

        with open("data.txt") as f:
            before = f.read()
        with open("data.txt", "w") as f:  # the task writes in its cwd: the user's file stays as it was
            f.write("changed by a task\n")
        return helper.ANSWER, before, os.getcwd(), os.path.exists("cache")

    answer, before, cwd, has_cache = ray.get(use_the_folder.remote())
    assert (answer, before) == (42, "original\n")
    assert cwd != str(project) and "runtime_resources" in cwd
    assert not has_cache  # left out by `excludes`
    assert (project / "data.txt").read_text() == "original\n"
    assert os.getcwd() != cwd  # the driver's cwd does not move
    # what the job shows: the copy's package URI, as Ray shows its uploaded package
    assert ray.get_runtime_context().runtime_env["working_dir"].startswith("gcs://_ray_pkg_")
    session_dir = os.path.dirname(os.path.dirname(os.path.dirname(cwd)))
    ray.shutdown()
    assert not os.path.exists(os.path.join(session_dir, "runtime_resources"))  # the copies go with the session


def test_py_modules_folders_and_files_are_importable_in_tasks_and_actors(cluster, tmp_path):
    _project(tmp_path)
    modules = [str(tmp_path / "libs" / "mylib"), str(tmp_path / "single_mod.py")]
    cluster(num_cpus=2, job_config=JobConfig(runtime_env={"py_modules": modules}))

    @ray.remote
    def imports():
        import mylib
        import single_mod

        return mylib.NAME, single_mod.VALUE, mylib.__file__.startswith(str(tmp_path))

    @ray.remote
    class Importer:
        def value(self):
            import single_mod

            return single_mod.VALUE

    assert ray.get(imports.remote()) == ("mylib", 7, False)  # imported from the session's copy
    assert ray.get(Importer.remote().value.remote()) == 7
    assert "single_mod" not in sys.modules  # nothing changed in the driver


def test_a_task_can_be_given_the_jobs_package_uris_back(cluster, tmp_path):
    project = _project(tmp_path)
    cluster(num_cpus=1, runtime_env={"working_dir": str(project)})
    shown = dict(ray.get_runtime_context().runtime_env)

    @ray.remote
    def read():
        with open("data.txt") as f:
            return f.read()

    # as Ray: a task may name the uploaded package (what the runtime context shows)
    assert ray.get(read.options(runtime_env={"working_dir": shown["working_dir"],
                                             "env_vars": {"X": "1"}}).remote()) == "original\n"
    with pytest.raises(ray.exceptions.RuntimeEnvSetupError, match="does not exist in this session"):
        ray.get(read.options(runtime_env={"working_dir": "gcs://_ray_pkg_wd_0000000000000000.zip"}).remote())


def test_runtime_env_objects_check_their_fields():
    env = RuntimeEnv(env_vars={"A": "1"}, config=RuntimeEnvConfig(setup_timeout_seconds=30))
    assert env == {"env_vars": {"A": "1"}, "config": {"setup_timeout_seconds": 30, "eager_install": True}}
    assert RuntimeEnv.deserialize(env.serialize()) == env
    assert env.env_vars() == {"A": "1"}
    with pytest.raises(TypeError):
        RuntimeEnv(env_vars={"A": 1})
    with pytest.raises(ValueError, match="pip"):
        RuntimeEnv(pip=["requests"])
    with pytest.raises(ValueError, match="setup_timeout_seconds"):
        RuntimeEnvConfig(setup_timeout_seconds=0)


def test_omp_num_threads_from_env_vars_wins_over_the_tasks_cpus(cluster):
    cluster(num_cpus=2)
    threads = {"env_vars": {"OMP_NUM_THREADS": "3"}}
    assert ray.get(env_of.options(runtime_env=threads).remote("OMP_NUM_THREADS")) == ["3"]
    assert ray.get(env_of.options(runtime_env=threads, num_cpus=1).remote("OMP_NUM_THREADS")) == ["3"]
    assert ray.get(env_of.options(num_cpus=2).remote("OMP_NUM_THREADS")) == ["2"]  # (no env: the CPUs)


def test_env_vars_reach_what_a_worker_reads_at_its_start(cluster):
    # RAY_TASK_MAX_RETRIES in the job's env_vars: tasks submitted by tasks get that many retries
    cluster(num_cpus=2, runtime_env={"env_vars": {"RAY_TASK_MAX_RETRIES": "0"}})

    @ray.remote
    def crash():
        os._exit(1)

    @ray.remote
    def nested():
        return ray.get(crash.remote())

    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(nested.remote())
    assert isinstance(info.value.cause, ray.exceptions.WorkerCrashedError)
    crashes = list_tasks(filters=[("name", "=", "crash")])
    assert len(crashes) == 1  # no retry


def test_job_code_search_path_puts_the_jobs_folders_on_the_workers_sys_path(cluster, tmp_path):
    """Ray: JobConfig(code_search_path=[...]) is the Python workers' import path; the folder is
    used where it is (not copied), and the runtime context shows the job's own environment."""
    folder = tmp_path / "job code"  # (a space, as Ray's test has)
    folder.mkdir()
    (folder / "fidelity_helper_mod.py").write_text("def answer():\n    return 42\n")
    assert "fidelity_helper_mod" not in sys.modules
    cluster(num_cpus=1, job_config=JobConfig(code_search_path=[str(folder)]))

    @ray.remote
    def uses_the_module():
        import fidelity_helper_mod

        return fidelity_helper_mod.answer()

    assert ray.get(uses_the_module.remote(), timeout=20) == 42
    env, _ = ray.get(context_env.remote(), timeout=20)
    assert env == {}
    with pytest.raises(TypeError):
        JobConfig(code_search_path=str(folder))  # a list, as Ray's
