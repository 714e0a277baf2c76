"""The ``snapshotd`` command line (SPEC section 3): the parser in ``main``, one module per
command group (``daemon``: serve and migrate; ``ops``: the socket ops; ``demo``)."""

from snapshotd.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
