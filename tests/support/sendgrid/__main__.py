"""`PYTHONPATH=tests python -m support.sendgrid --port 8025`: the server until Ctrl-C."""

import sys

from support.sendgrid.server import main

sys.exit(main())
