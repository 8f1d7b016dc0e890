"""``python -m manyview`` is the ``manyview`` command, so that launchers which start modules work:
``torchrun --nproc-per-node K -m manyview reconstruct PHOTOS ...``."""

from manyview.cli.main import main

raise SystemExit(main())
