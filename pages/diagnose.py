"""Diagnose page (being built)."""

import streamlit as st

st.title("Diagnose")
st.info("This page is being built.")
