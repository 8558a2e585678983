"""``python -m fiddler_trace``: the same command line as ``fiddler-trace``."""

from fiddler_trace._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
