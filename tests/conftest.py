"""Session-wide environment that must be set before any test module imports the project.

prometheus-client's multiprocess mode binds a process's sample files to the folder named by
PROMETHEUS_MULTIPROC_DIR when the process creates its first metric value, and keeps them for its
whole life. The test session is one process that imports `hyv.service.metrics` from many test
packages (benchmarks, deploy, reliability, service), so they all share one folder, chosen here,
first.
"""

import os
import tempfile

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="hyv-test-metrics-"))
