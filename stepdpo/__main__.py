"""`python -m stepdpo …` (and `accelerate launch -m stepdpo train …`)."""

import sys

from stepdpo.cli import main

if __name__ == "__main__":
    sys.exit(main())
