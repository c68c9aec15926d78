"""``python -m mirec``: the command line (as the ``mirec`` console script)."""

from mirec.cli import console_main

console_main()
