"""`python -m nega` runs the command line."""

from nega.cli import main

if __name__ == "__main__":
    main()
