"""lmdir's offline prior extraction: datasets in, prior-sample shards out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lmdir")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
