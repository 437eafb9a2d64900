"""Spectra page (being built)."""

import streamlit as st

st.title("Spectra")
st.info("This page is being built.")
