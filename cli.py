"""Entry point: `python cli.py COMMAND ...` is the same as the `tfflannel` command."""

from tfflannel.cli import main

if __name__ == "__main__":
    main()
