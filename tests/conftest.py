"""Runs every test on 8 fake CPU devices, so sharded code paths run in CI without accelerators.
Compiled programs go to one persistent compilation cache per session, shared with the `tpt`
subprocesses the end-to-end tests start (each smoke run compiles the same programs: 33 s cold,
19 s warm on 2 cores)."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="tpt-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# TPT_TEST_MEMORY=FILE: one line per test that raised a memory high-water mark (this process's
# or any finished child's, in GiB), to find what drives the suite's peak.
if os.environ.get("TPT_TEST_MEMORY"):
    import resource

    import pytest

    _marks = {"self": 0, "children": 0}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        yield
        raised = []
        for who, flag in (("self", resource.RUSAGE_SELF), ("children", resource.RUSAGE_CHILDREN)):
            kib = resource.getrusage(flag).ru_maxrss
            if kib > _marks[who]:
                _marks[who] = kib
                raised.append(f"{who} {kib / 2**20:.2f}")
        if raised:
            with open(os.environ["TPT_TEST_MEMORY"], "a") as f:
                f.write(f"{item.nodeid}: {', '.join(raised)} GiB\n")
