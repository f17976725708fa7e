"""Reports: tables and figures built from result files only (plus the paper's own figures as data)."""
