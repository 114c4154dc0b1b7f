import gc
import sys

from fbs_debitor.cli import main

if __name__ == "__main__":
    try:
        code = main()
    finally:
        # The command is done and the process ends: what it imported (Great Expectations alone is
        # hundreds of thousands of objects) need not be walked by the interpreter's last garbage
        # collection at exit (about 1.5 s). Output and the databases are already written.
        gc.freeze()
    sys.exit(code)
