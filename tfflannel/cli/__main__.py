"""`python -m tfflannel.cli COMMAND ...` is the `tfflannel` command."""

from tfflannel.cli import main

main()
