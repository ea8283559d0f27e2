"""``python -m pyro_vae`` is the ``pyro-vae`` command."""

import sys

from pyro_vae.cli import main

sys.exit(main())
