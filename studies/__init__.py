"""The replication study of xaisparse: one importable package (``python -m studies``).

Study v2's machinery is the code (PROTOCOL.md, pre-registered), extended by the v3 addendum:

* :mod:`studies.grid`: the runs (``Job``, ``jobs``), how one is trained, the run directories;
* :mod:`studies.engine`: the grid through submitit (local, Slurm, in-process);
* :mod:`studies.methods`: v2's detector variants and references (stop epochs per run);
* :mod:`studies.published`: v3's label-free signals and their rule grids;
* :mod:`studies.bootstrap`, :mod:`studies.scoring`: outcomes, stratified bootstrap, Holm, decisions;
* :mod:`studies.regularisers`: the penalty against the classical regularisers (v2 part R);
* :mod:`studies.analysis`, :mod:`studies.analysis_v3`: the tables, figures and ``results.md``;
* :mod:`studies.study`: the command line.

Study v1 and the detector exploration are kept as committed **results** only
(``results/results.md`` and its tables; ``explore/results/``, whose ``selected_runs.csv`` holds
the stop epochs the tests use as references); the scripts that produced them were retired
once v2 re-implemented what they did (git history keeps them).
"""
