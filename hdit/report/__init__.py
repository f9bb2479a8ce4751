"""Tables 1-5 and Figures 2, 8, 9 rendered from the files the workflow writes (`hdit report`).

Modules: `runs` (which paper rows share one training run), `annotate` (provenance of a metrics JSON),
`render` (Markdown / LaTeX / CSV writers), `tables` and `figures`. Nothing here imports torch at
import time, so the Snakefile can import `runs` cheaply.
"""
