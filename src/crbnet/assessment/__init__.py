"""Assessment: estimators measured against the CRB (grid, tissue points) and side by side."""
