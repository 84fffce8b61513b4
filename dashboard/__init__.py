"""The glmm-ab dashboard: Streamlit over the published, read-only BI copy."""
