"""``python -m usageflow``: the ``usageflow`` command (see :mod:`usageflow.cli`)."""

from usageflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
