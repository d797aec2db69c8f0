"""Renderers: read a Diagnosis, never recompute it. Terminal (rich), figures (matplotlib Figure, Agg), HTML
(Jinja2, one self-contained file), JSON."""
