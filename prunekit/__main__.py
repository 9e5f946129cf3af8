"""``python -m prunekit`` (also what ``accelerate launch -m prunekit`` runs)."""

import sys

from prunekit.cli import main

sys.exit(main())
