"""Session-wide environment that must be set before any test module imports the project.

prometheus-client's multiprocess mode binds a process's sample files to the folder named by
PROMETHEUS_MULTIPROC_DIR when the process creates its first metric value, and keeps them for its
whole life. The test session is one process that records metrics for many test packages
(benchmarks, deploy, reliability, service: every `create_app`, and tests that record directly), so
they all share one folder, chosen here, first: `setup_metrics(settings)` (hyv/service/metrics.py)
takes $PROMETHEUS_MULTIPROC_DIR over each test's data_dir, and the worker processes the tests start
inherit it.

Fixtures shared across test packages are plugins (pytest_plugins), loaded after that: the API
tests' real Redis, tiny bundle and live server (tests/service/conftest_api.py) and the S3 server
(tests/service/conftest_s3.py).
"""

import os
import tempfile

import pytest

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="hyv-test-metrics-"))

pytest_plugins = ["tests.service.conftest_api", "tests.service.conftest_s3"]

# Tests that start servers (Redis, Celery workers, uvicorn, moto, Prometheus, Chromium): those
# using these fixtures, and the files that start their own. `make test-fast` runs the rest.
SERVER_FIXTURES = frozenset(
    {
        "api_redis_url",
        "serve_app",
        "api",
        "moto_s3",
        "bucket",
        "redis_server",
        "service_settings",
        "worker",
        "store",
        "storage",
        "submit",
        "cluster",
        "hostile_server",
        "stack",
        "make_stack",
        "served_release",
    }
)
SERVER_FILES = (
    "tests/deploy/test_prometheus.py",
    "tests/deploy/test_runtime.py",
    "tests/reliability/faults/",
    "tests/service/test_launcher.py",
    "tests/service/test_web.py",
    "tests/benchmarks/test_service_bench.py",
    "tests/test_cli.py::test_api_only_serve_imports_no_torch",
    "tests/reliability/test_load_script.py",
    "tests/reliability/test_auth.py::test_api_keys_never_reach_any_log_or_data_file",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SERVER_FIXTURES or item.nodeid.startswith(SERVER_FILES):
            item.add_marker(pytest.mark.servers)
