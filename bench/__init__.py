"""GreenMesh benchmarks: `python -m bench` (see BENCHMARKS.md).

The modules here measure the *reference* figures (bare grpc.aio, raw SQL inserts) and expose the
measuring loops as functions, so later benchmarks run the real services through the same loops and
report a ratio against a reference measured in the same run.
"""
