"""Training entry point (placeholder until issue 5 lands the sharded train loop)."""

import sys

if __name__ == "__main__":
    sys.exit("train.py: the training loop is not implemented yet (see issue 5).")
