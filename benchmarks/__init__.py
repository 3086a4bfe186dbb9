"""Speed and quality benchmarks: each module prints a Markdown table and writes benchmarks/results/<name>.csv.

Run them from the repository root as `python -m benchmarks.<name>`; see docs/benchmarks.md.
"""
