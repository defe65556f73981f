"""``python -m studies``: the study's command line (:mod:`studies.study`)."""

import sys

from .study import main

sys.exit(main())
