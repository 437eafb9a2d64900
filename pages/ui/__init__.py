"""The app's helpers (not pages): ``state`` (workers, store, workbenches, sidebar), ``forms`` (widgets from params
dataclasses), ``text`` (outside text shown as typed), ``charts``, ``live_view`` (+ .js) and ``hosts``. The package
sits inside ``pages/`` because the top level is fixed; Streamlit lists only the ``*.py`` files directly in
``pages/``, so nothing here is ever offered as a page."""
