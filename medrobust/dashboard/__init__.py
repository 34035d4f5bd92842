"""The dashboard's services: everything the Streamlit pages in ``views/`` call.

This sub-package may import the rest of medrobust; nothing outside it imports it (a test checks that
importing any other module loads neither Streamlit nor Plotly).
"""
