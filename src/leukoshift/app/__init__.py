"""The interactive web app (Streamlit): predictions with explanations and nearest training
images, a view of the data, and LOSO benchmark results.

``leukoshift app`` starts it (:mod:`leukoshift.app.launch`); :mod:`leukoshift.app.main`
is the Streamlit script and :mod:`leukoshift.app.views` its logic, testable without
Streamlit.
"""
