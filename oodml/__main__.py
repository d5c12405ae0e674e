"""`python -m oodml` runs the same command line as the `oodml` script."""

from oodml.cli import main

if __name__ == "__main__":
    main()
