"""mergecore app: navigation + shared sidebar (workspace, device). Run: streamlit run app.py

`streamlit run app.py` finds ``app`` below and serves this script through it, with the JSON route the live
view of running jobs polls (pages/ui/live_view.py); run as the Streamlit script, the file draws the app.
"""

import streamlit as st

from pages.ui import live_view

if __name__ != "__main__":  # imported by `streamlit run` (uvicorn): the server, with mergecore's routes
    from starlette.middleware import Middleware

    from pages.ui.hosts import HostCheck

    live_view.SERVED = True  # and answering only its own host (pages/ui/hosts.py: DNS rebinding)
    app = st.App(__file__, routes=live_view.ROUTES, middleware=[Middleware(HostCheck)])
else:  # run by Streamlit for each session
    from pages.ui.state import sidebar

    st.set_page_config(page_title="mergecore", layout="wide")
    PAGES = [
        st.Page("pages/workspace.py", title="Workspace", icon=":material/folder_open:", default=True),
        st.Page("pages/learn.py", title="Learn", icon=":material/trending_down:"),
        st.Page("pages/merge.py", title="Merge", icon=":material/call_merge:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("pages/spectra.py", title="Spectra", icon=":material/equalizer:"),
        st.Page("pages/representation.py", title="Representation", icon=":material/scatter_plot:"),
        st.Page("pages/diagnose.py", title="Diagnose", icon=":material/troubleshoot:"),
        st.Page("pages/export.py", title="Export", icon=":material/download:"),
    ]
    nav = st.navigation(PAGES)
    sidebar()
    nav.run()
