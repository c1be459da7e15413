"""``python -m modelhub_torch.cli``: the ``modelhub`` command."""

from modelhub_torch.cli import main

raise SystemExit(main())
