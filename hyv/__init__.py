"""hyvideo-serve: HunyuanVideo-style text-to-video and image-to-video, served as a microservice.

Subpackages: models, kernels, engine, training, service; `hyv.cli` is the `hyv` command.
Importing this package imports nothing else (the API process never loads torch).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hyvideo-serve")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
