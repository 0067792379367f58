"""The reservation use cases: reserve, commit, release, extend, and their batch forms."""
