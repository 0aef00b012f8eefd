"""`python -m zigzag_attn.cli ...`, the same as the `zigzag-attn` command."""

import sys

from . import main

sys.exit(main())
