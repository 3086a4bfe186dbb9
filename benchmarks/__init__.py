"""Speed benchmarks (issue 8): each module prints a Markdown table and writes benchmarks/results/<name>.csv.

Run them from the repository root as `python -m benchmarks.<name>`; see benchmarks/README.md.
"""
