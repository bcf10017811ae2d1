"""minicluster benchmark suite: minicluster vs Ray vs ProcessPoolExecutor vs multiprocessing.Pool.

Run everything with ``python bench/run.py`` (see bench/README.md). Layout:

- ``specs.py``     which benchmarks exist, their units, targets and Ray reference numbers
- ``systems.py``   how each system is configured, started and stopped
- ``tasks.py``     picklable task functions for the pool systems (and the pipe echo process)
- ``workloads.py`` the benchmark bodies (Ray-style ones written once for ``ray`` and ``minicluster``)
- ``child.py``     entry point of the fresh subprocess that does one measurement group
- ``procs.py``     running those subprocesses with a timeout and killing whatever they leave
- ``report.py``    machine/version info and the text / Markdown table
- ``run.py``       the command line
"""
