"""`python -m tfflannel ARGS`: the `tfflannel` command (what `reproduce` runs each job as)."""

from tfflannel.cli import main

if __name__ == "__main__":
    main(prog_name="tfflannel")
