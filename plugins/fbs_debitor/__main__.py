import sys

from fbs_debitor.cli import main

sys.exit(main())
