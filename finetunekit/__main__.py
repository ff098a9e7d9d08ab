"""``python -m finetunekit ...`` is the ``finetunekit`` command (see finetunekit.cli)."""

import sys

from finetunekit.cli import main

sys.exit(main())
