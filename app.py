"""mergecore app: navigation + shared sidebar (workspace, device). Run: streamlit run app.py"""

import streamlit as st

from pages.common import sidebar

st.set_page_config(page_title="mergecore", layout="wide")
PAGES = [
    st.Page("pages/workspace.py", title="Workspace", icon=":material/folder_open:", default=True),
    st.Page("pages/learn.py", title="Learn", icon=":material/trending_down:"),
]
nav = st.navigation(PAGES)
sidebar()
nav.run()
