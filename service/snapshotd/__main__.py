"""``python -m snapshotd``: the same entry point as the ``snapshotd`` console script."""

from snapshotd.cli import main

raise SystemExit(main())
