"""Representation page (being built)."""

import streamlit as st

st.title("Representation")
st.info("This page is being built.")
