"""``python tools/benchmark.py [options]``: the same as ``keras-inception benchmark``."""

import sys

from keras_inception.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
