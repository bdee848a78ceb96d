"""`PYTHONPATH=tests python -m sendgrid_server --port 8025`: the server until Ctrl-C."""

import sys

from sendgrid_server.server import main

sys.exit(main())
