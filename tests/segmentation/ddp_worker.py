"""Run by torchrun in tests/segmentation/test_train.py: `vitlab train` with the toy segmenter registered."""

import sys

from tests.segmentation.toy import register
from vitlab.cli import main

if __name__ == "__main__":
    register()
    sys.exit(main(sys.argv[1:]))
