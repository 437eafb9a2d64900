"""mergecore: merge LoRA adapters, learn merge coefficients, and look inside the result.

The library never imports streamlit; the app in ``app.py`` + ``pages/`` is a thin layer on top.
"""

__version__ = "0.1.0"
