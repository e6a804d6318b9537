"""The pipeline: the recipe (recipe.py), its stages (stages.py), make's rule (stamps.py), the
runner (run.py) and the report (report.py)."""
