import sys

from fbs_debitor.quality import checks_process

if __name__ == "__main__":
    # ``transfer``: the checks process starts before anything heavy is imported (quality.checks_process)
    checks_process.start_early(sys.argv[1:])

from fbs_debitor.cli import main  # noqa: E402 - after the checks process started

if __name__ == "__main__":
    sys.exit(main())
