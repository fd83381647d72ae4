"""``python -m rlsys COMMAND ...`` is ``rlsys COMMAND ...`` (e.g. as a ``ray job submit`` entrypoint)."""

from rlsys.cli import main

main()
