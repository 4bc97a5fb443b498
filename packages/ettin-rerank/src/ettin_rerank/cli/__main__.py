"""``python -m ettin_rerank.cli``: the ``ettin-rerank`` command."""

import sys

from ettin_rerank.cli import main

sys.exit(main())
