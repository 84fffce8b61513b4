"""Prefect flows of glmm-ab: the only place that knows both the warehouse and the statistics."""
