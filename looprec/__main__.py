import sys

from looprec.cli import main

sys.exit(main())
