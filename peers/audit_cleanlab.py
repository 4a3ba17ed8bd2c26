#!/usr/bin/env python3
"""Peer check of pipe's label audit (issue 15): cleanlab's find_label_issues on
out-of-fold kNN probabilities (scikit-learn, 5 folds) over the same fixtures, with its
recall, precision and time printed beside ours.

The fixtures are the training splits that `cargo bench -p pipelines --bench audit`
writes when AUDIT_FIXTURE_DIR is set (NAME.x.f32, NAME.y.u32, NAME.json with the
planted positions and our findings). Python is a peer here, never a dependency of pipe:
run it from a virtual environment outside the repository, e.g.

    python3 -m venv /tmp/audit-peer && /tmp/audit-peer/bin/pip install cleanlab scikit-learn numpy
    AUDIT_FIXTURE_DIR=/tmp/audit-fixtures cargo bench -p pipelines --bench audit
    /tmp/audit-peer/bin/python peers/audit_cleanlab.py /tmp/audit-fixtures
"""

import json
import sys
import time
from pathlib import Path


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    try:
        import numpy as np
        from cleanlab.filter import find_label_issues
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.neighbors import KNeighborsClassifier
    except ImportError as error:
        print(f"audit_cleanlab: skipped, {error.name} is not importable (see the docstring)")
        return 0
    directory = Path(sys.argv[1])
    metas = sorted(directory.glob("*.json"))
    if not metas:
        print(f"audit_cleanlab: no fixtures in {directory}")
        return 1
    print(f"{'fixture':<28} {'planted':>7} | {'pipe: flagged recall precision':>32} | {'cleanlab: flagged recall precision secs':>40}")
    for meta_path in metas:
        name = meta_path.name[: -len(".json")]
        meta = json.loads(meta_path.read_text())
        n, d = meta["n"], meta["d"]
        x = np.fromfile(directory / f"{name}.x.f32", dtype="<f4").reshape(n, d)
        y = np.fromfile(directory / f"{name}.y.u32", dtype="<u4").astype(np.int64)
        low, high = meta["range"] if meta["range"] else (x.min(), x.max())
        x = (x - low) / max(high - low, 1e-12)
        planted = set(meta["planted"])
        started = time.perf_counter()
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
        probabilities = cross_val_predict(KNeighborsClassifier(n_neighbors=10), x, y, cv=folds, method="predict_proba")
        issues = find_label_issues(labels=y, pred_probs=probabilities)
        secs = time.perf_counter() - started
        found = set(np.flatnonzero(issues).tolist())

        def score(flagged):
            hits = len(flagged & planted)
            return hits / max(len(planted), 1), hits / len(flagged) if flagged else 1.0

        ours = set(meta["ours"])
        (our_recall, our_precision), (recall, precision) = score(ours), score(found)
        print(
            f"{name:<28} {len(planted):>7} | {len(ours):>9} {100 * our_recall:>8.1f}% {100 * our_precision:>9.1f}%"
            f" ({meta['ours_secs']:.2f} s) | {len(found):>9} {100 * recall:>8.1f}% {100 * precision:>9.1f}% {secs:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
