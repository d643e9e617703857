"""Where the benchmarks write what they print: benchmarks/results/<name>.txt and .json."""

import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def save(name, text, data):
    """Prints `text` and writes it to `results/<name>.txt`, and `data` to `results/<name>.json`."""
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.txt"), "w") as fh:
        fh.write(text + "\n")
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as fh:
        json.dump(data, fh, indent=2)
