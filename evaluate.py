"""MIR evaluation entry point (placeholder until issue 6 lands the end-to-end evaluator)."""

import sys

if __name__ == "__main__":
    sys.exit("evaluate.py: end-to-end MIR evaluation is not implemented yet (see issue 6).")
