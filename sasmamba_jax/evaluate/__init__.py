"""Evaluation: the datasets' protocols (Human3.6M, MPI-INF-3DHP), their metrics, tasks that score a model."""
