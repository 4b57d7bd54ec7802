"""The comparison: models x {base, tuned} x {no retrieval, retrieval} on one eval set, one table, one report.

    from tunelab.compare import run
    result = run.run(config)            # evaluates (or reuses) every variant, writes <run_dir>/compare/
    print(result.files["report"])

variants.py builds the matrix, evaluate.py evaluates it with a prediction cache, comparison.py holds the
records the others share, table.py computes the numbers and their uncertainty, reading.py says in words
what they show, report.py draws the HTML.
"""
