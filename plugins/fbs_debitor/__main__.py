import sys

from fbs_debitor.cli import main

if __name__ == "__main__":
    sys.exit(main())
