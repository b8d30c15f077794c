"""embcli: build, train and query word embeddings from the command line or Python.

`import embcli` is cheap: it loads neither numpy nor torch until a function needs them.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path=None):
    """Return the `embcli.model.Model` stored in the model directory `path`."""
    from embcli.model import Model

    return Model.open(path)
