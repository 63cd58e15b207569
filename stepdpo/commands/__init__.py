"""One module per `stepdpo` subcommand, each with ``configure(parser)`` and ``run(args) -> int``.

Command modules parse options and print; the work itself lives in `labeler` and `trainer`.
The dispatcher (`stepdpo.cli`) imports a command's module only when that command runs.
"""
