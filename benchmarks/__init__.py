"""Speed benchmarks of the summarizer against the classic Keras recipe and a peer's OpenNMT-py figures.

Run them with ``python -m benchmarks.run`` (the README's Benchmarks section). Nothing here is product code.
"""
