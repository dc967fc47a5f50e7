"""`python -m tfflannel COMMAND ...` is the `tfflannel` command."""

from tfflannel.cli import main

main()
