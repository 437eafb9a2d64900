"""Export page (being built)."""

import streamlit as st

st.title("Export")
st.info("This page is being built.")
