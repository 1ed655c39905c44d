"""``python -m mercore`` (what ``torchrun -m mercore`` runs)."""

import sys

from mercore.cli import main

sys.exit(main())
